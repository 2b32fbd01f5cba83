// A lazyd staging page server in this process, and a workload dumped into it with `criu dump --page-server`:
// the checkpoint staged in memory, its images (and lazyd-link.json, docs/protocol.md §7) in the staging dir.
// Shared by the lazyd link's end-to-end tests (link.test.ts, resume.test.ts).
import fs from 'node:fs';
import path from 'node:path';
import { PageServerService } from '../../src/page-server/service.js';
import { LINK_FILE_NAME } from '../../src/link/capability-file.js';
import { memoryLogger } from './memory-logger.js';
import {
  buildWorkload,
  checkpointOf,
  dumpPageCounts,
  E2E_TIMEOUTS as timeouts,
  instanceDirs,
  killWorkload,
  lastPassSum,
  nowNs,
  runCriu,
  startWorkload,
  waitForAllPasses,
  type Criu,
} from './index.js';

export async function startStaging(stagingDir: string, requireLinkToken = false, limits: { linkResumeHoldMs?: number; stagingRestores?: number } = {}) {
  const { logger, lines } = memoryLogger();
  const service = await PageServerService.start({
    imagesDir: stagingDir,
    address: '127.0.0.1',
    port: 0,
    logger,
    requireLinkToken,
    ...(limits.linkResumeHoldMs !== undefined ? { linkResumeHoldMs: limits.linkResumeHoldMs } : {}),
    staging: { dir: stagingDir, ...(limits.stagingRestores !== undefined ? { restores: limits.stagingRestores } : {}) },
  });
  return { service, lines, address: '127.0.0.1', port: service.port };
}

/** Waits for fn(), with a deadline that only a failure reaches. */
export async function waitFor(what: string, fn: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A workload dumped with `criu dump --page-server` into lazyd; retried (fresh workload) when criu made no page lazy. */
export async function stagedDump(criu: Criu, runDir: string, stagingDir: string, lazyd: Awaited<ReturnType<typeof startStaging>>, onCleanup: (fn: () => unknown) => void) {
  const binary = await buildWorkload();
  for (let attempt = 1; ; attempt++) {
    const workloadDir = path.join(runDir, `w${attempt}`);
    const mib = 16;
    const workload = await startWorkload(binary, workloadDir, { mib }, timeouts.readyMs);
    onCleanup(() => killWorkload(workload));
    await waitForAllPasses(workloadDir, 0, 1, timeouts.passesMs, { pid: workload.pid });
    const sums = instanceDirs(workloadDir, 0).map((dir) => lastPassSum(dir));
    const dumpStartNs = nowNs();
    const args = ['-t', String(workload.pid), '-D', stagingDir, '-v4', '-o', 'dump.log', '--page-server', '--address', '127.0.0.1', '--port', String(lazyd.port)];
    const dump = await runCriu(criu, 'dump', args, timeouts.dumpMs, { imagesDir: stagingDir });
    await workload.unshare.wait(10_000);
    const checkpoint = checkpointOf({ criu, runDir, workloadDir, imagesDir: stagingDir, workload: { mib }, sums, dumpStartNs, dumpMs: dump.ms });
    const counts = await dumpPageCounts(stagingDir);
    if (counts.length > 0 && counts.every((c) => c.lazyPages > 0)) return checkpoint;
    if (attempt >= 3) throw new Error('criu dump into lazyd: a pagemap without a lazy page, 3 times in a row');
    await waitFor('the staged checkpoint', () => lazyd.service.stagedCheckpoints().length === 1);
    await lazyd.service.releaseAndWait(lazyd.service.stagedCheckpoints()[0].id, 'no lazy page in the dump (criu is_stack() quirk)');
    for (const name of fs.readdirSync(stagingDir).filter((f) => /^(pagemap|pages)-/.test(f) || f === LINK_FILE_NAME)) fs.rmSync(path.join(stagingDir, name));
  }
}

