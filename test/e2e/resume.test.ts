// End-to-end: the lazyd link's feature resume (docs/protocol.md §7.6, README "The lazyd link"), with real CRIU
// 4.1.1 and 4.2.1. A self-verifying workload is dumped with `criu dump --page-server` into lazyd's staging page
// server (in this process); `lazyd lazy-pages` restores it from a copy of the images (lazyd-link.json included)
// through a TCP relay (test/harness/relay.ts) that breaks the link:
//   - cut: the relay resets whichever connection (the main one or the priority one) carries the byte at each of
//     several random offsets of the page stream; every cut connection is made again and its unanswered requests
//     asked again: every lazy page is installed, the workload verifies every page, and the daemon's log has one
//     line per outage and one per recovery;
//   - silent: the open connections stop forwarding (and stay open) mid-transfer: past --stall-timeout the daemon
//     takes the link for cut, reconnects, and the restore completes as above;
//   - down: the relay resets every connection and refuses new ones for longer than --reconnect-timeout: the
//     restore fails by the failure policy (--on-failure kill) with one line naming the timeout, and the workload
//     never reads a wrong byte.
// In the cut case the staged checkpoint is released after the first cut: the server keeps it reachable by its token
// (--link-resume-hold) for the sessions made again.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import {
  CRIU_VERSIONS,
  E2E_TIMEOUTS as timeouts,
  findCriu,
  lazyRestore,
  logOffset,
  pollFor,
  processAlive,
  readLog,
  requireHost,
  startLazyRestore,
  startRelay,
  testProgress,
  withRunDir,
  type Proc,
} from '../harness/index.js';
import { startStaging, stagedDump, waitFor } from '../harness/link-staging.js';

const TEST_TIMEOUT_MS = 300_000;

/** n distinct offsets in [lo, hi), at least gap apart, from a seeded generator (the seed is logged). */
function cutOffsets(seed: number, n: number, lo: number, hi: number, gap: number): number[] {
  let state = seed >>> 0 || 1;
  const next = () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 2 ** 32;
  };
  const out: number[] = [];
  while (out.length < n) {
    const at = Math.floor(lo + next() * (hi - lo));
    if (out.every((o) => Math.abs(o - at) >= gap)) out.push(at);
  }
  return out.sort((a, b) => a - b);
}

function linesWith(log: string, text: string): string[] {
  return log.split('\n').filter((l) => l.includes(text));
}

