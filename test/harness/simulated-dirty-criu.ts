// A criu for `lazyd replicate --tracking dirty` on a kernel without dirty-memory tracking (this one): the real
// criu does all the work; this wrapper plays the kernel's part. Run as `node simulated-dirty-criu.js <real criu>
// <argv log> <criu argv...>` through a wrapper script (simulatedDirtyCriu() writes one).
//   - `check --feature mem_dirty_track` exits 0 (the real one fails here);
//   - `dump ... --track-mem [--prev-images-dir P]` runs the real `criu dump` without those two flags (real criu
//     aborts on them with soft-dirty off), then, with P, rewrites each pagemap as criu's dirty tracking would:
//     a page whose bytes equal the same address's in P (a flattened epoch: every entry with its data) becomes an
//     in-parent (PE_PARENT) entry without data, every other page keeps its data and flags; the `parent` link to P
//     is made as criu makes it. So the "dirty" pages are exactly the changed ones — the kernel's bits are the one
//     thing not exercised;
//   - anything else is the real criu's.
// Every argv is appended to <argv log> (one JSON line).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { encodePagemap, readPagemap, type PagemapEntryInput } from '../../src/images/pagemap.js';
import { PE_PARENT, PE_PRESENT } from '../../src/images/magic.js';
import { repoRoot } from '../../src/paths.js';

const PAGE = 4096;

/** Writes the wrapper script at `file`: a criu binary for --criu. */
export function simulatedDirtyCriu(file: string, realCriu: string, argvLog: string): string {
  const script = path.join(repoRoot(), 'dist', 'test', 'harness', 'simulated-dirty-criu.js');
  fs.writeFileSync(file, `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(script)} ${JSON.stringify(realCriu)} ${JSON.stringify(argvLog)} "$@"\n`, { mode: 0o755 });
  return file;
}

async function onParent(dir: string, parent: string): Promise<void> {
  const parentDir = path.resolve(dir, parent);
  for (const name of fs.readdirSync(dir).filter((n) => /^pagemap-(shmem-)?\d+\.img$/.test(n))) {
    const pm = await readPagemap(path.join(dir, name));
    const parentFile = path.join(parentDir, name);
    if (!fs.existsSync(parentFile)) continue;
    const ppm = await readPagemap(parentFile);
    const parentData = fs.readFileSync(ppm.pagesPath);
    const parentAt = new Map<bigint, number>();
    for (const e of ppm.entries) {
      if (!(e.flags & PE_PRESENT)) throw new Error(`${parentFile}: entry ${e.index} has no data (the parent is not flattened)`);
      for (let i = 0; i < e.nrPages; i++) parentAt.set(e.vaddr + BigInt(i * PAGE), Number(e.pagesOffset!) + i * PAGE);
    }
    const data = fs.readFileSync(pm.pagesPath);
    const entries: PagemapEntryInput[] = [];
    const written: Buffer[] = [];
    for (const e of pm.entries) {
      for (let i = 0; i < e.nrPages; i++) {
        const vaddr = e.vaddr + BigInt(i * PAGE);
        const bytes = data.subarray(Number(e.pagesOffset!) + i * PAGE, Number(e.pagesOffset!) + (i + 1) * PAGE);
        const at = parentAt.get(vaddr);
        const clean = at !== undefined && parentData.subarray(at, at + PAGE).equals(bytes);
        const flags = clean ? PE_PARENT : e.flags;
        if (!clean) written.push(bytes);
        const last = entries[entries.length - 1];
        if (last && last.flags === flags && last.vaddr + BigInt(Number(last.nrPages) * PAGE) === vaddr && i > 0) last.nrPages = Number(last.nrPages) + 1;
        else entries.push({ vaddr, nrPages: 1, flags });
      }
    }
    fs.writeFileSync(pm.file, encodePagemap({ pagesId: pm.pagesId }, entries, { encoding: pm.encoding === '4.1' ? '4.1' : '4.2' }));
    fs.writeFileSync(pm.pagesPath, Buffer.concat(written));
  }
  fs.symlinkSync(parent, path.join(dir, 'parent'));
}

async function main(): Promise<number> {
  const [real, log, ...argv] = process.argv.slice(2);
  fs.appendFileSync(log, `${JSON.stringify(argv)}\n`);
  if (argv[0] === 'check' && argv.includes('mem_dirty_track')) {
    process.stdout.write('mem_dirty_track is supported (simulated: test/harness/simulated-dirty-criu.ts)\n');
    return 0;
  }
  let args = argv;
  let parent: string | undefined;
  if (argv[0] === 'dump' && argv.includes('--track-mem')) {
    const at = argv.indexOf('--prev-images-dir');
    parent = at >= 0 ? argv[at + 1] : undefined;
    args = argv.filter((a, i) => a !== '--track-mem' && !(at >= 0 && (i === at || i === at + 1)));
  }
  const run = spawnSync(real, args, { stdio: 'inherit' });
  if (run.status !== 0 || !parent) return run.status ?? 1;
  await onParent(argv[argv.indexOf('-D') + 1], parent);
  return 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  main().then(
    (code) => process.exit(code),
    (error: Error) => {
      process.stderr.write(`simulated-dirty-criu: ${error.message}\n`);
      process.exit(1);
    },
  );
}
