// End-to-end: `lazyd lazy-pages` started BEFORE `criu dump` (CRIU 4.1.1 and 4.2.1), on an empty destination dir:
// it is ready without reading any image, reads them once they are written (or, if the restore comes first, when
// `criu restore --lazy-pages` hands over its tasks), and uses them at hand-over.
//   (1) pre-started on an empty dir, then the dump, the copy, the restore: the workload verifies its memory
//   (2) pre-started on a dir that never gets valid images (a truncated pagemap): at hand-over lazyd exits 1 with
//       one clear line, and criu restore fails. A plain dump (not --lazy-pages): no original depends on it.
// Prerequisites (root, both CRIU versions, fs.pipe-max-size) are checked by every test: a missing one FAILS it.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import {
  checkpointWorkload,
  copyCheckpointImages,
  CRIU_VERSIONS,
  E2E_TIMEOUTS as timeouts,
  findCriu,
  killPidNamespace,
  lazyRestore,
  readPidfile,
  requireHost,
  runCriu,
  startPreStartedDaemon,
  testProgress,
  withRunDir,
} from '../harness/index.js';

const TEST_TIMEOUT_MS = 90_000;

for (const version of CRIU_VERSIONS) {
  test(`CRIU ${version}: lazyd lazy-pages started on an empty dir before the dump serves the restore`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-prestart`, async (runDir, onCleanup) => {
      const preStarted = await startPreStartedDaemon({ runDir, server: 'local', readyTimeoutMs: timeouts.readyMs, onCleanup });
      assert.deepEqual(fs.readdirSync(preStarted.dstDir).filter((name) => name.endsWith('.img')), [], 'ready with no image at all');
      t.diagnostic(`lazyd lazy-pages ready in ${preStarted.startMs.toFixed(0)} ms on an empty dir`);
      const checkpoint = await checkpointWorkload({ criu, runDir, workload: { mib: 16 }, progress: testProgress(t), onCleanup, timeouts });
      const result = await lazyRestore({ checkpoint, server: 'local', preStarted, progress: testProgress(t), onCleanup, timeouts });
      assert.equal(result.daemon, 'lazyd');
      assert.equal(result.lazyPagesExit.code, 0);
      assert.ok(result.lazydTotals, `lazyd printed no summary: ${preStarted.proc.outputText}`);
      assert.equal(result.lazydTotals.installed, result.lazydTotals.total, result.lazydTotals.line);
      assert.ok(result.lazydTotals.total >= checkpoint.lazyPages, `${result.lazydTotals.total} lazy pages served, the dump has ${checkpoint.lazyPages}`);
      assert.ok(result.passes[0].length >= 2, 'the restored workload verified its memory');
      const log = fs.readFileSync(path.join(preStarted.dstDir, 'lazy-pages.log'), 'utf8');
      assert.ok(log.indexOf('Restore connected') < log.indexOf(') Loaded '), `the images were used at hand-over:\n${log}`);
    });
  });

  test(`CRIU ${version}: a pre-started lazyd lazy-pages whose dir gets a truncated pagemap fails at hand-over with one line; criu restore fails`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-prestart-bad`, async (runDir, onCleanup) => {
      const preStarted = await startPreStartedDaemon({ runDir, server: 'local', readyTimeoutMs: timeouts.readyMs, onCleanup });
      const checkpoint = await checkpointWorkload({ criu, runDir, workload: { mib: 4 }, progress: testProgress(t), onCleanup, timeouts });
      const dstDir = preStarted.dstDir;
      copyCheckpointImages(checkpoint.imagesDir, dstDir);
      const pagemap = fs.readdirSync(dstDir).find((name) => /^pagemap-\d+\.img$/.test(name));
      assert.ok(pagemap, 'the dump wrote a pagemap');
      const size = fs.statSync(path.join(dstDir, pagemap)).size;
      fs.truncateSync(path.join(dstDir, pagemap), size - 3);
      const pidfile = path.join(dstDir, 'restored.pid');
      const restore = await runCriu(criu, 'restore', ['--lazy-pages', '-D', dstDir, '-d', '-v4', '-o', 'restore.log', '--pidfile', pidfile], timeouts.restoreMs, {
        imagesDir: dstDir,
      }).then(
        () => undefined,
        (error: Error) => error,
      );
      const exit = await preStarted.proc.wait(timeouts.restoreMs);
      assert.equal(exit.code, 1, `lazyd lazy-pages: ${preStarted.proc.outputText}`);
      const lines = preStarted.proc.outputText.split('\n').filter(Boolean);
      assert.equal(lines.length, 1, preStarted.proc.outputText);
      assert.match(lines[0], new RegExp(`^lazyd: .*${pagemap.replace('.', '\\.')}`));
      t.diagnostic(lines[0]);
      const restored = readPidfile(pidfile);
      if (restored) await killPidNamespace(restored).catch(() => undefined);
      assert.ok(restore instanceof Error, 'criu restore failed');
      t.diagnostic(restore.message.split('\n')[0]);
    });
  });
}
