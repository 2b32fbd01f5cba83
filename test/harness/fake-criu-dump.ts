// A stand-in for `criu dump --leave-running [--track-mem [--prev-images-dir P]]` for lazyd replicate's unit test
// (test/unit/replicate-tracking.test.ts): run as `node fake-criu-dump.js <log> <argv of criu...>` through a
// wrapper script. It appends its argv (one JSON line) to <log> and writes the images of a made-up tree whose
// memory is the CRIU 4.2.1 plain dump's (test/fixtures) with pages rewritten per epoch:
//   epoch k (from the -D directory's name, epoch-<k>) dirties the pages i with i % 5 == k % 5 (k >= 2), each
//   stamped with (k, i) in its first 16 bytes; pageAt(k, i) is a page's content at epoch k.
// Without --prev-images-dir every page is written; with it (and --track-mem) only the pages dirtied at epoch k,
// the others are PE_PARENT entries, and the `parent` link points at P — as criu does with dirty tracking.
import fs from 'node:fs';
import path from 'node:path';
import { encodePagemap, parsePagemap, type PagemapEntryInput } from '../../src/images/pagemap.js';
import { PE_PARENT } from '../../src/images/magic.js';
import { fixturePath } from '../fixtures/fixtures.js';

const PAGE = 4096;
const VERSION = '4.2.1';

export interface FakeMemory {
  /** The page addresses, in pagemap order, and each one's flags in the plain dump. */
  pages: { vaddr: bigint; flags: number }[];
  base: Buffer;
}

export function fakeMemory(): FakeMemory {
  const file = fixturePath(VERSION, 'plain-dump', 'images', 'pagemap-1.img');
  const pm = parsePagemap(fs.readFileSync(file), { file });
  const pages: FakeMemory['pages'] = [];
  for (const e of pm.entries) for (let i = 0; i < e.nrPages; i++) pages.push({ vaddr: e.vaddr + BigInt(i * PAGE), flags: e.flags });
  return { pages, base: fs.readFileSync(fixturePath(VERSION, 'plain-dump', 'images', 'pages-1.img')) };
}

export function dirtiedAt(epoch: number, page: number): boolean {
  return epoch >= 2 && page % 5 === epoch % 5;
}

/** Page i's content at epoch k. */
export function pageAt(m: FakeMemory, epoch: number, page: number): Buffer {
  const out = Buffer.from(m.base.subarray(page * PAGE, (page + 1) * PAGE));
  for (let k = epoch; k >= 2; k--) {
    if (!dirtiedAt(k, page)) continue;
    out.writeBigUInt64LE(BigInt(k), 0);
    out.writeBigUInt64LE(BigInt(page), 8);
    break;
  }
  return out;
}

function dump(argv: string[]): void {
  const dir = argv[argv.indexOf('-D') + 1];
  const epoch = Number(/^epoch-(\d+)$/.exec(path.basename(dir))![1]);
  const prevAt = argv.indexOf('--prev-images-dir');
  const parent = prevAt >= 0 ? argv[prevAt + 1] : undefined;
  if (parent && !argv.includes('--track-mem')) throw new Error('--prev-images-dir without --track-mem');
  const images = fixturePath(VERSION, 'plain-dump', 'images');
  for (const name of fs.readdirSync(images)) if (!/^(pagemap|pages)-/.test(name)) fs.copyFileSync(path.join(images, name), path.join(dir, name));
  const m = fakeMemory();
  const entries: PagemapEntryInput[] = [];
  const data: Buffer[] = [];
  m.pages.forEach((p, i) => {
    const written = !parent || dirtiedAt(epoch, i);
    const flags = written ? p.flags : PE_PARENT;
    const last = entries[entries.length - 1];
    if (last && last.flags === flags && last.vaddr + BigInt(Number(last.nrPages) * PAGE) === p.vaddr) last.nrPages = Number(last.nrPages) + 1;
    else entries.push({ vaddr: p.vaddr, nrPages: 1, flags });
    if (written) data.push(pageAt(m, epoch, i));
  });
  fs.writeFileSync(path.join(dir, 'pagemap-1.img'), encodePagemap({ pagesId: 1 }, entries, { encoding: '4.2' }));
  fs.writeFileSync(path.join(dir, 'pages-1.img'), Buffer.concat(data));
  if (parent) fs.symlinkSync(parent, path.join(dir, 'parent'));
}

if (process.argv[1] && path.resolve(process.argv[1]) === path.resolve(new URL(import.meta.url).pathname)) {
  const [log, ...argv] = process.argv.slice(2);
  fs.appendFileSync(log, `${JSON.stringify(argv)}\n`);
  if (argv[0] !== 'dump') {
    process.stderr.write(`fake criu: only dump (${argv[0]})\n`);
    process.exit(1);
  }
  dump(argv);
}
