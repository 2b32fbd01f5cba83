// The workload and the harness's view of it, without CRIU: pattern and checksum against the recorded test vectors,
// corruption detection, the control files, --threads/--children, heartbeat statistics and pid-namespace cleanup.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import {
  buildWorkload,
  childrenOf,
  heartbeatStats,
  instanceDirs,
  killPidNamespace,
  killWorkload,
  logOffset,
  parseLog,
  pidNamespaceMembers,
  pollFor,
  readHeartbeats,
  readLog,
  readTouches,
  startWorkload,
  touchControl,
  waitForAllPasses,
  waitForPasses,
  wakeWorkload,
  withRunDir,
  type SlowRead,
  type Workload,
} from '../harness/index.js';
import { sessionFacts } from '../fixtures/fixtures.js';

// The recorded test vectors' workload (test/fixtures, session.json): 1 MiB, seed 1, what the tests below start, and
// the checksum it reported; page 0 starts with mix(1,0,0).
const RECORDED = sessionFacts('4.2.1', 'plain-dump').workload;
const RECORDED_SUM_1MIB_SEED1 = RECORDED.data_area.checksum;
const MIX_1_0_0 = 0x910a2dec89025cc1n;

function requireRoot(): void {
  if (process.getuid?.() !== 0) throw new Error('the workload tests need root (pid namespaces, /proc/<pid>/mem)');
}

async function withWorkload(tag: string, body: (w: Workload) => Promise<void>, options: Parameters<typeof startWorkload>[2]) {
  requireRoot();
  const binary = await buildWorkload();
  await withRunDir(`workload-${tag}`, async (runDir, onCleanup) => {
    const w = await startWorkload(binary, path.join(runDir, 'w'), options);
    onCleanup(() => killWorkload(w));
    await body(w);
  });
}

test('parseLog reads pass, BAD, ERROR, fork and op lines, and only complete lines', () => {
  const text =
    'start pid 1 pages 256 seed 1 order seq threads 0\n' +
    `pass 1 pid 1 ok 256 bad 0 sum ${RECORDED_SUM_1MIB_SEED1} t 200 start 100 us 1\n` +
    'BAD page 5 word 3 got 0x0 want 0x1\n' +
    'ERROR op mremap: Invalid argument\n' +
    'op fork child 3\nfork-ok pid 3 pages 256 sum 0x1\nreaped pid 3 status 0\n' +
    'pass 2 pid 1 ok 2';
  const scan = parseLog(text, 10);
  assert.equal(scan.passes.length, 1);
  assert.deepEqual(scan.passes[0], { pass: 1, pid: 1, ok: 256, bad: 0, sum: RECORDED_SUM_1MIB_SEED1, t: 200n, start: 100n, us: 1 });
  assert.equal(scan.bad.length, 1);
  assert.equal(scan.errors.length, 1);
  assert.equal(scan.ops.length, 1);
  assert.equal(scan.forkOk.length, 1);
  assert.deepEqual(scan.reaped, [{ pid: 3, status: 0 }]);
  assert.equal(scan.offset, 10 + Buffer.byteLength(text) - 'pass 2 pid 1 ok 2'.length);
});

test('heartbeatStats: max and percentiles of the gaps', () => {
  const beats = [0n, 5_000_000n, 10_000_000n, 15_000_000n, 120_000_000n, 125_000_000n];
  const stats = heartbeatStats(beats);
  assert.equal(stats.beats, 6);
  assert.equal(stats.maxGapMs, 105);
  assert.equal(stats.maxGapEndNs, 120_000_000n);
  assert.equal(stats.p50GapMs, 5);
  assert.equal(heartbeatStats(beats, 0n, 15_000_000n).maxGapMs, 5);
});

test('workload: pid 1 of its namespace, the recorded test-vector pattern, heartbeats', { timeout: 60_000 }, async () => {
  await withWorkload(
    'vector',
    async (w) => {
      assert.deepEqual([RECORDED.data_area.pages, RECORDED.seed], [256, 1], 'the recording ran the workload started here');
      assert.equal(w.ready.nsPid, 1);
      assert.equal(w.ready.hostPid, w.pid);
      assert.equal(w.ready.pages, 256);
      const passes = await waitForPasses(w.dir, 8, 10_000, { expectSum: RECORDED_SUM_1MIB_SEED1, pid: w.pid });
      assert.ok(passes.every((p) => p.ok === 256 && p.bad === 0));
      // The first word of the data area, read from outside.
      const fd = fs.openSync(`/proc/${w.pid}/mem`, 'r');
      const word = Buffer.alloc(8);
      fs.readSync(fd, word, 0, 8, Number(BigInt(w.ready.base)));
      fs.closeSync(fd);
      assert.equal(word.readBigUInt64LE(0), MIX_1_0_0);
      const hb = heartbeatStats(readHeartbeats(w.dir));
      assert.ok(hb.beats > 10, `only ${hb.beats} heartbeats`);
      assert.ok(hb.p50GapMs >= 4 && hb.p50GapMs < 50, `median heartbeat gap ${hb.p50GapMs} ms`);
    },
    { mib: 1, seed: 1, intervalMs: 20 },
  );
});

