// End-to-end: `lazyd migrate` into a `lazyd agent` between two hosts made of network namespaces (netns.ts:
// 10.77.0.1 source, 10.77.0.2 destination), with real CRIU 4.1.1 and 4.2.1 on both ends and the self-verifying
// workload, which checks its own memory wherever it runs (the restored copy on the destination, or the original
// resumed on the source after a rollback). Cases, per CRIU version unless said otherwise:
//   (1) a plain migration: exit 0, the restored workload verifies with the pre-migration sums, the original is gone;
//       the agent's lazy-pages engine, started on hello, was ready before the restore; the relay's lazyd-link.json
//       came with the images and the agent's lazy-pages used the lazyd link
//   (2) a process tree (2 children with memory of their own)
//   (3) mutual TLS on the control and the page connections
//   (4) a destination that refuses (the source's certificate from a CA the agent does not trust): exit 1, nothing frozen
//   (5) a `criu restore` that fails on the destination (the destination host lacks the workload's files: the
//       agent's mount namespace has an empty tmpfs over them): exit 2, the original resumed and verified
//   (6) the link cut before the point of no return (while the agent's pre-restore hook holds the restore back, and
//       the source's relay holds every page with the dump's CLOSE held): exit 2, the original resumed and verified,
//       the agent started nothing
//   (7) the link cut after the point of no return (the restore succeeded, the dump had its CLOSE, pages still
//       arriving over a slow link): lazy-pages' failure policy on the destination (the copy killed), exit 3, one
//       line saying the original is gone
//   (11) the original is gone only after the restore succeeded: while the hook holds the restore back, every page
//       is held on the source and the original is still there, frozen; then the migration completes
//   (8) two migrations into one agent at once, both verified
//   (9) --pre-copy on this kernel (no soft-dirty tracking): one line says so, the migration runs post-copy alone
//   (10) CRIU 4.2.1 on the source, 4.1.1 on the destination: refused with one line before anything is frozen
// The source serves the pages from relay staging in lazyd migrate's process (src/migrate/relay-source.ts).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import { CRIU_VERSIONS, findCriu, pollFor, processAlive, requireHost, withRunDir, type CriuVersion } from '../harness/index.js';
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
  // The restored tree is killed whatever the checks find: a failed assertion must not leave it running into the
  // tests after this one.
  try {
    assert.equal(code, EXIT.migrated, report.message);
    assert.equal(report.outcome, 'migrated');
    assert.ok(report.restoredPid && report.restoredPid !== s.source.workload.pid, 'a new pid on the destination');
    assert.equal(processAlive(s.source.workload.pid), false, 'the original is gone');
    const passes = await verifyRunning(s.source, report.restoredPid!);
    assert.ok(passes.every((p) => p.length >= 2));
    assert.ok(report.downtimeMs! > 0 && report.frozenMs! >= report.downtimeMs!, 'frozen covers the downtime');
    assert.ok(report.allPagesMs! >= report.downtimeMs!, 'the last page arrives after the restore');
    if (report.lazyPages === 0) {
      // CRIU's is_stack() quirk (test/harness/migration.ts, checkpointWorkload): about once in 256 dumps per thread a
      // page-aligned stack pointer makes criu dump --lazy-pages mark no page lazy. The memory then travels in the
      // images: a valid migration, which lazyd must carry too (the restored workload verified it above).
      const mib = s.source.workload.options.mib;
      assert.ok(report.bytes.images >= mib * 1048576, `no lazy page: the ${mib} MiB must have crossed in the images (${report.bytes.images} bytes)`);
      t.diagnostic(`criu dump marked no page lazy (its is_stack() quirk): the ${mib} MiB crossed in the images`);
    } else {
      assert.ok(report.pagesServed! >= report.lazyPages!, `every lazy page crossed (${report.pagesServed}/${report.lazyPages})`);
      assert.ok(report.bytes.pages >= report.lazyPages! * 4096);
    }
  } finally {
    if (report.restoredPid && report.restoredPid !== s.source.workload.pid && processAlive(report.restoredPid)) process.kill(report.restoredPid, 'SIGKILL');
  }
}

/** lazyd migrate's note that its relay holds every lazy page (the dump's CLOSE held). */
function isHeldNote(event: Record<string, unknown>): boolean {
  return typeof event.note === 'string' && /lazy pages .* held here/.test(event.note);
}

/** lazyd migrate's note that the dump had its CLOSE: the original is gone. */
function isClosedNote(event: Record<string, unknown>): boolean {
  return typeof event.note === 'string' && /criu dump had its CLOSE/.test(event.note);
}

