// End-to-end: `lazyd replicate` from a primary host into a standby `lazyd agent` (two netns hosts, netns.ts), with
// real CRIU 4.1.1 and 4.2.1, and the epochs workload (test/workload/epochs.c), whose memory changes by generation
// on command and which verifies every page for the generation it is in. Per CRIU version:
//   (1) several epochs committed while the workload moves through generations 1-3 (each epoch after a generation
//       carries about that generation's 10 % of the pages, not all of them); the primary killed (SIGKILL of the
//       tasks and of lazyd replicate); `lazyd failover` restores the last committed epoch, which verifies as
//       generation 3 with no bad page; `lazyd replicate status` says fenced; a restarted primary of the same id is
//       fenced (exit 3) and, with --kill-on-fence, its tasks are killed
//   (2) the primary killed mid-epoch (over a slow link, while the epoch of generation 2 is half sent): the standby
//       discards it and fails over to the last committed epoch, which verifies as generation 1
//   (3) the link cut mid-epoch: the same, the standby gives up the epoch after the link timeout
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import { CRIU_VERSIONS, findCriu, pollFor, processAlive, requireHost, withRunDir, type CriuVersion } from '../harness/index.js';
import { createTwoHosts, type TwoHosts } from '../harness/netns.js';
import { cutLink, healLink, startAgent, type Agent } from '../harness/agent.js';
import { killPidNamespace } from '../harness/workload.js';
import {
  logSize,
  nextGeneration,
  runLazydOnce,
  runReplicate,
  startEpochsWorkload,
  stopEpochsWorkload,
  verifyLines,
  type EpochsWorkload,
  type ReplicateRun,
} from '../harness/replicate.js';

const TEST_TIMEOUT_MS = 120_000;
let hosts: TwoHosts;

before(() => {
  requireHost();
  hosts = createTwoHosts({ id: `r${process.pid % 100000}` });
});
after(() => hosts?.destroy());

interface Scene {
  runDir: string;
  agent: Agent;
  workload: EpochsWorkload;
  criu: string;
  id: string;
  to: string;
}

async function scene(tag: string, version: CriuVersion, mib: number, classes: number, body: (s: Scene, onCleanup: (fn: () => unknown) => void) => Promise<void>): Promise<void> {
  await withRunDir(`replicate-${tag}`, async (runDir, onCleanup) => {
    const criu = findCriu(version).path;
    const agent = await startAgent({ netns: hosts.destination, criu, stateDir: path.join(runDir, 'agent') });
    onCleanup(() => agent.stop());
    const workload = await startEpochsWorkload(path.join(runDir, 'w'), mib, classes, hosts.source);
    onCleanup(() => stopEpochsWorkload(workload));
    await body({ runDir, agent, workload, criu, id: `svc-${tag}`, to: `${agent.address}:${agent.port}` }, onCleanup);
  });
}

function startReplicate(s: Scene, extra: string[] = [], pid = s.workload.pid): ReplicateRun {
  return runReplicate(hosts.source, ['--pid', String(pid), '--to', s.to, '--id', s.id, '--criu', s.criu, '--dump-dir', path.join(s.runDir, 'dump'), ...extra]);
}

const committed = (run: ReplicateRun) => run.events.filter((e) => e.event === 'committed');

/** Waits for two more commits: the second one's dump began after now. */
async function epochAfterNow(run: ReplicateRun): Promise<Record<string, unknown>> {
  const seen = committed(run).length;
  await run.waitForEvent(`epoch commit #${seen + 2}`, () => committed(run).length >= seen + 2);
  return committed(run)[seen + 1];
}

/** SIGKILL of lazyd replicate and of the workload's tasks; resolves with the last epoch the primary saw committed. */
async function killPrimary(s: Scene, run: ReplicateRun): Promise<number> {
  run.proc.kill('SIGKILL');
  await run.exited;
  await killPidNamespace(s.workload.pid);
  return Number(committed(run).at(-1)!.epoch);
}

/** `lazyd failover`, then the restored workload's clean verify passes for `gen`; kills it after. */
async function failoverVerifies(t: TestContext, s: Scene, epoch: number, gen: number, onCleanup: (fn: () => unknown) => void): Promise<void> {
  const from = logSize(s.workload.dir);
  const result = await runLazydOnce(hosts.destination, ['failover', s.id, '--to', s.to, '--json']);
  assert.equal(result.code, 0, result.stderr);
  const answer = JSON.parse(result.stdout) as { epoch: number; pid: number; decisionToRunningMs: number };
  onCleanup(() => processAlive(answer.pid) && killPidNamespace(answer.pid));
  t.diagnostic(`failover: epoch ${answer.epoch} as pid ${answer.pid}, running ${answer.decisionToRunningMs.toFixed(0)} ms after the decision`);
  assert.equal(answer.epoch, epoch, 'the last epoch the primary saw committed');
  const lines = await pollFor('two verify passes of the restored workload', 30_000, () => {
    const got = verifyLines(s.workload.dir, from);
    return got.length >= 2 ? got : undefined;
  });
  for (const line of lines) assert.deepEqual({ gen: line.gen, ok: line.ok, bad: line.bad }, { gen, ok: s.workload.pages, bad: 0 }, JSON.stringify(line));
  assert.ok(processAlive(answer.pid), 'the restored tree runs on the standby');
}

