// End-to-end: `lazyd lazy-pages` as the destination daemon of real `criu restore --lazy-pages` (CRIU 4.1.1 and
// 4.2.1). Every workload verifies its own memory after the restore (clean passes with the pre-dump sums, or the
// expected page counts after it changed its memory). Sources of the lazy pages:
//   local        no page server: the lazy pages come from the plain dump's pages-*.img
//   criu         criu page-server --lazy-pages on the plain dump
//   lazyd        lazyd --page-server (serve mode) on the plain dump
//   criu-dump    criu dump --lazy-pages --port: the frozen tasks serve their own memory, and the dump kills
//                them after the daemon's CLOSE
// Scenarios (each once per CRIU version; every source at least once per version):
//   (1) one process, 32 MiB touched sequentially                            source local
//   (2) one process with 3 verifier threads, 32 MiB in random order         source criu
//   (3) a process tree: 2 children with their own memory, and a zombie      source criu-dump
//   (4) fork(), munmap, mremap, MADV_DONTNEED while pages are still lazy    source lazyd
//   (5) the page server SIGKILLed mid-restore: lazyd exits 1 with a clear error and kills the restored tree
//   (6) a restore that hands over its tasks but never sends RSTF: lazyd times out, kills the sender, exits 1
//   (7) criu's daemon form: `lazyd lazy-pages -d --pidfile` returns once ready, the daemon serves and exits
//   (8) lazyd stopped (SIGTERM) mid-transfer from `criu dump --lazy-pages`: the dump fails and resumes the original,
//       which verifies (an EOF instead of a reset would make the dump kill it: both copies lost)
// Prerequisites (root, both CRIU versions, fs.pipe-max-size) are checked by every test: a missing one FAILS it.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { test, type TestContext } from 'node:test';
import {
  assertCleanLog,
  checkpointWorkload,
  copyCheckpointImages,
  CRIU_VERSIONS,
  E2E_TIMEOUTS as timeouts,
  dumpPageCounts,
  findCriu,
  formatMigration,
  instanceDirs,
  killPidNamespace,
  logOffset,
  pollFor,
  processAlive,
  readLog,
  readPidfile,
  requireHost,
  runCriu,
  runLazyMigration,
  startFakeRestore,
  startLazyPagesDaemon,
  startPageServer,
  startRelay,
  testProgress,
  waitForPasses,
  withRunDir,
  type CriuVersion,
  type MigrationResult,
  type ServerKind,
} from '../harness/index.js';

const TEST_TIMEOUT_MS = 90_000;
/** How long lazyd may take to notice a failure and exit (the bound the tests hold it to). */
const FAILURE_EXIT_MS = 10_000;

function assertLazydComplete(result: MigrationResult): void {
  assert.equal(result.daemon, 'lazyd');
  const totals = result.lazydTotals;
  assert.ok(totals, 'lazyd printed no "lazyd lazy-pages: N pages installed ..." line');
  assert.ok(result.lazyPages.tasks.length > 0, 'no "UFFD transferred pages" line in lazyd\'s log');
  assert.ok(result.lazyPages.total >= result.dataPages, `lazyd expected ${result.lazyPages.total} lazy pages, fewer than the ${result.dataPages} data pages`);
  assert.equal(result.lazyPages.copied, result.lazyPages.total, 'lazyd did not install every lazy page');
  assert.equal(totals.installed, totals.total, `summary: ${totals.line}`);
}

/** Children of a process (all threads), with their /proc state letter. */
function childStates(pid: number): { pid: number; state: string }[] {
  const out: { pid: number; state: string }[] = [];
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    for (const word of fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(/\s+/)) {
      if (!word) continue;
      const status = fs.readFileSync(`/proc/${word}/status`, 'utf8');
      out.push({ pid: Number(word), state: status.match(/^State:\s+(\S)/m)?.[1] ?? '?' });
    }
  }
  return out;
}

/** Whether a thread of pid sleeps in the kernel waiting for a userfaultfd page (its wchan is handle_userfault). */
function waitsForPage(pid: number): boolean {
  try {
    return fs.readdirSync(`/proc/${pid}/task`).some((tid) => fs.readFileSync(`/proc/${pid}/task/${tid}/wchan`, 'utf8').trim() === 'handle_userfault');
  } catch {
    return false; // gone
  }
}