/** The state letter of /proc/PID/stat (t: stopped by a tracer, as criu dump holds the tasks). */
function processState(pid: number): string {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
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
    await scene(t, `plain-${version}`, { srcCriu: version, mib: 32, agentArgs: ['--keep'] }, async (s) => {
      const run = runMigrate({ netns: hosts.source, pid: s.source.workload.pid, agent: s.agent, criu: findCriu(version).path, dumpDir: path.join(s.runDir, 'dump') });
      const { code, report } = await run.finished;
      await verifyMigrated(t, s, report, code);
      assert.deepEqual(report.criu, { source: version, destination: version });
      // The relay's lazyd-link.json came with the images (kept: --keep), and the agent's lazy-pages fetched every
      // page over the lazyd link (its session opened with HELLO: bound to the relayed checkpoint, checksummed).
      const agentLog = fs.readFileSync(s.agent.logFile, 'utf8');
      assert.match(agentLog, /restored as pid \d+ in \d+ ms; the pages follow over the lazyd link/);
      const migrationDir = /, into (\/[^"\s]+)/.exec(agentLog)?.[1];
      assert.ok(migrationDir, 'the agent names the migration directory');
      assert.equal(fs.statSync(path.join(migrationDir, 'lazyd-link.json')).mode & 0o777, 0o600, 'lazyd-link.json arrived, mode 0600');
      assert.equal(report.pageLink, 'lazyd', "the destination's page connection opened with HELLO");
      // The agent's lazy-pages engine was started on hello and ready before the restore needed it.
      const ready = agentLog.search(/lazy-pages ready in \d+ ms, started on hello/);
      assert.ok(ready >= 0, 'the agent logs its pre-started lazy-pages as ready');
      assert.ok(ready < agentLog.search(/restored as pid/), 'ready before the restore');
      for (const phase of ['check', 'dump', 'copy', 'restore', 'pages', 'finish']) {
        assert.ok(run.events.some((e) => e.progress === phase), `a JSON progress line for ${phase}`);
      }
    });
  });
}

let pki: MigrationPki | undefined;
async function testPki(): Promise<MigrationPki> {
  pki ??= await makeMigrationPki(fs.mkdtempSync('/tmp/lazyd-e2e-migrate-pki-'));
  return pki;
}
after(() => {
  if (pki) fs.rmSync(path.dirname(pki.ca), { recursive: true, force: true });
});

const HOOK_STARTED = 'hook-started';
/** A pre-restore hook that says it runs, then waits for a file nobody creates: the restore stays held back. */
const HOLDING_HOOK = `touch ${HOOK_STARTED}; while [ ! -e go ]; do sleep 0.05; done`;