for (const version of CRIU_VERSIONS) {
  test(`(1) CRIU ${version}: epochs committed, failover to the last one, the restarted primary fenced`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    await scene(`epochs-${version}`, version, 16, 10, async (s, onCleanup) => {
      const run = startReplicate(s, ['--interval', '0.3']);
      onCleanup(() => run.proc.kill('SIGKILL'));
      const first = await run.waitForEvent('first commit', (e) => e.event === 'committed');
      assert.equal(first.pagesChanged, first.pages, 'the first epoch sends every page');
      for (let gen = 1; gen <= 3; gen++) {
        await nextGeneration(s.workload.dir, gen);
        const e = await epochAfterNow(run);
        t.diagnostic(`gen ${gen}: epoch ${e.epoch} frozen ${Number(e.frozenMs).toFixed(0)} ms, ${e.pagesChanged}/${e.pages} pages changed, ${e.bytesSent} bytes sent, commit ${Number(e.commitMs).toFixed(0)} ms`);
      }
      const changed = committed(run).slice(1).map((e) => Number(e.pagesChanged));
      const pages = Number(first.pages);
      assert.ok(Math.max(...changed) >= s.workload.pages / 10, `some epoch carried a generation's pages (${changed})`);
      assert.ok(Math.max(...changed) < pages / 2, `no later epoch re-sent most pages (${changed} of ${pages})`);
      const last = await killPrimary(s, run);
      await failoverVerifies(t, s, last, 3, onCleanup);
      const status = await runLazydOnce(hosts.source, ['replicate', 'status', '--to', s.to, '--json']);
      assert.equal(status.code, 0, status.stderr);
      const replica = (JSON.parse(status.stdout) as { id: string; fenced: boolean; committed: number }[]).find((r) => r.id === s.id);
      assert.deepEqual({ fenced: replica?.fenced, committed: replica?.committed }, { fenced: true, committed: last });
      // A primary restarted after the failover: fenced, and with --kill-on-fence its tasks are killed.
      const again = await startEpochsWorkload(path.join(s.runDir, 'w2'), 4, 10, hosts.source);
      onCleanup(() => stopEpochsWorkload(again));
      const restarted = startReplicate(s, ['--interval', '0.3', '--kill-on-fence'], again.pid);
      const exit = await restarted.exited;
      assert.equal(exit.code, 3, restarted.stderr());
      assert.match(restarted.stderr(), /fenced: replica .* failed over/);
      await pollFor('the restarted primary killed', 10_000, () => (processAlive(again.pid) ? undefined : true));
    });
  });

  for (const how of ['kill', 'cut'] as const) {
    const title = how === 'kill' ? '(2) the primary killed mid-epoch' : '(3) the link cut mid-epoch';
    test(`${title} (CRIU ${version}): the previous epoch stays committed and fails over`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
      await scene(`${how}-${version}`, version, 64, 1, async (s, onCleanup) => {
        const run = startReplicate(s, ['--interval', '0.2', '--link-timeout', '2']);
        onCleanup(() => run.proc.kill('SIGKILL'));
        await run.waitForEvent('first commit', (e) => e.event === 'committed');
        await nextGeneration(s.workload.dir, 1);
        await epochAfterNow(run);
        // Slow the link, so an epoch of generation 2 (every page changed) takes seconds to send.
        await hosts.setRtt(300);
        onCleanup(() => hosts.setRtt(0));
        await nextGeneration(s.workload.dir, 2);
        const recv = path.join(s.agent.stateDir, 'replicas', s.id, 'incoming', 'recv');
        await pollFor('half of generation 2 on the standby', 60_000, () => {
          if (run.proc.exitInfo) throw new Error(`lazyd replicate exited first: ${run.stderr()}`);
          return fs.existsSync(recv) && fs.readdirSync(recv).some((n) => n.startsWith('pages-') && sizeOf(path.join(recv, n)) > 4 << 20) ? true : undefined;
        });
        let last: number;
        if (how === 'kill') last = await killPrimary(s, run);
        else {
          cutLink(hosts);
          let cut = true;
          onCleanup(() => cut && healLink(hosts));
          const exit = await run.exited;
          assert.equal(exit.code, 1, 'the primary gives up after the link timeout');
          await killPidNamespace(s.workload.pid);
          last = Number(committed(run).at(-1)!.epoch);
          await pollFor('the standby to drop the epoch in flight', 20_000, () => (fs.existsSync(recv) ? undefined : true));
          healLink(hosts);
          cut = false;
        }
        await hosts.setRtt(0);
        await failoverVerifies(t, s, last, 1, onCleanup);
      });
    });
  }
}

function sizeOf(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}
