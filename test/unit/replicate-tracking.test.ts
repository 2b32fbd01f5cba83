// lazyd replicate --tracking (src/replicate/tracking.ts, dump.ts, flatten.ts, primary.ts), without a kernel that
// tracks dirty memory (this one does not: soft-dirty is off):
//   - the mode chosen for each --tracking value and probe answer, and on this host with its real CRIU (through the
//     command line too): without dirty tracking (this kernel) auto picks page comparison and says so in the one
//     mode line, and dirty is refused in one line naming the cause and the fix;
//   - criu's argv for each epoch in each mode;
//   - flattening a dump made on a parent (crafted from the CRIU 4.1.1 and 4.2.1 plain dumps, as the pre-copy
//     tests do): every page has its data here, each page's content is the child's if it wrote it, else the
//     parent's; the runs are exactly the pages that differ from the parent's file at the same offset, also when
//     the layout moved; the standby's rebuild from those runs is byte-identical;
//   - three epochs of replicate() in each mode, with a stand-in criu (test/harness/fake-criu-dump.ts) and the
//     real standby (src/agent/replica.ts) over TCP: the argv of each epoch, the pages each sent, and the committed
//     epoch's memory, page by page.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { criuFeature } from '../../src/migrate/criu-host.js';
import { chooseTracking, type TrackingMode } from '../../src/replicate/tracking.js';
import { epochDumpArgs } from '../../src/replicate/dump.js';
import { flattenEpoch } from '../../src/replicate/flatten.js';
import { applyDelta, writeDelta } from '../../src/replicate/page-delta.js';
import { replicate } from '../../src/replicate/primary.js';
import { ReplicaStore } from '../../src/agent/replica.js';
import { encodePagemap, readPagemap, type Pagemap } from '../../src/images/pagemap.js';
import { PE_LAZY, PE_PARENT, PE_PRESENT } from '../../src/images/magic.js';
import { CRIU_VERSIONS, findCriu } from '../harness/criu.js';
import { dumpOnParent } from '../harness/pre-copy-chain.js';
import { dirtiedAt, fakeMemory, pageAt } from '../harness/fake-criu-dump.js';
import { memoryLogger } from '../harness/memory-logger.js';
import { lazydBin } from '../harness/page-server.js';
import { fixturePath } from '../fixtures/fixtures.js';
import { repoRoot } from '../../src/paths.js';

const PAGE = 4096;

function tmp(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `lazyd-tracking-${tag}-`));
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

