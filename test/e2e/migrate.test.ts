// End-to-end: `lazyd migrate` into a `lazyd agent` between two hosts made of network namespaces (netns.ts:
// 10.77.0.1 source, 10.77.0.2 destination), with real CRIU 4.1.1 and 4.2.1 on both ends and the self-verifying
// workload, which checks its own memory wherever it runs (the restored copy on the destination, or the original
// resumed on the source after a rollback). Cases, per CRIU version unless said otherwise:
//   (1) a plain migration: exit 0, the restored workload verifies with the pre-migration sums, the original is gone
//   (2) a process tree (2 children with memory of their own)
//   (3) mutual TLS on the control and the page connections
//   (4) a destination that refuses (the source's certificate from a CA the agent does not trust): exit 1, nothing frozen
//   (5) a `criu restore` that fails on the destination (the destination host lacks the workload's files: the
//       agent's mount namespace has an empty tmpfs over them): exit 2, the original resumed and verified
//   (6) the link cut before the point of no return (while the agent's pre-restore hook holds the restore back):
//       exit 2, the original resumed and verified, the agent started nothing
//   (7) the link cut after the point of no return (the restore succeeded, pages still arriving over a slow link):
//       the agent kills its copy, exit 2, the original resumed and verified
//   (8) two migrations into one agent at once, both verified
//   (9) --pre-copy on this kernel (no soft-dirty tracking): one line says so, the migration runs post-copy alone
//   (10) CRIU 4.2.1 on the source, 4.1.1 on the destination: refused with one line before anything is frozen
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import { CRIU_VERSIONS, findCriu, processAlive, requireHost, withRunDir, type CriuVersion } from '../harness/index.js';
import { createTwoHosts, type TwoHosts } from '../harness/netns.js';
import {
  cutLink,
  healLink,
  makeMigrationPki,
  migrationTlsArgs,
  runMigrate,
  startAgent,
  startSourceWorkload,
  stopSourceWorkload,
  verifyRunning,
  type Agent,
  type MigrationPki,
  type SourceWorkload,
} from '../harness/agent.js';
import { EXIT, type MigrationReport } from '../../src/migrate/report.js';

const TEST_TIMEOUT_MS = 120_000;
let hosts: TwoHosts;

before(() => {
  requireHost();
  hosts = createTwoHosts({ id: `m${process.pid % 100000}` });
});
after(() => hosts?.destroy());

function describe(t: TestContext, report: MigrationReport): void {
  t.diagnostic(
    `${report.message} | frozen ${report.frozenMs?.toFixed(0)} ms, downtime ${report.downtimeMs?.toFixed(0)} ms, ` +
      `all pages ${report.allPagesMs?.toFixed(0)} ms, ${report.pagesServed}/${report.lazyPages} pages, ${report.bytes.total} bytes; ` +
      report.stages.map((s) => `${s.name} ${s.ms.toFixed(0)}`).join(', '),
  );
}

interface Scene {
  runDir: string;
  source: SourceWorkload;
  agent: Agent;
}

/** A workload on the source and an agent on the destination, cleaned up after `body`. */
async function scene(
  t: TestContext,
  tag: string,
  options: { srcCriu: CriuVersion; dstCriu?: CriuVersion; mib?: number; children?: number; agentArgs?: string[]; hideWorkload?: boolean },
  body: (scene: Scene, onCleanup: (fn: () => unknown) => void) => Promise<void>,
): Promise<void> {
  await withRunDir(`migrate-${tag}`, async (runDir, onCleanup) => {
    const dstCriu = findCriu(options.dstCriu ?? options.srcCriu);
    const workloadDir = path.join(runDir, 'w');
    fs.mkdirSync(workloadDir, { recursive: true });
    const agent = await startAgent({
      netns: hosts.destination,
      criu: dstCriu.path,
      stateDir: path.join(runDir, 'agent'),
      extraArgs: options.agentArgs,
      hideDir: options.hideWorkload ? workloadDir : undefined,
    });
    onCleanup(() => agent.stop());
    const source = await startSourceWorkload(workloadDir, { mib: options.mib ?? 16, children: options.children ?? 0 }, hosts.source);
    onCleanup(() => stopSourceWorkload(source));
    t.diagnostic(`workload pid ${source.workload.pid} (${options.mib ?? 16} MiB x${(options.children ?? 0) + 1}), agent on ${agent.address}:${agent.port} (CRIU ${dstCriu.version})`);
    await body({ runDir, source, agent }, onCleanup);
  });
}

/** The restored tree on the destination: verified, then killed (it is the init of its own pid namespace). */
async function verifyMigrated(t: TestContext, s: Scene, report: MigrationReport, code: number | null): Promise<void> {
  describe(t, report);
  assert.equal(code, EXIT.migrated, report.message);
  assert.equal(report.outcome, 'migrated');
  assert.ok(report.restoredPid && report.restoredPid !== s.source.workload.pid, 'a new pid on the destination');
  assert.equal(processAlive(s.source.workload.pid), false, 'the original is gone');
  const passes = await verifyRunning(s.source, report.restoredPid!);
  assert.ok(passes.every((p) => p.length >= 2));
  assert.ok(report.downtimeMs! > 0 && report.frozenMs! >= report.downtimeMs!, 'frozen covers the downtime');
  assert.ok(report.allPagesMs! >= report.downtimeMs!, 'the last page arrives after the restore');
  assert.ok(report.lazyPages! > 0 && report.pagesServed! >= report.lazyPages!, `every lazy page crossed (${report.pagesServed}/${report.lazyPages})`);
  assert.ok(report.bytes.pages >= report.lazyPages! * 4096);
  process.kill(report.restoredPid!, 'SIGKILL');
}

/** After a rollback: the original runs again on the source and verifies its memory. */
async function verifyRolledBack(t: TestContext, s: Scene, report: MigrationReport, code: number | null, cause: RegExp): Promise<void> {
  describe(t, report);
  assert.equal(code, EXIT.rolledBack, report.message);
  assert.equal(report.outcome, 'rolled-back');
  assert.match(report.message, cause);
  assert.match(report.message, /rolled back: criu dump resumed pid/);
  await verifyRunning(s.source, s.source.workload.pid);
}

for (const version of CRIU_VERSIONS) {
  test(`(1) CRIU ${version}: a plain migration`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    await scene(t, `plain-${version}`, { srcCriu: version, mib: 32 }, async (s) => {
      const run = runMigrate({ netns: hosts.source, pid: s.source.workload.pid, agent: s.agent, criu: findCriu(version).path, dumpDir: path.join(s.runDir, 'dump') });
      const { code, report } = await run.finished;
      await verifyMigrated(t, s, report, code);
      assert.deepEqual(report.criu, { source: version, destination: version });
      for (const phase of ['check', 'dump', 'copy', 'restore', 'pages', 'finish']) {
        assert.ok(run.events.some((e) => e.progress === phase), `a JSON progress line for ${phase}`);
      }
    });
  });
}