for (const version of CRIU_VERSIONS) {
  const criu = () => findCriu(version).path;

  test(`(2) CRIU ${version}: a process tree`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    await scene(t, `tree-${version}`, { srcCriu: version, mib: 8, children: 2 }, async (s) => {
      const run = runMigrate({ netns: hosts.source, pid: s.source.workload.pid, agent: s.agent, criu: criu(), dumpDir: path.join(s.runDir, 'dump') });
      const { code, report } = await run.finished;
      await verifyMigrated(t, s, report, code);
    });
  });

  test(`(3) CRIU ${version}: mutual TLS on the control and page connections`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const p = await testPki();
    await scene(t, `tls-${version}`, { srcCriu: version, mib: 16, agentArgs: migrationTlsArgs(p, p.destination) }, async (s) => {
      const run = runMigrate({
        netns: hosts.source,
        pid: s.source.workload.pid,
        agent: s.agent,
        criu: criu(),
        dumpDir: path.join(s.runDir, 'dump'),
        extraArgs: migrationTlsArgs(p, p.source),
      });
      const { code, report } = await run.finished;
      await verifyMigrated(t, s, report, code);
    });
  });

  test(`(5) CRIU ${version}: criu restore fails on the destination; the original resumes`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    await scene(t, `restore-fails-${version}`, { srcCriu: version, mib: 16, hideWorkload: true }, async (s) => {
      const run = runMigrate({ netns: hosts.source, pid: s.source.workload.pid, agent: s.agent, criu: criu(), dumpDir: path.join(s.runDir, 'dump') });
      const { code, report } = await run.finished;
      await verifyRolledBack(t, s, report, code, /the destination failed at restore: criu restore failed/);
      assert.equal(report.restoredPid, undefined);
    });
  });

  test(`(6) CRIU ${version}: the link cut before the point of no return`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    await scene(t, `cut-before-${version}`, { srcCriu: version, mib: 16, agentArgs: ['--pre-restore-hook', HOLDING_HOOK] }, async (s, onCleanup) => {
      const run = runMigrate({
        netns: hosts.source,
        pid: s.source.workload.pid,
        agent: s.agent,
        criu: criu(),
        dumpDir: path.join(s.runDir, 'dump'),
        extraArgs: ['--link-timeout', '1'],
      });
      // The images are on the destination, the hook holds the restore, the relay holds every page: cut the link now.
      const started = await pollFor('the pre-restore hook to run', 30_000, () =>
        fs.readdirSync(s.agent.stateDir).find((id) => fs.existsSync(path.join(s.agent.stateDir, id, HOOK_STARTED))),
      );
      await run.waitForEvent('every page held', isHeldNote);
      assert.equal(processAlive(s.source.workload.pid), true, 'the original is there (frozen) when the link is cut');
      cutLink(hosts);
      onCleanup(() => healLink(hosts));
      const { code, report } = await run.finished;
      await verifyRolledBack(t, s, report, code, /link timeout/);
      const agentLog = fs.readFileSync(s.agent.logFile, 'utf8');
      assert.match(agentLog, new RegExp(`migration ${started}: .*link timeout.*killed the pre-restore hook`));
      assert.equal(fs.existsSync(path.join(s.agent.stateDir, started, 'restore.log')), false, 'no restore was started');
    });
  });

  test(`(7) CRIU ${version}: the link cut after the point of no return`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    await scene(t, `cut-after-${version}`, { srcCriu: version, mib: 128 }, async (s, onCleanup) => {
      // A slow link, so that the pages are still arriving when the cut comes.
      await hosts.setRtt(100);
      onCleanup(() => hosts.setRtt(0));
      const run = runMigrate({
        netns: hosts.source,
        pid: s.source.workload.pid,
        agent: s.agent,
        criu: criu(),
        dumpDir: path.join(s.runDir, 'dump'),
        extraArgs: ['--link-timeout', '1'],
      });
      // Past the point of no return: the dump had its CLOSE (the original is gone), the pages still cross.
      await run.waitForEvent('the dump closed', isClosedNote);
      const pages = await run.waitForEvent('pages phase', (e) => e.progress === 'pages');
      cutLink(hosts);
      onCleanup(() => healLink(hosts));
      t.diagnostic(`cut at ${JSON.stringify(pages)}`);
      assert.ok((pages.present as number) < (pages.total as number), 'the cut came while pages were still missing');
      const { code, report } = await run.finished;
      describe(t, report);
      assert.ok(report.restoredPid, 'the restore had succeeded');
      assert.equal(code, EXIT.lost, report.message);
      assert.equal(report.outcome, 'lost');
      assert.match(report.message, /link timeout.* after the dump had its CLOSE; the original is gone — check pid \d+ on 10\.77\.0\.2/);
      assert.equal(processAlive(s.source.workload.pid), false, 'the original is gone');
      // The destination applies lazy-pages' failure policy (--on-failure kill): no copy with missing pages runs on.
      await pollFor(`the restored copy ${report.restoredPid} to be killed`, 20_000, () => (processAlive(report.restoredPid!) ? undefined : true));
      assert.match(fs.readFileSync(s.agent.logFile, 'utf8'), /link timeout.*stopped lazy-pages \(it kills the restored tasks\)/);
    });
  });

  test(`(11) CRIU ${version}: the original is gone only after the restore succeeded`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    await scene(t, `frozen-until-restore-${version}`, { srcCriu: version, mib: 16, agentArgs: ['--pre-restore-hook', HOLDING_HOOK] }, async (s) => {
      const run = runMigrate({ netns: hosts.source, pid: s.source.workload.pid, agent: s.agent, criu: criu(), dumpDir: path.join(s.runDir, 'dump') });
      const id = await pollFor('the pre-restore hook to run', 30_000, () =>
        fs.readdirSync(s.agent.stateDir).find((name) => fs.existsSync(path.join(s.agent.stateDir, name, HOOK_STARTED))),
      );
      // Every page is on the source's relay and the images on the destination; the restore has not run.
      await run.waitForEvent('every page held', isHeldNote);
      assert.equal(processAlive(s.source.workload.pid), true, 'the original is still there');
      assert.match(processState(s.source.workload.pid), /^[tT]$/, 'frozen (stopped by criu dump)');
      assert.equal(run.events.some(isClosedNote), false, 'the dump has no CLOSE yet');
      fs.writeFileSync(path.join(s.agent.stateDir, id, 'go'), '');
      const { code, report } = await run.finished;
      await verifyMigrated(t, s, report, code);
      const restoreLine = run.events.findIndex((e) => e.progress === 'restore');
      const closed = run.events.findIndex(isClosedNote);
      assert.ok(closed > restoreLine && restoreLine >= 0, 'the dump had its CLOSE only after the restore');
      assert.ok(report.frozenMs! >= report.downtimeMs!, 'frozen until the restore had succeeded');
    });
  });

  test(`(8) CRIU ${version}: two migrations into one agent at once`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    await scene(t, `two-${version}`, { srcCriu: version, mib: 16 }, async (s, onCleanup) => {
      const second = await startSourceWorkload(path.join(s.runDir, 'w2'), { mib: 16, seed: 7 }, hosts.source);
      onCleanup(() => stopSourceWorkload(second));
      const runs = [s.source, second].map((w, i) =>
        runMigrate({ netns: hosts.source, pid: w.workload.pid, agent: s.agent, criu: criu(), dumpDir: path.join(s.runDir, `dump${i}`) }),
      );
      const results = await Promise.all(runs.map((r) => r.finished));
      await verifyMigrated(t, s, results[0].report, results[0].code);
      await verifyMigrated(t, { ...s, source: second }, results[1].report, results[1].code);
      assert.notEqual(results[0].report.restoredPid, results[1].report.restoredPid);
    });
  });
}