test('--tracking: the mode for each value and probe answer; dirty without kernel tracking is one line with the fix', () => {
  let probes = 0;
  const none = () => {
    probes++;
    return 'Dirty tracking is OFF. Memory snapshot will not work.';
  };
  assert.equal(chooseTracking('compare', none).mode, 'compare');
  assert.equal(chooseTracking('full', none).mode, 'full');
  assert.equal(probes, 0, 'compare and full do not ask the kernel');
  const auto = chooseTracking('auto', none);
  assert.equal(auto.mode, 'compare');
  assert.match(auto.line, /^mode: page comparison .*\(--tracking auto: this kernel does not track dirty memory, criu check --feature mem_dirty_track: Dirty tracking is OFF/);
  assert.throws(() => chooseTracking('dirty', none), (e: Error) =>
    /^--tracking dirty: this kernel does not track dirty memory \(criu check --feature mem_dirty_track: Dirty tracking is OFF\. Memory snapshot will not work\.\) — use --tracking compare \(or auto\), or a kernel built with CONFIG_MEM_SOFT_DIRTY$/.test(e.message),
  );
  for (const flag of ['auto', 'dirty'] as const) {
    const chosen = chooseTracking(flag, () => undefined);
    assert.equal(chosen.mode, 'dirty');
    assert.match(chosen.line, /^mode: dirty-page tracking \(criu dump --track-mem .*criu check --feature mem_dirty_track passes\)$/);
  }
  assert.equal(probes, 2);
});

test("this host's CRIU: auto picks page comparison without dirty tracking and says why; dirty is refused (also by `lazyd replicate`)", (t) => {
  const criu = findCriu('4.2.1').path;
  const missing = criuFeature(criu, 'mem_dirty_track');
  // This host: soft-dirty off (the README says the dirty mode was not exercised on it). On a kernel with it, the
  // same test checks the other side: auto and dirty both run dirty.
  t.diagnostic(missing === undefined ? 'this kernel tracks dirty memory' : `this kernel does not track dirty memory: ${missing}`);
  assert.equal(chooseTracking('auto', () => missing).mode, missing === undefined ? 'dirty' : 'compare');
  const run = (tracking: string) =>
    spawnSync(process.execPath, [lazydBin(), 'replicate', '--pid', String(process.pid), '--to', '127.0.0.1:1', '--criu', criu, '--tracking', tracking, '--link-timeout', '1'], {
      encoding: 'utf8',
      timeout: 60_000,
      cwd: repoRoot(),
    });
  const modeLine = (stderr: string) => {
    const lines = stderr.trim().split('\n').filter((l) => l.includes('; mode: '));
    assert.equal(lines.length, 1, stderr);
    return lines[0];
  };
  const dirty = run('dirty');
  assert.equal(dirty.status, 1, dirty.stderr);
  if (missing !== undefined) {
    assert.deepEqual(dirty.stderr.trim().split('\n'), [
      `lazyd replicate: --tracking dirty: this kernel does not track dirty memory (criu check --feature mem_dirty_track: ${missing}) — use --tracking compare (or auto), or a kernel built with CONFIG_MEM_SOFT_DIRTY`,
    ]);
  } else {
    assert.match(modeLine(dirty.stderr), /; mode: dirty-page tracking .*\(--tracking dirty: criu check --feature mem_dirty_track passes\)$/);
  }
  const auto = run('auto');
  assert.equal(auto.status, 1, 'nothing listens on 127.0.0.1:1');
  if (missing !== undefined) {
    assert.ok(
      modeLine(auto.stderr).endsWith(
        `every 10 s; mode: page comparison (every epoch reads all memory; SHA-256 per page against the committed epoch) (--tracking auto: this kernel does not track dirty memory, criu check --feature mem_dirty_track: ${missing})`,
      ),
      auto.stderr,
    );
  } else {
    assert.match(modeLine(auto.stderr), /every 10 s; mode: dirty-page tracking .*\(--tracking auto: criu check --feature mem_dirty_track passes\)$/);
  }
});

test("criu's argv per epoch: --track-mem in dirty mode, --prev-images-dir from the second epoch (relative to -D)", () => {
  const base = ['dump', '-t', '42', '-D', '/shm/r/epoch-3', '-v4', '-o', 'dump.log', '--leave-running'];
  assert.deepEqual(epochDumpArgs(42, '/shm/r/epoch-3'), base, 'compare and full');
  assert.deepEqual(epochDumpArgs(42, '/shm/r/epoch-3', { parent: undefined }), [...base, '--track-mem'], 'dirty, first epoch');
  assert.deepEqual(epochDumpArgs(42, '/shm/r/epoch-3', { parent: '../epoch-2' }), [...base, '--track-mem', '--prev-images-dir', '../epoch-2']);
});

/** Each page's content by address in an images dir whose pagemap has data for every entry. */
function pagesByAddress(pm: Pagemap): Map<bigint, Buffer> {
  const data = fs.readFileSync(pm.pagesPath);
  const out = new Map<bigint, Buffer>();
  for (const e of pm.entries) {
    assert.ok(e.flags & PE_PRESENT, `${pm.file} entry ${e.index} has its data`);
    for (let i = 0; i < e.nrPages; i++) out.set(e.vaddr + BigInt(i * PAGE), data.subarray(Number(e.pagesOffset!) + i * PAGE, Number(e.pagesOffset!) + (i + 1) * PAGE));
  }
  return out;
}

/** The pages (in file order) of `flat` whose bytes differ from `parent`'s at the same offset. */
function differingPages(flat: Buffer, parent: Buffer): [number, number][] {
  const runs: [number, number][] = [];
  for (let p = 0; p * PAGE < flat.length; p++) {
    const same = (p + 1) * PAGE <= parent.length && flat.subarray(p * PAGE, (p + 1) * PAGE).equals(parent.subarray(p * PAGE, (p + 1) * PAGE));
    if (same) continue;
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === p) last[1]++;
    else runs.push([p, 1]);
  }
  return runs;
}

/** The standby's rebuild (page-delta.ts) of `dir`'s pages file from the parent's and the runs equals it. */
function rebuildMatches(dir: string, parentPages: string, runs: [number, number][]): void {
  const file = path.join(dir, 'pages-1.img');
  writeDelta(file, runs, PAGE, `${file}.delta`);
  applyDelta(parentPages, `${file}.delta`, fs.statSync(file).size, PAGE, path.join(dir, 'rebuilt'));
  assert.equal(sha(fs.readFileSync(path.join(dir, 'rebuilt'))), sha(fs.readFileSync(file)));
}

