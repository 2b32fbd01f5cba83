// End-to-end: real CRIU (4.1.1 and 4.2.1) restores a self-verifying workload lazily from a page server on
// loopback. Every scenario runs for both CRIU versions. The page server is a parameter (see SERVERS below):
//   'criu'          criu page-server --lazy-pages          (the reference: one session)
//   'lazyd'         lazyd --page-server (serve mode)        (many sessions)
//   'lazyd-dropin'  lazyd page-server --lazy-pages          (criu's command line)
// Prerequisites (root, CRIU under /opt/lazyd-criu from scripts/install-criu.sh, fs.pipe-max-size) are checked
// by every test: a missing one FAILS the test with the reason, it is never skipped.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import {
  assertCleanLog,
  checkpointWorkload,
  connectRogueClient,
  CRIU_VERSIONS,
  E2E_TIMEOUTS as timeouts,
  findCriu,
  formatMigration,
  HEADER_SIZE,
  lazyRestore,
  pollFor,
  readLog,
  requireHost,
  runLazyMigration,
  startPageServer,
  startRelay,
  testProgress,
  touchControl,
  wakeWorkload,
  withRunDir,
  type RestoreResult,
  type RogueClient,
  type ServerKind,
} from '../harness/index.js';

/** Which servers each scenario runs against. Scenarios (b) and (c) need a server that outlives one session. */
const SERVERS = {
  a: ['criu', 'lazyd'] as ServerKind[],
  b: ['lazyd'] as ServerKind[],
  c: ['lazyd'] as ServerKind[],
  d: ['criu', 'lazyd-dropin'] as ServerKind[],
  e: ['criu', 'lazyd'] as ServerKind[],
};

const TEST_TIMEOUT_MS = 90_000;

function describeRestore(r: RestoreResult): string {
  return (
    `resume ${r.restoreMs.toFixed(0)} ms, all pages in ${r.pagesInstalledMs.toFixed(0)} ms, lazy-pages exit ${r.allPagesMs.toFixed(0)} ms, ` +
    `lazy pages ${r.lazyPages.copied}/${r.lazyPages.total}, passes while lazy ${r.passesWhileLazy}, ` +
    `after ${r.passes.map((p) => p.length).join('+')}`
  );
}

function assertAllPagesInstalled(r: { lazyPages: { copied: number; total: number } }, dataPages: number): void {
  assert.ok(r.lazyPages.total >= dataPages, `lazy-pages expected ${r.lazyPages.total} pages, fewer than the ${dataPages} data pages`);
  assert.equal(r.lazyPages.copied, r.lazyPages.total, 'lazy-pages did not install every lazy page');
}