test('workload: a corrupted word is reported, and waitForPasses rejects at once', { timeout: 60_000 }, async () => {
  await withWorkload(
    'corrupt',
    async (w) => {
      await waitForPasses(w.dir, 1, 10_000, { pid: w.pid });
      const from = logOffset(w.dir);
      const fd = fs.openSync(`/proc/${w.pid}/mem`, 'r+');
      fs.writeSync(fd, Buffer.alloc(8), 0, 8, Number(BigInt(w.ready.base) + 4096n * 7n + 8n * 9n));
      fs.closeSync(fd);
      const started = performance.now();
      await assert.rejects(waitForPasses(w.dir, 1000, 30_000, { fromOffset: from, pid: w.pid }), /BAD page 7 word 9 got 0x0000000000000000/);
      assert.ok(performance.now() - started < 5000, 'the BAD line was not noticed promptly');
    },
    { mib: 2, seed: 3, order: 'random', threads: 2, intervalMs: 20 },
  );
});

test('workload: control files (fork, munmap, mremap, dontneed) with --threads and --children', { timeout: 60_000 }, async () => {
  await withWorkload(
    'control',
    async (w) => {
      const dirs = instanceDirs(w.dir, 2);
      await waitForAllPasses(w.dir, 2, 1, 10_000, { pid: w.pid });
      const offsets = dirs.map((d) => logOffset(d));
      for (const dir of dirs) {
        for (const name of ['do-fork', 'do-munmap', 'do-mremap', 'do-dontneed'] as const) touchControl(dir, name);
      }
      wakeWorkload(w.pid);
      await waitForAllPasses(w.dir, 2, 2, 10_000, { pid: w.pid, fromOffsets: offsets });
      // Each instance takes the files one by one at the top of a round, so it may take some in one round and the
      // rest in the next; its forked child reports on its own time. Once every instance has logged all four
      // operations and its child's report, the passes that follow are those of the changed memory.
      await pollFor('each instance to act on the four control files', 10_000, () =>
        dirs.every((dir, i) => {
          const log = readLog(dir, offsets[i]);
          return log.ops.length >= 4 && log.forkOk.length >= 1;
        })
          ? true
          : undefined,
      );
      const passes = await waitForAllPasses(w.dir, 2, 1, 10_000, { pid: w.pid, fromOffsets: dirs.map((d) => logOffset(d)) });
      for (const [i, dir] of dirs.entries()) {
        const log = readLog(dir, offsets[i]);
        assert.equal(log.ops.length, 4, `${dir}: ${log.ops.join('; ')}`);
        assert.equal(log.forkOk.length, 1, `${dir}: no fork-ok`);
        // 1024 pages: -256 unmapped, +256 grown by mremap; the sum is that of pages 0..511 only.
        const last = passes[i].at(-1)!;
        assert.equal(last.ok, 1024);
        assert.equal(last.bad, 0);
      }
      // The parent and both --children share the namespace; killing its init must take all of them.
      const nsLink = fs.readlinkSync(`/proc/${w.pid}/ns/pid`);
      assert.ok(pidNamespaceMembers(nsLink).length >= 3);
      assert.equal(childrenOf(w.pid).length, 2);
      await killPidNamespace(w.pid);
      assert.deepEqual(pidNamespaceMembers(nsLink), []);
    },
    { mib: 4, seed: 9, order: 'random', threads: 2, children: 2, intervalMs: 20 },
  );
});

test('--hot-pct: passes read a fixed scattered share (0 = idle), do-verify-all checks every page once, touch lines parse', async () => {
  for (const hotPct of [10, 0]) {
    await withWorkload(
      `hot-${hotPct}`,
      async (w) => {
        const pages = 4 * 256;
        const passes = await waitForPasses(w.dir, 3, 20_000, { pid: w.pid });
        const oks = new Set(passes.map((p) => p.ok));
        assert.equal(oks.size, 1, `every pass reads the same set: ${[...oks]}`);
        const ok = passes[0].ok;
        if (hotPct === 0) assert.equal(ok, 0);
        else assert.ok(ok > pages * 0.05 && ok < pages * 0.15, `about 10% of ${pages} pages: ${ok}`);
        assert.equal(new Set(passes.map((p) => p.sum)).size, 1, 'the same pages give the same sum every pass');
        const offset = logOffset(w.dir);
        touchControl(w.dir, 'do-verify-all');
        wakeWorkload(w.pid);
        const deadline = Date.now() + 10_000;
        let line;
        while (!(line = readLog(w.dir, offset).verifyAll[0]) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        assert.ok(line, 'a verify-all line');
        assert.equal(line.ok, pages);
        assert.equal(line.bad, 0);
        assert.ok(!fs.existsSync(path.join(w.dir, 'do-verify-all')), 'the control file is taken');
      },
      { mib: 4, order: 'random', seed: 7, hotPct, intervalMs: 10 },
    );
  }
  const dir = fs.mkdtempSync('/tmp/lazyd-touch-');
  try {
    fs.writeFileSync(path.join(dir, 'touch'), 'touch pid 1 pass 3 slow 3 16:2 1449:1\nslowread pid 1 end 1000 ns 25000000\ntouch pid 1 pass 4 sl');
    const slow: SlowRead[] = [];
    assert.deepEqual(readTouches(dir, slow), [{ pid: 1, pass: 3, slow: 3, buckets: [[16, 2], [1449, 1]] }]);
    assert.deepEqual(slow, [{ pid: 1, endNs: 1000n, ns: 25000000 }]);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