for (const version of CRIU_VERSIONS) {
  test(`flattening a dump on its parent (CRIU ${version} plain dump): contents, flags, runs, the standby's rebuild`, async () => {
    const root = tmp('flatten');
    try {
      const encoding = version === '4.1.1' ? '4.1' : '4.2';
      const parent = path.join(root, 'epoch-1');
      fs.cpSync(fixturePath(version, 'plain-dump', 'images'), parent, { recursive: true });
      const parentPm = await readPagemap(path.join(parent, 'pagemap-1.img'));
      const before = pagesByAddress(parentPm);
      // The child: half of every lazy-capable entry in the parent, the other half written again — with new bytes.
      const child = path.join(root, 'epoch-2');
      const made = await dumpOnParent(parent, child, 'pre-dump', encoding);
      assert.ok(made.parentPages > 0 && made.writtenPages > 0);
      const written = fs.readFileSync(path.join(child, 'pages-1.img'));
      for (let i = 0; i < written.length; i += PAGE) written[i] ^= 0x5a;
      fs.writeFileSync(path.join(child, 'pages-1.img'), written);
      fs.symlinkSync('../epoch-1', path.join(child, 'parent'));
      const childPm = await readPagemap(path.join(child, 'pagemap-1.img'));
      const writtenThere = pagesByAddressWhereWritten(childPm);

      const flat = await flattenEpoch(child, PAGE, encoding);
      assert.equal(fs.existsSync(path.join(child, 'parent')), false, 'the parent link is gone');
      const f = flat.get('pages-1.img')!;
      assert.ok(f.onParent);
      const pm = await readPagemap(path.join(child, 'pagemap-1.img'));
      assert.equal(pm.encoding, encoding);
      assert.equal(pm.totals.parentPages, 0, 'no in-parent entry is left');
      assert.equal(pm.totals.pages, parentPm.totals.pages);
      assert.equal(f.pages, pm.totals.pages);
      const after = pagesByAddress(pm);
      assert.deepEqual([...after.keys()], [...before.keys()], 'the same addresses');
      for (const [vaddr, bytes] of after) {
        const expected = writtenThere.get(vaddr) ?? before.get(vaddr)!;
        assert.ok(bytes.equals(expected), `page ${vaddr.toString(16)}`);
      }
      // Flags: data everywhere; PE_LAZY where the plain dump had it.
      for (const e of pm.entries) {
        for (let i = 0; i < e.nrPages; i++) {
          const vaddr = e.vaddr + BigInt(i * PAGE);
          const original = parentPm.entries.find((p) => p.vaddr <= vaddr && vaddr < p.vaddr + BigInt(p.nrPages * PAGE))!;
          assert.equal(e.flags, PE_PRESENT | (original.flags & PE_LAZY), `flags of ${vaddr.toString(16)}`);
        }
      }
      // The same layout as the parent: the runs are exactly the pages whose bytes differ.
      const flatBytes = fs.readFileSync(path.join(child, 'pages-1.img'));
      assert.deepEqual(f.runs, differingPages(flatBytes, fs.readFileSync(path.join(parent, 'pages-1.img'))));
      assert.equal(f.runs.reduce((n, [, c]) => n + c, 0), made.writtenPages, 'every page written (with new bytes) and nothing else');
      rebuildMatches(child, path.join(parent, 'pages-1.img'), f.runs);

      // The next epoch on the flattened one, with its first entry gone (munmap): every page after it moved.
      const third = path.join(root, 'epoch-3');
      fs.mkdirSync(third);
      for (const name of fs.readdirSync(child)) if (/\.img$/.test(name) && !/^(pagemap|pages)-/.test(name)) fs.copyFileSync(path.join(child, name), path.join(third, name));
      const kept = pm.entries.slice(1);
      fs.writeFileSync(path.join(third, 'pagemap-1.img'), encodePagemap({ pagesId: 1 }, kept.map((e) => ({ vaddr: e.vaddr, nrPages: e.nrPages, flags: PE_PARENT })), { encoding }));
      fs.writeFileSync(path.join(third, 'pages-1.img'), '');
      fs.symlinkSync('../epoch-2', path.join(third, 'parent'));
      const shifted = (await flattenEpoch(third, PAGE, encoding)).get('pages-1.img')!;
      const thirdBytes = fs.readFileSync(path.join(third, 'pages-1.img'));
      assert.ok(thirdBytes.equals(flatBytes.subarray(pm.entries[0].nrPages * PAGE)), 'the data of the entries left');
      assert.deepEqual(shifted.runs, [[0, shifted.pages]], 'every page moved: all of them are sent');
      rebuildMatches(third, path.join(child, 'pages-1.img'), shifted.runs);
      // A first epoch (no parent): left as it is, every page a change.
      const first = (await flattenEpoch(parent, PAGE, encoding)).get('pages-1.img')!;
      assert.deepEqual({ onParent: first.onParent, runs: first.runs }, { onParent: false, runs: [[0, parentPm.totals.pages]] });
      assert.equal(sha(fs.readFileSync(path.join(parent, 'pages-1.img'))), sha(fs.readFileSync(fixturePath(version, 'plain-dump', 'images', 'pages-1.img'))));
    } finally {
      fs.rmSync(root, { recursive: true, force: true });
    }
  });
}