for (const version of CRIU_VERSIONS) {
  // (a) A 64 MiB workload (random page order, 2 verifier threads): dumped, served, lazily restored, verified.
  for (const server of SERVERS.a) {
    test(`(a) CRIU ${version}, server ${server}: 64 MiB workload, lazy restore, self-verified`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
      requireHost();
      const result = await runLazyMigration({
        criuVersion: version,
        server,
        workload: { mib: 64, order: 'random', seed: 42, threads: 2 },
        progress: testProgress(t),
        timeouts,
      });
      t.diagnostic(formatMigration(result));
      assertAllPagesInstalled(result, result.dataPages);
      assert.ok(result.passes[0].length >= 2);
      assert.equal(result.passes[0][0].ok, result.dataPages);
      assert.equal(result.serverExit.code, 0);
    });
  }

  // (b) Two restores, one after the other, from one running server (a workload with a forked child: 2 tasks).
  for (const server of SERVERS.b) {
    test(`(b) CRIU ${version}, server ${server}: two restores one after the other from one server`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
      requireHost();
      const criu = findCriu(version);
      await withRunDir(`${version}-${server}-two`, async (runDir, onCleanup) => {
        const progress = testProgress(t);
        const checkpoint = await checkpointWorkload({ criu, runDir, workload: { mib: 16, children: 1 }, progress, onCleanup, timeouts });
        const ps = await startPageServer({ kind: server, criuVersion: version, imagesDir: checkpoint.imagesDir });
        onCleanup(() => ps.kill());
        for (const name of ['dst-1', 'dst-2']) {
          const restored = await lazyRestore({ checkpoint, server: ps, name, progress, onCleanup, timeouts });
          t.diagnostic(`${name}: ${describeRestore(restored)}`);
          assertAllPagesInstalled(restored, checkpoint.dataPages);
          assert.equal(restored.passes.length, 2, 'parent and child both verified');
          assert.ok(ps.proc.running, `the server exited after ${name}: ${JSON.stringify(ps.proc.exitInfo)}`);
        }
        const exit = await ps.finish();
        assert.equal(exit.code, 0);
      });
    });
  }

  // (c) Garbage and stalling clients on the same server while a real restore runs alongside.
  for (const server of SERVERS.c) {
    test(`(c) CRIU ${version}, server ${server}: garbage and stalled clients beside a real restore`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
      requireHost();
      const criu = findCriu(version);
      const headerSize = HEADER_SIZE[version];
      await withRunDir(`${version}-${server}-rogue`, async (runDir, onCleanup) => {
        const progress = testProgress(t);
        const checkpoint = await checkpointWorkload({ criu, runDir, workload: { mib: 32, order: 'random' }, progress, onCleanup, timeouts });
        const ps = await startPageServer({ kind: server, criuVersion: version, imagesDir: checkpoint.imagesDir });
        onCleanup(() => ps.kill());
        const rogues: RogueClient[] = [];
        onCleanup(() => rogues.forEach((r) => r.destroy()));
        for (const kind of ['silent', 'half-header', 'random-bytes', 'unknown-command'] as const) {
          rogues.push(await connectRogueClient(ps.address, ps.port, kind, headerSize));
        }
        // More garbage while the restore is in flight.
        const restoring = lazyRestore({ checkpoint, server: ps, progress, onCleanup, timeouts });
        const late = (async () => {
          await new Promise((r) => setTimeout(r, 20));
          rogues.push(await connectRogueClient(ps.address, ps.port, 'random-bytes', headerSize));
          rogues.push(await connectRogueClient(ps.address, ps.port, 'half-header', headerSize));
        })();
        const [restored] = await Promise.all([restoring, late]);
        t.diagnostic(describeRestore(restored));
        assertAllPagesInstalled(restored, checkpoint.dataPages);
        assert.ok(ps.proc.running, `the server died: ${JSON.stringify(ps.proc.exitInfo)}\n${ps.proc.outputText}`);

        // A client that sent garbage must be disconnected; a stalled one may stay until its stall timeout.
        for (const rogue of rogues.filter((r) => r.kind === 'random-bytes' || r.kind === 'unknown-command')) {
          const closedAfter = await Promise.race([rogue.closedByServer, new Promise<undefined>((r) => setTimeout(r, 5000))]);
          assert.ok(closedAfter !== undefined, `the server kept a ${rogue.kind} client connected for more than 5 s`);
          assert.equal(rogue.received, 0, `the server sent ${rogue.received} bytes to a ${rogue.kind} client`);
        }
        t.diagnostic(rogues.map((r) => `${r.kind}: ${r.closed ? 'closed by server' : 'still connected'}, ${r.received} bytes received`).join('; '));
        const exit = await ps.finish(20_000);
        assert.equal(exit.code, 0, 'SIGTERM with stalled clients connected must still exit 0');
      });
    });
  }

  // (d) The drop-in command line, used the way zdtm uses `criu page-server --lazy-pages`: foreground with
  // --status-fd, relative -o and --pidfile (criu resolves them against -D), -v4, --no-default-config; it must
  // exit 0 on its own after the one session. criu itself is the reference for the expectations.
  for (const server of SERVERS.d) {
    test(`(d) CRIU ${version}, server ${server}: criu's page-server command line, one session then exit 0`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
      requireHost();
      let pidfileSeen: string | undefined;
      let serverPid = 0;
      const result = await runLazyMigration({
        criuVersion: version,
        server,
        workload: { mib: 16 },
        progress: testProgress(t),
        timeouts,
        serverOptions: { logFile: 'page-server.log', pidfile: 'ps.pid', verbosity: 4, extraArgs: ['--no-default-config'] },
        beforeRestore: (ps, checkpoint) => {
          serverPid = ps.pid;
          const pidfile = path.join(checkpoint.imagesDir, 'ps.pid');
          pidfileSeen = fs.existsSync(pidfile) ? fs.readFileSync(pidfile, 'utf8').trim() : undefined;
          assert.ok(fs.existsSync(ps.logFile), `no log at ${ps.logFile} (-o is relative to -D, as with criu)`);
        },
        afterFinish: (ps) => assertCleanLog(ps.logFile),
      });
      t.diagnostic(formatMigration(result));
      // criu writes --pidfile only when daemonizing (-d); a drop-in may write it, but then with its own pid.
      t.diagnostic(`pidfile in the foreground: ${pidfileSeen === undefined ? 'not written' : pidfileSeen}`);
      if (pidfileSeen !== undefined) assert.equal(pidfileSeen, String(serverPid));
      assert.equal(result.serverExit.code, 0, 'the page server must exit 0 after its one session');
      assertAllPagesInstalled(result, result.dataPages);
    });

    // (d2) The same with -d: the launcher exits 0 once the daemon listens, the daemon's pid is in the pidfile
    // (under -D), and the daemon goes away by itself after the session (zdtm waits for that pid to die).
    test(`(d2) CRIU ${version}, server ${server}: -d --pidfile, daemon exits after the session`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
      requireHost();
      let launcherPid = 0;
      let daemonPid = 0;
      const result = await runLazyMigration({
        criuVersion: version,
        server,
        workload: { mib: 16 },
        progress: testProgress(t),
        timeouts,
        serverOptions: { logFile: 'page-server.log', pidfile: 'ps.pid', daemon: true, verbosity: 4, extraArgs: ['--no-default-config'] },
        beforeRestore: (ps) => {
          launcherPid = ps.proc.pid;
          daemonPid = ps.pid;
          assert.equal(ps.proc.exitInfo?.code, 0, 'the launcher must exit 0 after daemonizing');
          assert.notEqual(daemonPid, launcherPid, 'the pidfile must hold the daemon, not the launcher');
        },
        afterFinish: (ps) => assertCleanLog(ps.logFile),
      });
      t.diagnostic(formatMigration(result));
      t.diagnostic(`launcher ${launcherPid}, daemon ${daemonPid}, gone ${result.serverExit.ms.toFixed(0)} ms after the restore`);
      assertAllPagesInstalled(result, result.dataPages);
    });
  }

  // (e) The workload forks, munmaps, mremaps and MADV_DONTNEEDs right after it resumes, while nearly all of its pages
  // are still at the server: CRIU's lazy-pages daemon then fetches pages again for the forked child (the server
  // must not consume what it served) and drops or moves ranges. Everything must still verify.
  for (const server of SERVERS.e) {
    test(`(e) CRIU ${version}, server ${server}: fork, munmap, mremap, dontneed during the lazy restore`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
      requireHost();
      const criu = findCriu(version);
      await withRunDir(`${version}-${server}-events`, async (runDir, onCleanup) => {
        const progress = testProgress(t);
        // Frozen in its pause between passes, with the control files already there: SIGUSR1 after the restore
        // makes it act on them before it touches its memory.
        const checkpoint = await checkpointWorkload({
          criu,
          runDir,
          workload: { mib: 64, order: 'random', intervalMs: 1000 },
          dumpAtPassBoundary: true,
          timeouts,
          beforeDump: (w) => {
            for (const name of ['do-fork', 'do-munmap', 'do-mremap', 'do-dontneed'] as const) touchControl(w.dir, name);
          },
          progress,
          onCleanup,
        });
        const ps = await startPageServer({ kind: server, criuVersion: version, imagesDir: checkpoint.imagesDir });
        onCleanup(() => ps.kill());
        // The daemon may fetch 64 MiB from loopback before the operations run: the pages pass at 16 MiB/s.
        const relay = await startRelay(ps, { throttle: { direction: 'to-client', bytesPerSecond: 16 * 1024 * 1024 } });
        onCleanup(() => relay.close());
        const restored = await lazyRestore({
          checkpoint,
          server: relay,
          progress,
          onCleanup,
          timeouts,
          checkSums: false, // the operations change what the passes add up to
          afterResume: (pid) => wakeWorkload(pid),
          keepRunning: true, // until its forked child has reported (below)
        });
        t.diagnostic(describeRestore(restored));
        // The forked child reports (fork-ok) once it has verified its memory, on its own time.
        await pollFor("the forked child's report", 20_000, () => {
          const { forkOk, bad } = readLog(checkpoint.workloadDir, restored.logOffsets[0]);
          return forkOk.length + bad.length > 0 ? true : undefined;
        });
        const log = readLog(checkpoint.workloadDir, restored.logOffsets[0]);
        t.diagnostic(`${log.ops.join('; ')}; lazy-pages tasks ${JSON.stringify(restored.lazyPages.tasks)}`);
        assert.equal(log.ops.filter((op) => / (munmap|mremap|dontneed) pages /.test(op)).length, 3, `operations missing: ${log.ops.join('; ')}`);
        assert.equal(log.forkOk.length, 1, 'the forked child did not report fork-ok');
        assert.ok(
          restored.lazyPages.tasks.some((task) => task.copied < task.total),
          'no lazy range was dropped: the operations ran after every page had arrived, so this tested nothing',
        );
        const q = checkpoint.dataPages / 4;
        assert.equal(restored.passes[0].at(-1)!.ok, checkpoint.dataPages - q + q, 'pages verified after munmap (-q) and the grown mremap (+q)');
        await restored.kill();
        const exit = await ps.finish();
        assert.equal(exit.code, 0);
      });
    });
  }
}
