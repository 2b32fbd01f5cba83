// End-to-end: the background drain's own flags, with real `criu restore --lazy-pages` (CRIU 4.1.1 and 4.2.1) and
// `lazyd lazy-pages` on the local images.
//   (1) --no-drain (and no fault-around): only what the workload touches (a scattered quarter of its memory,
//       verified pass after pass) is installed; the daemon keeps serving with the rest of the pages missing, installs no page in the
//       background, and ends (exit 0, its summary naming the pages never fetched) when the restored tasks exit,
//       as criu's lazy-pages daemon ends with its tasks.
//   (2) --drain-rate 8 MiB/s, an idle workload: the drain of 32 MiB takes seconds instead of a fraction of one, and never requests
//       more than rate x elapsed + one largest request (the bucket's burst); the workload verifies.
// Prerequisites (root, both CRIU versions, fs.pipe-max-size) are checked by every test: a missing one FAILS it.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  checkpointWorkload,
  CRIU_VERSIONS,
  E2E_TIMEOUTS as timeouts,
  findCriu,
  lazyRestore,
  readLazydTotals,
  requireHost,
  startLazyRestore,
  testProgress,
  waitForPasses,
  withRunDir,
} from '../harness/index.js';

const TEST_TIMEOUT_MS = 90_000;
const PAGE = 4096;

/** The background page count and the engine's seconds out of lazyd's summary line. */
function drainFigures(line: string): { background: number; seconds: number } {
  const m = line.match(/background (\d+)\).* in ([\d.]+) s/);
  assert.ok(m, `no background count / seconds in: ${line}`);
  return { background: Number(m[1]), seconds: Number(m[2]) };
}

for (const version of CRIU_VERSIONS) {
  test(`CRIU ${version}: (1) --no-drain serves demand faults only and ends with the restored tasks`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-no-drain`, async (runDir, onCleanup) => {
      const checkpoint = await checkpointWorkload({
        criu,
        runDir,
        workload: { mib: 32, order: 'random', seed: 3, hotPct: 25, intervalMs: 20 },
        progress: testProgress(t),
        onCleanup,
        timeouts,
      });
      const restored = await startLazyRestore({ checkpoint, server: 'local', daemon: 'lazyd', daemonArgs: ['--no-drain', '--fault-around-bytes', '0'], progress: testProgress(t), onCleanup, timeouts });
      // Three clean passes over the hot quarter, every page of it read back right.
      const passes = await waitForPasses(checkpoint.workloadDir, 3, timeouts.passesMs, { fromOffset: restored.offsets[0], pid: restored.restoredPid });
      for (const pass of passes) {
        assert.equal(pass.bad, 0, `pass ${pass.pass}: ${pass.bad} bad pages`);
        assert.ok(pass.ok > 0 && pass.ok < checkpoint.dataPages, `pass ${pass.pass} read ${pass.ok} of ${checkpoint.dataPages} pages`);
      }
      // With the drain, 32 MiB from the local images are in within a fraction of a second and the daemon exits;
      // without it, the untouched three quarters stay missing and the daemon keeps serving.
      assert.ok(restored.lazyPages.running, `lazyd lazy-pages --no-drain exited while pages were missing:\n${restored.lazyPages.outputText}`);
      await restored.kill();
      const exit = await restored.lazyPages.wait(timeouts.allPagesMs);
      assert.equal(exit.code, 0, `lazyd lazy-pages exit once its tasks are gone:\n${restored.lazyPages.outputText}`);
      const totals = readLazydTotals(restored.lazyPages.outputText);
      assert.ok(totals, `no summary line:\n${restored.lazyPages.outputText}`);
      t.diagnostic(totals.line);
      const { background } = drainFigures(totals.line);
      assert.equal(background, 0, 'no page installed in the background');
      // Without fault-around, exactly the pages read were fetched: the hot quarter, none of the rest.
      assert.ok(totals.installed >= passes[0].ok && totals.installed < totals.total / 2, `installed ${totals.installed} of ${totals.total}: ${totals.line}`);
      assert.equal(totals.installed + totals.dropped, totals.total, `the pages never fetched are counted as dropped: ${totals.line}`);
    });
  });

  test(`CRIU ${version}: (2) --drain-rate caps the drain at rate x time + one request`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    const rate = 8 * 1024 * 1024;
    const burst = 1024 * 1024; // --drain-max-bytes: the bucket holds one largest request
    await withRunDir(`${version}-drain-rate`, async (runDir, onCleanup) => {
      const checkpoint = await checkpointWorkload({ criu, runDir, workload: { mib: 32, hotPct: 0, intervalMs: 20 }, progress: testProgress(t), onCleanup, timeouts });
      const result = await lazyRestore({ checkpoint, server: 'local', daemon: 'lazyd', daemonArgs: ['--drain-rate', String(rate)], progress: testProgress(t), onCleanup, timeouts });
      assert.equal(result.lazyPagesExit.code, 0);
      const totals = result.lazydTotals;
      assert.ok(totals, 'no summary line');
      t.diagnostic(totals.line);
      assert.equal(totals.installed + totals.dropped, totals.total, totals.line);
      for (const pass of result.passes[0]) assert.equal(pass.bad, 0, `pass ${pass.pass}: ${pass.bad} bad pages`);
      const { background, seconds } = drainFigures(totals.line);
      // An idle workload: (nearly) every page comes by the drain, so the cap has all the work to bound.
      assert.ok(background * PAGE >= 24 * 1024 * 1024, `only ${background} pages by the drain`);
      // The bucket's bound over the engine's whole life (it starts before RSTF, so the bound only gets looser):
      // the drain requested at most rate x elapsed + burst. Unlimited, 32 MiB of local images drain in ~0.1 s.
      assert.ok(
        background * PAGE <= rate * seconds + burst,
        `drained ${background * PAGE} bytes in ${seconds} s, more than ${rate} B/s x ${seconds} s + ${burst}`,
      );
    });
  });
}