for (const version of CRIU_VERSIONS) {
  test(`CRIU ${version}: the lazyd link cut at random points, and silent: reconnected, every request asked again, the workload verifies`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-resume`, async (runDir, onCleanup) => {
      const stagingDir = path.join(runDir, 'src');
      fs.mkdirSync(stagingDir, { recursive: true });
      const lazyd = await startStaging(stagingDir);
      onCleanup(async () => {
        lazyd.service.stop(0);
        await lazyd.service.stopped;
      });
      const checkpoint = await stagedDump(criu, runDir, stagingDir, lazyd, onCleanup);
      await waitFor('the staged checkpoint', () => lazyd.service.stagedCheckpoints().length === 1);
      const verify = (name: string, restored: Awaited<ReturnType<typeof lazyRestore>>) => {
        assert.equal(restored.lazyPages.copied, restored.lazyPages.total, `${name}: every lazy page installed`);
        assert.equal(restored.passes[0][0].ok, checkpoint.dataPages, `${name}: the workload verified its pages`);
      };

      // (a) Silent: throttled so the transfer is surely under way, then the open connections go quiet.
      const quiet = await startRelay(lazyd, { throttle: { direction: 'to-client', bytesPerSecond: 4 << 20 } });
      onCleanup(() => quiet.close());
      const silent = await lazyRestore({
        checkpoint, server: quiet, daemon: 'lazyd', name: 'dst-silent', progress: testProgress(t), onCleanup, timeouts,
        daemonArgs: ['--reconnect-timeout', '30', '--stall-timeout', '1'],
        onDaemonReady: () => {
          void pollFor('1 MiB through the relay', timeouts.allPagesMs, () => (quiet.forwarded['to-client'] > 1 << 20 ? true : undefined)).then(() => quiet.silence());
        },
      });
      verify('silent', silent);
      const silentLog = fs.readFileSync(path.join(silent.dstDir, 'lazy-pages.log'), 'utf8');
      for (const line of [...linesWith(silentLog, 'was cut'), ...linesWith(silentLog, 'reconnected to the page server')]) t.diagnostic(line.slice(0, 400));
      assert.ok(linesWith(silentLog, 'sent nothing for').length >= 1, `the silence was taken for a cut:\n${silentLog}`);
      assert.ok(linesWith(silentLog, 'reconnected to the page server').length >= 1, `and the link made again:\n${silentLog}`);
      // (b) Cuts at random offsets of the page stream (the workload's 16 MiB and more go to the client), throttled so
      // that the release after the first cut surely comes before the last ones. Released mid-restore, the checkpoint
      // stays reachable by its token for the sessions made again.
      const seed = Date.now() & 0x7fffffff;
      const cuts = cutOffsets(seed, 5, 64 << 10, 12 << 20, 512 << 10);
      t.diagnostic(`cut seed ${seed}: at ${cuts.join(', ')} bytes to the client`);
      const cutting = await startRelay(lazyd, { cuts: { direction: 'to-client', at: cuts }, throttle: { direction: 'to-client', bytesPerSecond: 8 << 20 } });
      onCleanup(() => cutting.close());
      const id = lazyd.service.stagedCheckpoints()[0].id;
      let connectionsAtRelease = Infinity;
      void cutting.cut.then(async () => {
        await lazyd.service.releaseAndWait(id, 'released while its restore is cut (test)');
        connectionsAtRelease = cutting.connections();
      });
      const cut = await lazyRestore({
        checkpoint, server: cutting, daemon: 'lazyd', name: 'dst-cut', progress: testProgress(t), onCleanup, timeouts,
        daemonArgs: ['--reconnect-timeout', '30'],
      });
      verify('cut', cut);
      assert.ok(cutting.cutsMade() >= 1, `the relay cut the link (${cutting.cutsMade()} of ${cuts.length} cuts)`);
      const cutLog = fs.readFileSync(path.join(cut.dstDir, 'lazy-pages.log'), 'utf8');
      const outages = linesWith(cutLog, 'was cut');
      const dropped = linesWith(cutLog, 'priority connection to the page server failed');
      t.diagnostic(`cuts made ${cutting.cutsMade()}, connections ${cutting.connections()}, outages ${outages.length}, priority given up ${dropped.length}`);
      for (const line of [...outages, ...linesWith(cutLog, 'reconnected to the page server'), ...dropped]) t.diagnostic(line.slice(0, 400));
      assert.ok(outages.length + dropped.length >= 1, `the daemon saw the cuts:\n${cutLog}`);
      assert.ok(outages.length <= cutting.cutsMade(), `at most one outage per cut:\n${outages.join('\n')}`);
      assert.equal(linesWith(cutLog, 'reconnected to the page server').length, outages.length, `every outage ended:\n${cutLog}`);
      assert.ok(cutting.connections() > 2, `connections made again (${cutting.connections()})`);
      assert.equal(lazyd.service.stagedCheckpoints().length, 0, 'the checkpoint was released during the restore');
      assert.ok(cutting.connections() > connectionsAtRelease, `a connection made again after the release (${connectionsAtRelease} before, ${cutting.connections()} in all)`);

    });
  });

  test(`CRIU ${version}: the lazyd link down for longer than --reconnect-timeout: the restore fails by the policy, nothing wrong is installed`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-resume-down`, async (runDir, onCleanup) => {
      const stagingDir = path.join(runDir, 'src');
      fs.mkdirSync(stagingDir, { recursive: true });
      const lazyd = await startStaging(stagingDir);
      onCleanup(async () => {
        lazyd.service.stop(0);
        await lazyd.service.stopped;
      });
      const checkpoint = await stagedDump(criu, runDir, stagingDir, lazyd, onCleanup);
      await waitFor('the staged checkpoint', () => lazyd.service.stagedCheckpoints().length === 1);
      const relay = await startRelay(lazyd, { throttle: { direction: 'to-client', bytesPerSecond: 4 << 20 } });
      onCleanup(() => relay.close());
      const offset = logOffset(checkpoint.workloadDir);
      let daemon: Proc | undefined;
      let dstDir = '';
      let restoredPid: number | undefined;
      let restoreError: Error | undefined;
      try {
        const started = await startLazyRestore({
          checkpoint, server: relay, daemon: 'lazyd', name: 'dst-down', progress: testProgress(t), onCleanup, timeouts,
          daemonArgs: ['--reconnect-timeout', '2'],
          onDaemonReady: (proc, dir) => {
            daemon = proc;
            dstDir = dir;
            void pollFor('1 MiB through the relay', timeouts.allPagesMs, () => (relay.forwarded['to-client'] > 1 << 20 ? true : undefined)).then(() => relay.down());
          },
        });
        restoredPid = started.restoredPid;
      } catch (error) {
        // The daemon may fail before criu restore is done with the resumed tasks: killed under it, it fails too.
        restoreError = error as Error;
      }
      assert.ok(daemon, restoreError?.message);
      const exit = await daemon.exited;
      assert.notEqual(exit.code, 0, 'lazyd lazy-pages failed');
      if (restoreError) assert.match(restoreError.message, /criu [\d.]+ restore failed/, 'only as a consequence');
      const log = fs.readFileSync(path.join(dstDir, 'lazy-pages.log'), 'utf8');
      assert.ok(linesWith(log, 'was cut').length >= 1, `the cut was seen:\n${log}`);
      const failed = linesWith(log, 'lazy-pages failed');
      assert.equal(failed.length, 1, log);
      t.diagnostic(failed[0].slice(0, 600));
      assert.match(failed[0], /not back within --reconnect-timeout 2 s/);
      assert.match(failed[0], /killed the restored tasks/, 'the failure policy (--on-failure kill) applied');
      if (restoredPid !== undefined) {
        const pid = restoredPid;
        await pollFor('the restored workload killed', 20_000, () => (processAlive(pid) ? undefined : true));
      }
      const scan = readLog(checkpoint.workloadDir, offset);
      assert.deepEqual(scan.bad, [], 'the workload never read a wrong byte');
      assert.deepEqual(scan.errors, [], 'nor logged an error');
    });
  });
}