function pagesByAddressWhereWritten(pm: Pagemap): Map<bigint, Buffer> {
  const data = fs.readFileSync(pm.pagesPath);
  const out = new Map<bigint, Buffer>();
  for (const e of pm.entries) {
    if (!(e.flags & PE_PRESENT)) continue;
    for (let i = 0; i < e.nrPages; i++) out.set(e.vaddr + BigInt(i * PAGE), data.subarray(Number(e.pagesOffset!) + i * PAGE, Number(e.pagesOffset!) + (i + 1) * PAGE));
  }
  return out;
}

async function standby(): Promise<{ store: ReplicaStore; port: number; stateDir: string; close(): Promise<void> }> {
  const stateDir = tmp('standby');
  const { logger } = memoryLogger();
  const store = new ReplicaStore(
    {
      criuPath: '/nonexistent/criu', criuVersion: '4.2.1', pageSize: PAGE, uffdProblem: null, workDir: stateDir,
      lazyPagesTlsArgs: [], keepDirs: false, replicaCapBytes: 256 << 20, failoverAfterMs: 0,
    },
    logger,
  );
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    store.accept(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    store,
    port: (server.address() as net.AddressInfo).port,
    stateDir,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

for (const mode of ['dirty', 'compare', 'full'] as const satisfies readonly TrackingMode[]) {
  test(`replicate() --tracking ${mode}: three epochs with a stand-in criu into the real standby`, async () => {
    const root = tmp(`run-${mode}`);
    const s = await standby();
    try {
      const log = path.join(root, 'argv.log');
      const criu = path.join(root, 'criu');
      fs.writeFileSync(criu, `#!/bin/sh\nexec ${JSON.stringify(process.execPath)} ${JSON.stringify(path.join(repoRoot(), 'dist', 'test', 'harness', 'fake-criu-dump.js'))} ${JSON.stringify(log)} "$@"\n`, { mode: 0o755 });
      const events: Record<string, unknown>[] = [];
      const workDir = path.join(root, 'dump');
      const outcome = await replicate(
        {
          pid: 4242, id: 'svc', to: { host: '127.0.0.1', port: s.port }, tlsVerifyName: false, criu, criuVersion: '4.2.1', pageSize: PAGE,
          intervalMs: 0, epochs: 3, tracking: mode, workDir, killOnFence: false, linkTimeoutMs: 10_000, failoverAfterMs: 0,
          progress: (e) => events.push(e),
        },
        new AbortController().signal,
      );
      assert.deepEqual(outcome, { outcome: 'done', epochs: 3 }, JSON.stringify(events));
      assert.equal(events[0].mode, mode, 'the connected event names the mode');
      const argv = fs.readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as string[]);
      const base = (n: number) => ['dump', '-t', '4242', '-D', path.join(workDir, `epoch-${n}`), '-v4', '-o', 'dump.log', '--leave-running'];
      const expected =
        mode === 'dirty'
          ? [[...base(1), '--track-mem'], [...base(2), '--track-mem', '--prev-images-dir', '../epoch-1'], [...base(3), '--track-mem', '--prev-images-dir', '../epoch-2']]
          : [base(1), base(2), base(3)];
      assert.deepEqual(argv, expected);
      const m = fakeMemory();
      const total = m.pages.length;
      const dirtied = (k: number) => m.pages.filter((_, i) => dirtiedAt(k, i)).length;
      const committed = events.filter((e) => e.event === 'committed');
      assert.deepEqual(committed.map((e) => e.pages), [total, total, total]);
      assert.deepEqual(committed.map((e) => e.pagesChanged), mode === 'full' ? [total, total, total] : [total, dirtied(2), dirtied(3)]);
      assert.ok(dirtied(2) > 0 && dirtied(2) < total / 4);
      // The standby's committed epoch: epoch 3's memory, page by page, every entry with its data, no parent link.
      const dir = path.join(s.stateDir, 'replicas', 'svc', 'committed');
      assert.equal(path.basename(fs.readlinkSync(dir)), 'epoch-3');
      assert.equal(fs.existsSync(path.join(dir, 'parent')), false);
      const pm = await readPagemap(path.join(dir, 'pagemap-1.img'));
      const got = pagesByAddress(pm);
      assert.equal(got.size, total);
      m.pages.forEach((p, i) => assert.ok(got.get(p.vaddr)!.equals(pageAt(m, 3, i)), `page ${i} at ${p.vaddr.toString(16)}`));
      // The primary keeps the last epoch only, self-contained (the next dump's parent).
      assert.deepEqual(fs.readdirSync(path.join(workDir)), ['epoch-3']);
      assert.equal(fs.existsSync(path.join(workDir, 'epoch-3', 'parent')), false);
    } finally {
      await s.close();
      fs.rmSync(root, { recursive: true, force: true });
      fs.rmSync(s.stateDir, { recursive: true, force: true });
    }
  });
}
