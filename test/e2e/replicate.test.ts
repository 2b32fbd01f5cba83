// End-to-end: `lazyd replicate` from a primary host into a standby `lazyd agent` (two netns hosts, netns.ts), with
// real CRIU 4.1.1 and 4.2.1, and the epochs workload (test/workload/epochs.c), whose memory changes by generation
// on command and which verifies every page for the generation it is in. Per CRIU version:
//   (1) the one mode line (--tracking auto: page comparison on a kernel without dirty tracking, this one); several
//       epochs committed while the workload moves through generations 1-3 (each epoch after a generation
//       carries about that generation's 10 % of the pages, not all of them); the primary killed (SIGKILL of the
//       tasks and of lazyd replicate); `lazyd failover` restores the last committed epoch, which verifies as
//       generation 3 with no bad page; `lazyd replicate status` says fenced; a restarted primary of the same id is
//       fenced (exit 3) and, with --kill-on-fence, its tasks are killed
//   (2) the primary killed mid-epoch (over a slow link, while the epoch of generation 2 is half sent): the standby
//       discards it and fails over to the last committed epoch, which verifies as generation 1
//   (3) the link cut mid-epoch: the same, the standby gives up the epoch after the link timeout
//   (4) the primary (with --failover-after 1) killed at a random point of its epoch cycle: the standby fails over
//       by itself once the primary has been gone 1 s, to the epoch it last committed, which verifies
//   (5) --tracking dirty with the kernel's part simulated (test/harness/simulated-dirty-criu.ts: the real criu dump,
//       then the pages equal to the previous epoch's turned into in-parent entries, as dirty tracking writes them):
//       the mode line, criu's argv per epoch, few pages per quiet epoch and a generation's after one, the epochs
//       flattened by the primary, and the failover of the last one verifies with real CRIU
// Cases 1-3 also scrape --metrics-address of both ends (the primary's epochs; the standby's commits, discarded
// epochs and failovers).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import path from 'node:path';
import { after, before, test, type TestContext } from 'node:test';
import { CRIU_VERSIONS, findCriu, pollFor, processAlive, requireHost, withRunDir, type CriuVersion } from '../harness/index.js';
import { createTwoHosts, type TwoHosts } from '../harness/netns.js';
import { cutLink, healLink, startAgent, type Agent } from '../harness/agent.js';
import { killPidNamespace } from '../harness/workload.js';
import { criuFeature } from '../../src/migrate/criu-host.js';
import { simulatedDirtyCriu } from '../harness/simulated-dirty-criu.js';
import {
  logSize,
  metricsUrlIn,
  nextGeneration,
  runLazydOnce,
  runReplicate,
  scrapeIn,
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
    const agent = await startAgent({ netns: hosts.destination, criu, stateDir: path.join(runDir, 'agent'), extraArgs: ['--metrics-address', '127.0.0.1:0'] });
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

/** `lazyd failover`, then the restored workload's clean verify passes in one of `gens`; kills it after. */
async function failoverVerifies(t: TestContext, s: Scene, epoch: number, gens: number[], onCleanup: (fn: () => unknown) => void): Promise<void> {
  const from = logSize(s.workload.dir);
  const result = await runLazydOnce(hosts.destination, ['failover', s.id, '--to', s.to, '--json']);
  assert.equal(result.code, 0, result.stderr);
  const answer = JSON.parse(result.stdout) as { epoch: number; pid: number; decisionToRunningMs: number };
  onCleanup(() => processAlive(answer.pid) && killPidNamespace(answer.pid));
  t.diagnostic(`failover: epoch ${answer.epoch} as pid ${answer.pid}, running ${answer.decisionToRunningMs.toFixed(0)} ms after the decision`);
  assert.equal(answer.epoch, epoch, 'the last epoch the primary saw committed');
  await restoredVerifies(s, answer.pid, from, gens);
}

/** Two verify passes of the restored workload (pid), every page good, in one of `gens`; resolves with it. */
async function restoredVerifies(s: Scene, pid: number, from: number, gens: number[]): Promise<number> {
  const lines = await pollFor('two verify passes of the restored workload', 30_000, () => {
    const got = verifyLines(s.workload.dir, from);
    return got.length >= 2 ? got : undefined;
  });
  assert.ok(gens.includes(lines[0].gen), `the restored workload is in generation ${lines[0].gen}, expected ${gens.join(' or ')}`);
  for (const line of lines) assert.deepEqual({ gen: line.gen, ok: line.ok, bad: line.bad }, { gen: lines[0].gen, ok: s.workload.pages, bad: 0 }, JSON.stringify(line));
  assert.ok(processAlive(pid), 'the restored tree runs on the standby');
  return lines[0].gen;
}

/** The standby agent's metrics (its URL from its log). */
async function agentMetrics(s: Scene): Promise<Map<string, number>> {
  const url = metricsUrlIn(fs.readFileSync(s.agent.logFile, 'utf8'));
  assert.ok(url, 'the agent logged its metrics URL');
  return scrapeIn(hosts.destination, url);
}

async function replicaStatus(s: Scene): Promise<{ id: string; fenced: boolean; committed: number; failedOver: { epoch: number; pid: number; at: number } | null } | undefined> {
  const status = await runLazydOnce(hosts.source, ['replicate', 'status', '--to', s.to, '--json']);
  assert.equal(status.code, 0, status.stderr);
  return (JSON.parse(status.stdout) as { id: string; fenced: boolean; committed: number; failedOver: { epoch: number; pid: number; at: number } | null }[]).find((r) => r.id === s.id);
}

for (const version of CRIU_VERSIONS) {
  test(`(1) CRIU ${version}: epochs committed, failover to the last one, the restarted primary fenced`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    await scene(`epochs-${version}`, version, 16, 10, async (s, onCleanup) => {
      const run = startReplicate(s, ['--interval', '0.3', '--metrics-address', '127.0.0.1:0']);
      onCleanup(() => run.proc.kill('SIGKILL'));
      const first = await run.waitForEvent('first commit', (e) => e.event === 'committed');
      // --tracking auto: dirty tracking where the kernel has it, else page comparison (this host: soft-dirty off).
      const missing = criuFeature(s.criu, 'mem_dirty_track');
      const modeLines = run.stderr().split('\n').filter((l) => l.includes('; mode: '));
      assert.equal(modeLines.length, 1, run.stderr());
      t.diagnostic(modeLines[0]);
      if (missing === undefined) assert.match(modeLines[0], /mode: dirty-page tracking .*\(--tracking auto: criu check --feature mem_dirty_track passes\)$/);
      else assert.ok(modeLines[0].endsWith(`mode: page comparison (every epoch reads all memory; SHA-256 per page against the committed epoch) (--tracking auto: this kernel does not track dirty memory, criu check --feature mem_dirty_track: ${missing})`), modeLines[0]);
      assert.equal(run.events.find((e) => e.event === 'connected')?.mode, missing === undefined ? 'dirty' : 'compare');
      const primaryUrl = metricsUrlIn(run.stderr());
      assert.ok(primaryUrl, `lazyd replicate printed its metrics URL: ${run.stderr()}`);
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
      const seen = committed(run);
      const m = await scrapeIn(hosts.source, primaryUrl);
      t.diagnostic(`primary metrics: ${[...m].filter(([k]) => k.startsWith('lazyd_replicate_')).map(([k, v]) => `${k} ${v}`).join(', ')}`);
      const epochs = m.get('lazyd_replicate_epochs_committed_total')!;
      assert.ok(epochs >= seen.length, `epochs committed ${epochs} >= the ${seen.length} seen`);
      assert.equal(m.get('lazyd_replicate_epoch_frozen_seconds_count'), epochs, 'one frozen-time sample per committed epoch');
      assert.equal(m.get('lazyd_replicate_epoch_commit_seconds_count'), epochs, 'one commit-time sample per committed epoch');
      assert.ok(m.get('lazyd_replicate_epoch_frozen_seconds_sum')! >= seen.reduce((sum, e) => sum + Number(e.frozenMs), 0) / 1000 - 1e-6);
      assert.ok(m.get('lazyd_replicate_pages_changed_total')! >= seen.reduce((sum, e) => sum + Number(e.pagesChanged), 0));
      assert.ok(m.get('lazyd_replicate_sent_bytes_total')! >= seen.reduce((sum, e) => sum + Number(e.bytesSent), 0));
      assert.ok(m.get('lazyd_replicate_committed_epoch')! >= Number(seen.at(-1)!.epoch));
      assert.ok(m.get('lazyd_replicate_last_epoch_sent_bytes')! > 0 && m.get('lazyd_replicate_last_epoch_sent_bytes')! < Number(first.bytesSent) / 2, 'the last epoch sent a delta');
      const lag = m.get('lazyd_replicate_lag_seconds')!;
      assert.ok(lag > 0 && lag < 10, `lag ${lag} s`);
      const last = await killPrimary(s, run);
      await failoverVerifies(t, s, last, [3], onCleanup);
      const replica = await replicaStatus(s);
      assert.deepEqual({ fenced: replica?.fenced, committed: replica?.committed, epoch: replica?.failedOver?.epoch }, { fenced: true, committed: last, epoch: last });
      const a = await agentMetrics(s);
      assert.equal(a.get('lazyd_replica_epochs_committed_total'), last, 'the standby committed every epoch');
      assert.equal(a.get('lazyd_replica_commit_seconds_count'), last);
      assert.deepEqual([a.get('lazyd_replica_failovers_total'), a.get('lazyd_replica_failovers_failed_total'), a.get('lazyd_replica_failover_running_seconds_count')], [1, 0, 1]);
      assert.deepEqual([a.get('lazyd_replicas'), a.get('lazyd_replica_primaries_connected')], [1, 0]);
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
        const sure = await epochAfterNow(run);
        // Slow the link, so an epoch of generation 2 (every page changed) takes seconds to send.
        await hosts.setRtt(300);
        onCleanup(() => hosts.setRtt(0));
        await nextGeneration(s.workload.dir, 2);
        const recv = path.join(s.agent.stateDir, 'replicas', s.id, 'incoming', 'recv');
        await pollFor('half of generation 2 on the standby', 60_000, () => {
          if (run.proc.exitInfo) throw new Error(`lazyd replicate exited first: ${run.stderr()}`);
          return namesIn(recv).some((n) => n.startsWith('pages-') && sizeOf(path.join(recv, n)) > 4 << 20) ? true : undefined;
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
        // Generation 1, or 2 when a later epoch froze the tasks while they wrote generation 2 and committed before
        // the slow one in flight (a few pages changed by then): its tasks finish writing 2. Either way the last
        // committed epoch (checked) is restored and verifies every page.
        await failoverVerifies(t, s, last, last === Number(sure.epoch) ? [1] : [1, 2], onCleanup);
        const a = await agentMetrics(s);
        assert.ok(a.get('lazyd_replica_epochs_discarded_total')! >= 1, 'the epoch cut off is counted as discarded');
        assert.equal(a.get('lazyd_replica_failovers_total'), 1);
      });
    });
  }

  test(`(4) CRIU ${version}: the primary killed at a random point, the standby fails over by itself after --failover-after`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    await scene(`auto-${version}`, version, 16, 10, async (s, onCleanup) => {
      const run = startReplicate(s, ['--interval', '0.3', '--failover-after', '1']);
      onCleanup(() => run.proc.kill('SIGKILL'));
      await run.waitForEvent('first commit', (e) => e.event === 'committed');
      await nextGeneration(s.workload.dir, 1);
      const sure = await epochAfterNow(run);
      await nextGeneration(s.workload.dir, 2);
      // A random point of the cycle (waiting, dumping, hashing, sending or committing): whatever it hits, the
      // standby must restore a complete epoch, no older than the last one the primary saw committed.
      const delayMs = Math.floor(Math.random() * 700);
      t.diagnostic(`killing the primary ${delayMs} ms after generation 2 was written`);
      await sleep(delayMs);
      const killedAt = Date.now();
      const seen = await killPrimary(s, run);
      const from = logSize(s.workload.dir);
      const replica = await pollFor('the standby to fail over by itself', 30_000, async () => {
        const r = await replicaStatus(s);
        return r?.failedOver?.pid ? r : undefined;
      }, 200);
      const { epoch, pid, at } = replica.failedOver!;
      onCleanup(() => processAlive(pid) && killPidNamespace(pid));
      t.diagnostic(`failed over on its own ${at - killedAt} ms after the kill: epoch ${epoch} (the primary last saw ${seen} committed) as pid ${pid}`);
      assert.ok(at - killedAt >= 950, `the standby waited --failover-after 1 s (failed over after ${at - killedAt} ms)`);
      assert.ok(epoch >= seen && epoch >= Number(sure.epoch), `epoch ${epoch}: no older than ${seen}`);
      assert.equal(replica.committed, epoch, 'the restored epoch is the committed one');
      const gen = await restoredVerifies(s, pid, from, epoch === Number(sure.epoch) ? [1] : [1, 2]);
      t.diagnostic(`the restored workload verifies as generation ${gen}`);
      const log = fs.readFileSync(s.agent.logFile, 'utf8');
      assert.match(log, new RegExp(`replica ${s.id}: failing over to epoch ${epoch}: the primary was unreachable for --failover-after 1\\.0 s`));
    });
  });

  test(`(5) CRIU ${version}: --tracking dirty (the kernel's part simulated), epochs flattened, failover restores the last`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    await scene(`dirty-${version}`, version, 16, 10, async (s, onCleanup) => {
      const argvLog = path.join(s.runDir, 'criu-argv.log');
      const criu = simulatedDirtyCriu(path.join(s.runDir, 'criu'), s.criu, argvLog);
      const run = runReplicate(hosts.source, ['--pid', String(s.workload.pid), '--to', s.to, '--id', s.id, '--criu', criu, '--dump-dir', path.join(s.runDir, 'dump'), '--interval', '0.3', '--tracking', 'dirty']);
      onCleanup(() => run.proc.kill('SIGKILL'));
      const first = await run.waitForEvent('first commit', (e) => e.event === 'committed');
      assert.match(run.stderr(), /; mode: dirty-page tracking \(criu dump --track-mem on the previous epoch: CRIU writes only the pages dirtied since\) \(--tracking dirty: criu check --feature mem_dirty_track passes\)\n/);
      assert.equal(run.events.find((e) => e.event === 'connected')?.mode, 'dirty');
      assert.equal(first.pagesChanged, first.pages, 'the first epoch sends every page');
      const quiet = await epochAfterNow(run);
      for (let gen = 1; gen <= 2; gen++) {
        await nextGeneration(s.workload.dir, gen);
        const e = await epochAfterNow(run);
        t.diagnostic(`gen ${gen}: epoch ${e.epoch} frozen ${Number(e.frozenMs).toFixed(0)} ms, ${e.pagesChanged}/${e.pages} pages changed, ${e.bytesSent} bytes sent, flatten+hash ${Number(e.hashMs).toFixed(0)} ms`);
      }
      const changed = committed(run).slice(1).map((e) => Number(e.pagesChanged));
      assert.ok(Number(quiet.pagesChanged) < s.workload.pages / 10, `an epoch without a new generation sends few pages (${quiet.pagesChanged})`);
      assert.ok(Math.max(...changed) >= s.workload.pages / 10, `some epoch carried a generation's pages (${changed})`);
      assert.ok(Math.max(...changed) < Number(first.pages) / 2, `no later epoch re-sent most pages (${changed} of ${first.pages})`);
      const last = await killPrimary(s, run);
      // criu's argv: --track-mem every epoch, from the second on the previous epoch's directory.
      const dumps = fs.readFileSync(argvLog, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as string[]).filter((a) => a[0] === 'dump');
      assert.ok(dumps.length >= last);
      dumps.forEach((argv, i) => {
        assert.ok(argv.includes('--track-mem') && argv.includes('--leave-running'), JSON.stringify(argv));
        const prev = argv.indexOf('--prev-images-dir');
        assert.deepEqual(prev < 0 ? undefined : argv[prev + 1], i === 0 ? undefined : `../epoch-${i}`, JSON.stringify(argv));
      });
      // The standby holds the last committed epoch self-contained (no parent link); it restores and verifies.
      const committedDir = path.join(s.agent.stateDir, 'replicas', s.id, 'committed');
      assert.equal(fs.existsSync(path.join(committedDir, 'parent')), false);
      await failoverVerifies(t, s, last, [2], onCleanup);
    });
  });
}

/** The names in a directory, or none when it is gone: the standby removes and rebuilds `incoming` at every epoch. */
function namesIn(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
}

function sizeOf(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}