function migrationTest(
  version: CriuVersion,
  name: string,
  run: (t: TestContext) => Promise<MigrationResult>,
  check: (result: MigrationResult, t: TestContext) => void,
) {
  test(`CRIU ${version}: ${name}`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const result = await run(t);
    t.diagnostic(formatMigration(result));
    t.diagnostic(`lazyd: ${result.lazydTotals?.line}`);
    check(result, t);
  });
}

for (const version of CRIU_VERSIONS) {
  // (1) One process, pages touched in ascending order, lazy pages read from the local plain dump.
  migrationTest(
    version,
    '(1) 32 MiB touched sequentially, source local (no page server)',
    (t) =>
      runLazyMigration({
        criuVersion: version,
        server: 'local',
        daemon: 'lazyd',
        workload: { mib: 32, order: 'seq' },
        progress: testProgress(t),
        timeouts,
        onRestored: (r) => assertCleanLog(path.join(r.dstDir, 'lazy-pages.log')),
      }),
    (result) => {
      assertLazydComplete(result);
      assert.equal(result.passes[0][0].ok, result.dataPages);
      assert.equal(result.serverExit.code, 0);
    },
  );

  // (2) Multi-threaded: 3 verifier threads fault on one mm (one uffd) in random order; criu's page server.
  migrationTest(
    version,
    '(2) 32 MiB in random order by 4 threads, source criu page-server --lazy-pages',
    (t) =>
      runLazyMigration({
        criuVersion: version,
        server: 'criu',
        daemon: 'lazyd',
        workload: { mib: 32, order: 'random', seed: 7, threads: 3 },
        progress: testProgress(t),
        timeouts,
      }),
    (result) => {
      assertLazydComplete(result);
      assert.equal(result.passes[0][0].ok, result.dataPages);
      assert.equal(result.serverExit.code, 0, 'criu page-server must exit 0 after the CLOSE');
    },
  );

  // (3) A tree: parent + 2 children (each its own data), plus a zombie child that is never reaped. The source is
  // the lazy dump itself. The zombie is handed over as -pid without a uffd and must still be a zombie afterwards.
  {
    let zombieSeen = '';
    let lazydLog = '';
    migrationTest(
      version,
      '(3) a process tree (2 children, a zombie), source criu dump --lazy-pages --port',
      (t) =>
        runLazyMigration({
          criuVersion: version,
          server: 'criu-dump',
          daemon: 'lazyd',
          workload: { mib: 8, order: 'random', children: 2, zombie: true },
          progress: testProgress(t),
          timeouts,
          onRestored: (r, checkpoint) => {
            lazydLog = fs.readFileSync(path.join(r.dstDir, 'lazy-pages.log'), 'utf8');
            const zombies = childStates(r.restoredPid).filter((c) => c.state === 'Z');
            zombieSeen = zombies.map((z) => String(z.pid)).join(',');
            assert.equal(readLog(checkpoint.workloadDir).ops.length, 0);
          },
        }),
      (result, t) => {
        assertLazydComplete(result);
        assert.equal(result.passes.length, 3, 'parent and both children verified');
        for (const passes of result.passes) assert.ok(passes.length >= 2);
        assert.equal(result.serverExit.code, 0, 'the lazy dump must exit 0 after the CLOSE');
        assert.equal(result.lazyPages.tasks.length, 3, 'three live tasks served');
        assert.match(lazydLog, /Zombie \d+/, 'lazyd did not log the zombie hand-over');
        assert.notEqual(zombieSeen, '', 'the restored workload has no zombie child');
        t.diagnostic(`zombie child(ren) of the restored workload: ${zombieSeen}`);
      },
    );
  }

  // (4) Right after the restore, while most pages are still at the server, the workload forks a child that
  // verifies everything (lazyd serves it from the parent's image via the FORK event), munmaps the last quarter,
  // mremaps the second (and grows it), and MADV_DONTNEEDs the third.
  {
    let ops: string[] = [];
    let forkOk = 0;
    let lazydLog = '';
    migrationTest(
      version,
      '(4) fork, munmap, mremap, dontneed during the lazy phase, source lazyd page server',
      (t) =>
        runLazyMigration({
          criuVersion: version,
          server: 'lazyd',
          daemon: 'lazyd',
          workload: { mib: 64, order: 'random', intervalMs: 1000 },
          controlFiles: ['do-fork', 'do-munmap', 'do-mremap', 'do-dontneed'],
          // lazyd drains 64 MiB from loopback in ~0.1 s, before `criu restore` has even returned: pass the pages
          // at 16 MiB/s so that the operations surely run while most of them are still at the server.
          throttleBytesPerSecond: 16 * 1024 * 1024,
          progress: testProgress(t),
          timeouts,
          onRestored: async (r, checkpoint) => {
            // The forked child reports (fork-ok) once it has verified its memory, on its own time.
            await pollFor("the forked child's report", 20_000, () => {
              const { forkOk, bad } = readLog(checkpoint.workloadDir, r.logOffsets[0]);
              return forkOk.length + bad.length > 0 ? true : undefined;
            });
            const log = readLog(checkpoint.workloadDir, r.logOffsets[0]);
            ops = log.ops;
            forkOk = log.forkOk.length;
            assert.deepEqual(log.errors, [], 'workload ERROR lines');
            lazydLog = fs.readFileSync(path.join(r.dstDir, 'lazy-pages.log'), 'utf8');
          },
        }),
      (result, t) => {
        t.diagnostic(`${ops.join('; ')}; tasks ${JSON.stringify(result.lazyPages.tasks)}`);
        assert.equal(ops.filter((op) => / (munmap|mremap|dontneed) pages /.test(op)).length, 3, `operations missing: ${ops.join('; ')}`);
        assert.equal(forkOk, 1, 'the forked child did not report fork-ok');
        // The fork comes last of the four operations; on a fast drain it may come after every page was in, and
        // then the kernel sends no FORK event (nothing is registered any more): reported, not required.
        t.diagnostic(`lazyd FORK event: ${/forked: child task/.test(lazydLog) ? 'seen' : 'not seen (drain finished first)'}`);
        assert.ok(
          result.lazyPages.tasks.some((task) => task.copied < task.total),
          'no lazy range was dropped: the operations ran after every page had arrived, so this tested nothing',
        );
        const q = result.dataPages / 4;
        assert.equal(result.passes[0].at(-1)!.ok, result.dataPages - q + q, 'pages verified after munmap (-q) and the grown mremap (+q)');
        assert.equal(result.serverExit.code, 0);
      },
    );
  }

  // (5) The page server dies (SIGKILL) while the restored workload waits for its pages. The pages pass a throttled
  // relay during the restore and the server is stopped (SIGSTOP) once the restore returned, so the workload is
  // certainly mid-restore: resumed, blocked on faults (a random-order pass needs every page). lazyd
  // must exit 1 within a bound, with one error line naming the cause and the pids it killed, and the restored
  // tree must be gone (its memory can never be completed; leaving it would zero-fill the missing pages).
  const serverKind: ServerKind = version === '4.1.1' ? 'criu' : 'lazyd';
  test(`CRIU ${version}: (5) page server (${serverKind}) SIGKILLed mid-restore: lazyd kills the restored tree, exits 1`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-lp-killed`, async (runDir, onCleanup) => {
      const progress = testProgress(t);
      const checkpoint = await checkpointWorkload({ criu, runDir, workload: { mib: 64, order: 'random', children: 1 }, progress, onCleanup, timeouts });
      const ps = await startPageServer({ kind: serverKind, criuVersion: version, imagesDir: checkpoint.imagesDir });
      onCleanup(() => ps.kill());
      // The pages pass at 4 MiB/s (the 128 MiB would take 32 s), whatever the scheduling of this process, so the
      // drain cannot finish before the kill; stopping the server outright would stall the restore itself, which
      // faults on lazy memory before RSTF.
      const relay = await startRelay(ps, { throttle: { direction: 'to-client', bytesPerSecond: 4 * 1024 * 1024 } });
      onCleanup(() => relay.close());

      const dstDir = path.join(runDir, 'dst');
      copyCheckpointImages(checkpoint.imagesDir, dstDir);
      const daemon = await startLazyPagesDaemon({ daemon: 'lazyd', criu, dstDir, server: relay, readyTimeoutMs: timeouts.readyMs });
      onCleanup(() => daemon.kill('SIGKILL'));
      const offsets = instanceDirs(checkpoint.workloadDir, 1).map((dir) => logOffset(dir));
      const pidfile = path.join(dstDir, 'restored.pid');
      await runCriu(criu, 'restore', ['--lazy-pages', '-D', dstDir, '-d', '-v4', '-o', 'restore.log', '--pidfile', pidfile], timeouts.restoreMs, {
        imagesDir: dstDir,
      });
      const restoredPid = readPidfile(pidfile);
      assert.ok(restoredPid, 'criu restore wrote no pid');
      onCleanup(() => killPidNamespace(restoredPid).catch(() => undefined));
      process.kill(ps.pid, 'SIGSTOP');
      const tree = [restoredPid, ...childStates(restoredPid).map((c) => c.pid)];
      // Mid-restore: the workload and its child each have a thread blocked in the kernel on a missing page.
      await pollFor('each restored process to wait for a page', 10_000, () => (tree.every(waitsForPage) ? true : undefined), 20);
      assert.ok(daemon.running, `lazyd exited before the page server died: ${daemon.outputText}`);
      assert.ok(processAlive(restoredPid), 'the restored workload died before the page server did');
      const passesBefore = offsets.map((offset, i) => readLog(instanceDirs(checkpoint.workloadDir, 1)[i], offset).passes.length);
      assert.deepEqual(passesBefore, [0, 0], 'a pass completed while the page server was stopped: the workload was not waiting for pages');

      process.kill(ps.pid, 'SIGKILL');
      const killedAt = performance.now();
      const exit = await daemon.wait(FAILURE_EXIT_MS);
      const exitMs = performance.now() - killedAt;
      t.diagnostic(`lazyd exited ${JSON.stringify(exit)} ${exitMs.toFixed(0)} ms after the SIGKILL: ${daemon.outputText.trim()}`);
      assert.equal(exit.code, 1, 'lazyd must exit 1');
      const errors = fs.readFileSync(path.join(dstDir, 'lazy-pages.log'), 'utf8').split('\n').filter((l) => /\bError\b/.test(l));
      assert.equal(errors.length, 1, `one error line expected:\n${errors.join('\n')}`);
      assert.match(errors[0], /page server/i, 'the error must name the cause');
      assert.match(errors[0], /killed the restored tasks \(SIGKILL\): pids [\d, ]+/);
      assert.ok(errors[0].includes(String(restoredPid)), `the error must name the restored pid ${restoredPid}: ${errors[0]}`);
      assert.match(daemon.outputText, /lazyd: lazy-pages failed: .*page server/i, 'the error must reach stderr too');
      await pollFor('the restored tree to be gone', 5000, () => (tree.every((pid) => !processAlive(pid)) ? true : undefined), 20);
      const after = offsets.map((offset, i) => readLog(instanceDirs(checkpoint.workloadDir, 1)[i], offset));
      assert.deepEqual(after.map((l) => l.passes.length + l.bad.length), [0, 0], 'the restored workload ran on with missing pages');
    });
  });

  // (6) The hand-overs arrive, RSTF never does (a stand-in for a broken restore). With the RSTF timeout at 2 s,
  // lazyd must fail with a clear error and kill the handed-over "task" (the sender, known from SCM_CREDENTIALS).
  test(`CRIU ${version}: (6) a restore that never sends RSTF: lazyd times out, kills the task, exits 1`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-lp-nortsf`, async (runDir, onCleanup) => {
      const progress = testProgress(t);
      const checkpoint = await checkpointWorkload({ criu, runDir, workload: { mib: 1 }, progress, onCleanup, timeouts });
      const pids = (await dumpPageCounts(checkpoint.imagesDir)).map((c) => Number(/pagemap-(\d+)\.img/.exec(c.file)![1]));
      assert.equal(pids.length, 1);
      const dstDir = path.join(runDir, 'dst');
      copyCheckpointImages(checkpoint.imagesDir, dstDir);
      const daemon = await startLazyPagesDaemon({
        daemon: 'lazyd',
        criu,
        dstDir,
        server: 'local',
        env: { LAZYD_RSTF_TIMEOUT: '2' },
        readyTimeoutMs: timeouts.readyMs,
      });
      onCleanup(() => daemon.kill('SIGKILL'));
      const fake = await startFakeRestore(path.join(dstDir, 'lazy-pages.socket'), pids);
      onCleanup(() => fake.kill('SIGKILL'));
      const started = performance.now();
      const exit = await daemon.wait(2000 + FAILURE_EXIT_MS);
      const exitMs = performance.now() - started;
      t.diagnostic(`lazyd exited ${JSON.stringify(exit)} after ${exitMs.toFixed(0)} ms: ${daemon.outputText.trim()}`);
      t.diagnostic(`fake restore: ${fake.outputText.trim()}`);
      assert.equal(exit.code, 1);
      assert.ok(exitMs >= 1500, `lazyd gave up after ${exitMs.toFixed(0)} ms, before its 2 s RSTF timeout`);
      assert.match(daemon.outputText, /did not send RSTF within 2000 ms/);
      assert.match(daemon.outputText, new RegExp(`killed the restored tasks \\(SIGKILL\\): pids ${fake.pid}\\b`));
      const fakeExit = await fake.wait(5000);
      assert.equal(fakeExit.signal, 'SIGKILL', `the handed-over task was not killed: ${JSON.stringify(fakeExit)}`);
    });
  });

  // (7) As a tool runs `criu lazy-pages -d --pidfile F`: the launcher exits 0 once lazy-pages.socket listens, F
  // holds the daemon's pid, the restore is served by that daemon, which exits by itself when every page is in.
  test(`CRIU ${version}: (7) lazy-pages -d --pidfile: the launcher returns when ready, the daemon finishes`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-lp-daemon`, async (runDir, onCleanup) => {
      const progress = testProgress(t);
      const checkpoint = await checkpointWorkload({ criu, runDir, workload: { mib: 16, order: 'seq' }, progress, onCleanup, timeouts });
      const dstDir = path.join(runDir, 'dst');
      copyCheckpointImages(checkpoint.imagesDir, dstDir);
      const lazyd = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../../bin/lazyd.js');
      const launcher = spawnSync(process.execPath, [lazyd, 'lazy-pages', '--no-default-config', '-D', dstDir, '-d', '--pidfile', 'lp.pid', '-o', 'lazy-pages.log', '-v4'], { encoding: 'utf8', timeout: 20_000 });
      assert.equal(launcher.status, 0, `launcher: ${launcher.stderr}`);
      assert.ok(fs.existsSync(path.join(dstDir, 'lazy-pages.socket')), 'the socket listens when the launcher returns');
      const daemonPid = readPidfile(path.join(dstDir, 'lp.pid'));
      assert.ok(daemonPid && processAlive(daemonPid), `the daemon (pid ${daemonPid}) runs`);
      onCleanup(() => { try { process.kill(daemonPid!, 'SIGKILL'); } catch { /* gone */ } });
      const offsets = instanceDirs(checkpoint.workloadDir, 0).map((dir) => logOffset(dir));
      const restore = await runCriu(criu, 'restore', ['--lazy-pages', '-D', dstDir, '-d', '-v4', '-o', 'restore.log', '--pidfile', path.join(dstDir, 'restored.pid')], timeouts.restoreMs, { imagesDir: dstDir });
      assert.equal(restore.code, 0);
      const restored = readPidfile(path.join(dstDir, 'restored.pid'))!;
      onCleanup(() => killPidNamespace(restored));
      await pollFor('the daemon to exit after the last page', 30_000, () => (processAlive(daemonPid!) ? undefined : true));
      const log = fs.readFileSync(path.join(dstDir, 'lazy-pages.log'), 'utf8');
      assert.match(log, /Lazy pages done: \d+ pages installed/);
      assert.doesNotMatch(log, /Error|Warn/);
      await waitForPasses(checkpoint.workloadDir, 2, timeouts.passesMs, { fromOffset: offsets[0], pid: restored });
    });
  });

  // (8) lazyd gives up mid-transfer (SIGTERM; the same path as any failure of its own) while the pages come from
  // `criu dump --lazy-pages` itself. lazyd kills the restored tree (its memory can never be completed), so the
  // original must live on: CRIU resumes it only when its lazy client's connection ends with a reset, and kills it
  // after an EOF at a header boundary (docs/protocol.md §1.7). The relay passes a reset on as a reset, a FIN as a
  // FIN.
  test(`CRIU ${version}: (8) lazyd stopped mid-transfer from criu dump --lazy-pages: the dump resumes the original`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-lp-giveup`, async (runDir, onCleanup) => {
      const progress = testProgress(t);
      const checkpoint = await checkpointWorkload({
        criu,
        runDir,
        workload: { mib: 64, order: 'random' },
        progress,
        onCleanup,
        timeouts,
        lazyDump: { address: '127.0.0.1' },
      });
      const dump = checkpoint.dumpServer!;
      onCleanup(() => dump.kill());
      let dumpEnded = false;
      void dump.proc.exited.then(() => (dumpEnded = true));
      // 4 MiB/s: the 64 MiB take 16 s, so the transfer is surely in progress when lazyd stops.
      const relay = await startRelay(dump, { throttle: { direction: 'to-client', bytesPerSecond: 4 * 1024 * 1024 } });
      onCleanup(() => relay.close());
      const dstDir = path.join(runDir, 'dst');
      copyCheckpointImages(checkpoint.imagesDir, dstDir);
      const daemon = await startLazyPagesDaemon({ daemon: 'lazyd', criu, dstDir, server: relay, readyTimeoutMs: timeouts.readyMs });
      onCleanup(() => daemon.kill('SIGKILL'));
      const pidfile = path.join(dstDir, 'restored.pid');
      await runCriu(criu, 'restore', ['--lazy-pages', '-D', dstDir, '-d', '-v4', '-o', 'restore.log', '--pidfile', pidfile], timeouts.restoreMs, {
        imagesDir: dstDir,
      });
      const restoredPid = readPidfile(pidfile);
      assert.ok(restoredPid, 'criu restore wrote no pid');
      onCleanup(() => killPidNamespace(restoredPid).catch(() => undefined));
      // lazyd's requests stop reaching the dump: it answers what it got and then waits at a header boundary, while
      // lazyd has requests outstanding and nothing unread. Closing then with a FIN would read as a clean end.
      await relay.hold();
      await pollFor('the restored workload to wait for a page', 10_000, () => (waitsForPage(restoredPid) ? true : undefined), 20);
      assert.ok(!dumpEnded, 'the dump ended before lazyd stopped');

      daemon.kill('SIGTERM');
      const exit = await daemon.wait(FAILURE_EXIT_MS);
      assert.equal(exit.code, 1, `lazyd must exit 1: ${daemon.outputText}`);
      await pollFor('the restored workload to be gone', 5000, () => (processAlive(restoredPid) ? undefined : true), 20);
      const offset = logOffset(checkpoint.workloadDir);

      const dumpExit = await Promise.race([dump.proc.exited, sleep(30_000).then(() => undefined)]);
      assert.ok(dumpExit, 'criu dump did not end within 30 s of lazyd stopping');
      t.diagnostic(`criu dump exited ${JSON.stringify(dumpExit)}`);
      assert.notEqual(dumpExit.code, 0, 'criu dump must count the lazy transfer as failed');
      const dumpLog = fs.readFileSync(path.join(checkpoint.imagesDir, 'dump.log'), 'utf8');
      assert.match(dumpLog, /Lazy pages transfer FAILED/, 'criu dump must report the failed lazy transfer');
      // The original runs on, with the memory it had: two clean passes with its own sum, after the restored copy died.
      await waitForPasses(checkpoint.workloadDir, 2, timeouts.passesMs, { fromOffset: offset, expectSum: checkpoint.sums[0] });
    });
  });
}