test('(4) a destination that refuses: the source certificate is from a CA the agent does not trust', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const p = await testPki();
  await scene(t, 'wrong-ca', { srcCriu: '4.2.1', mib: 16, agentArgs: migrationTlsArgs(p, p.destination) }, async (s) => {
    const run = runMigrate({
      netns: hosts.source,
      pid: s.source.workload.pid,
      agent: s.agent,
      criu: findCriu('4.2.1').path,
      dumpDir: path.join(s.runDir, 'dump'),
      extraArgs: ['--tls', '--tls-cacert', p.ca, '--tls-cert', p.untrusted.cert, '--tls-key', p.untrusted.key],
    });
    const { code, report } = await run.finished;
    describe(t, report);
    assert.equal(code, EXIT.untouched, report.message);
    assert.match(report.message, /nothing was frozen/);
    assert.match(report.message, /certificate|unknown ca|alert/i);
    assert.equal(fs.existsSync(path.join(s.runDir, 'dump')), false, 'no dump was started');
    await verifyRunning(s.source, s.source.workload.pid);
    assert.match(fs.readFileSync(s.agent.logFile, 'utf8'), /refused a TLS connection from/);
  });
});

test('(9) --pre-copy where the kernel tracks no dirty memory: said in one line, post-copy alone', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  await scene(t, 'pre-copy', { srcCriu: '4.2.1', mib: 16 }, async (s) => {
    const run = runMigrate({
      netns: hosts.source,
      pid: s.source.workload.pid,
      agent: s.agent,
      criu: findCriu('4.2.1').path,
      dumpDir: path.join(s.runDir, 'dump'),
      extraArgs: ['--pre-copy'],
    });
    const { code, report } = await run.finished;
    const notes = run.events.filter((e) => typeof e.note === 'string' && /pre-copy/.test(e.note as string));
    assert.equal(notes.length, 1, 'one line about --pre-copy');
    assert.match(notes[0].note as string, /does not track dirty memory .*mem_dirty_track.*post-copy alone/);
    assert.match(report.preCopy ?? '', /not available/);
    await verifyMigrated(t, s, report, code);
  });
});

test('(10) CRIU 4.2.1 on the source, 4.1.1 on the destination: refused before anything is frozen', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  await scene(t, 'mismatch', { srcCriu: '4.2.1', dstCriu: '4.1.1', mib: 16 }, async (s) => {
    const run = runMigrate({ netns: hosts.source, pid: s.source.workload.pid, agent: s.agent, criu: findCriu('4.2.1').path, dumpDir: path.join(s.runDir, 'dump') });
    const { code, report } = await run.finished;
    describe(t, report);
    assert.equal(code, EXIT.untouched, report.message);
    assert.match(report.message, /the source's CRIU 4\.2\.1 writes images the destination's CRIU 4\.1\.1 cannot restore/);
    assert.match(report.message, /nothing was frozen/);
    await verifyRunning(s.source, s.source.workload.pid);
  });
});
