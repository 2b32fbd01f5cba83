// Benchmark "replicate" (opt-in: `npm run bench -- --only replicate`): keeping a standby of a running 512 MiB
// process between two hosts on one machine (test/harness/netns.ts, 0.5 ms RTT), alternating per round:
//   copy-dir          what a user can do today: every interval `criu dump --leave-running` of the whole tree into
//                     tmpfs, the image directory copied to the standby over one plain TCP stream (bench/lib/
//                     dir-copy.ts: scp-like, no encryption), kept there once complete; failover: `criu restore`
//   lazyd             `lazyd replicate --tracking compare` into a `lazyd agent` (only changed pages cross);
//                     failover: `lazyd failover` (a lazy restore from the standby's own images)
//   lazyd-no-compare  the same with --tracking full (every page, every epoch; --no-compare before --tracking)
// The workload (test/workload/epochs.c, verify on request only) writes 1 %, 10 % or 100 % of its pages between
// two epochs: the benchmark has it write one generation after each epoch is on the standby, and fails the run
// if the generation was not written before the next epoch's dump began. Every run has EPOCHS epochs; the per-epoch
// figures are the medians of the epochs after the first (the first is always the whole memory). After the last
// epoch the workload is killed, the standby restores the last epoch, and the restored workload must verify every
// page. Everything on tmpfs (/dev/shm) on both hosts.
// --quick: 64 MiB, 2 s interval, one round.
import fs from 'node:fs';
import path from 'node:path';
import { findCriu, pollFor, type CriuVersion } from '../test/harness/index.js';
import { createTwoHosts, type TwoHosts } from '../test/harness/netns.js';
import { startAgent, type Agent } from '../test/harness/agent.js';
import { Proc } from '../test/harness/process.js';
import { killPidNamespace } from '../test/harness/workload.js';
import { logSize, nextGeneration, runLazydOnce, runReplicate, startEpochsWorkload, stopEpochsWorkload, verifyLines, type EpochsWorkload } from '../test/harness/replicate.js';
import { repoRoot } from '../src/paths.js';
import { runAlternating } from './lib/alternate.js';
import { limitsMarkdown, measureLimits } from './limits.js';
import { makeComparison, markdownTable, toRunRecords, type BenchResult, type Comparison, type FigureDef, type FigureValues } from './lib/report.js';
import { median } from './lib/stats.js';
import type { BenchContext, Benchmark } from './lib/types.js';

const CONFIGS = ['copy-dir', 'lazyd', 'lazyd-no-compare'] as const;
type Config = (typeof CONFIGS)[number];
/** Write fraction (%) → the workload's classes (a generation rewrites the pages p with p % classes == g % classes). */
const FRACTIONS: [number, number][] = [
  [1, 100],
  [10, 10],
  [100, 1],
];
const EPOCHS = 3;
const RTT_MS = 0.5;
const SHM = '/dev/shm';

export const FIGURES: FigureDef[] = [
  { key: 'frozenMs', label: 'per epoch: tasks frozen (criu dump --leave-running run time)', unit: 'ms', digits: 0 },
  { key: 'sentMiB', label: 'per epoch: bytes sent to the standby', unit: 'MiB', digits: 2 },
  { key: 'epochMs', label: 'per epoch: dump start → the standby holds it complete', unit: 'ms', digits: 0 },
  { key: 'hashMs', label: 'per epoch: hashing every page (lazyd only)', unit: 'ms', digits: 0 },
  { key: 'failoverRunningMs', label: 'failover: decision → restored tree running', unit: 'ms', digits: 0 },
  { key: 'failoverAllPagesMs', label: 'failover: decision → every page present', unit: 'ms', digits: 0 },
];

interface Setting {
  version: CriuVersion;
  criu: string;
  mib: number;
  percent: number;
  classes: number;
  intervalMs: number;
}

interface Epoch {
  frozenMs: number;
  sentBytes: number;
  epochMs: number;
  hashMs: number | null;
}

function perEpochFigures(epochs: Epoch[]): Record<string, number | null> {
  const later = epochs.slice(1);
  const hash = later.map((e) => e.hashMs);
  return {
    frozenMs: median(later.map((e) => e.frozenMs)),
    sentMiB: median(later.map((e) => e.sentBytes)) / 1048576,
    epochMs: median(later.map((e) => e.epochMs)),
    hashMs: hash.every((h) => h === null) ? null : median(hash),
  };
}

/** After epoch k is on the standby: the next generation, written before epoch k+1's dump begins (start + interval). */
async function nextGenerationInTime(w: EpochsWorkload, gen: number, epochStartedAt: number, intervalMs: number): Promise<void> {
  await nextGeneration(w.dir, gen);
  const late = performance.now() - (epochStartedAt + intervalMs);
  if (late > -20) throw new Error(`generation ${gen} was written ${late.toFixed(0)} ms after the next epoch's start: the interval is too short for this machine`);
}

/** Kills the workload (what the failover replaces), then has the restored one verify every page. */
async function restoredVerifies(w: EpochsWorkload, from: number): Promise<void> {
  fs.writeFileSync(path.join(w.dir, 'do-verify'), '');
  const line = await pollFor('the restored workload to verify', 60_000, () => verifyLines(w.dir, from)[0], 50);
  if (line.bad !== 0 || line.ok !== w.pages) throw new Error(`the restored workload found ${line.bad} bad pages (${line.ok} of ${w.pages} good)`);
}

async function lazydRun(hosts: TwoHosts, agent: Agent, s: Setting, compare: boolean, runId: string, runDir: string, w: EpochsWorkload): Promise<FigureValues> {
  const run = runReplicate(hosts.source, [
    '--pid', String(w.pid), '--to', `${agent.address}:${agent.port}`, '--id', runId, '--criu', s.criu, '--dump-dir', path.join(runDir, 'dump'),
    '--interval', String(s.intervalMs / 1000), '--epochs', String(EPOCHS), '--tracking', compare ? 'compare' : 'full',
  ]);
  try {
    const epochs: Epoch[] = [];
    for (let k = 1; k <= EPOCHS; k++) {
      const e = await run.waitForEvent(`epoch ${k}`, (x) => x.event === 'committed' && Number(x.epoch) === k, 120_000);
      epochs.push({ frozenMs: Number(e.frozenMs), sentBytes: Number(e.bytesSent), epochMs: Number(e.epochMs), hashMs: Number(e.hashMs) });
      if (k < EPOCHS) await nextGenerationInTime(w, k, performance.now() - Number(e.epochMs), s.intervalMs);
    }
    const exit = await run.exited;
    if (exit.code !== 0) throw new Error(`lazyd replicate exited ${exit.code}: ${run.stderr()}`);
    await killPidNamespace(w.pid);
    const from = logSize(w.dir);
    const result = await runLazydOnce(hosts.destination, ['failover', runId, '--to', `${agent.address}:${agent.port}`, '--json']);
    if (result.code !== 0) throw new Error(`lazyd failover: ${result.stderr}`);
    const answer = JSON.parse(result.stdout) as { pid: number; decisionToRunningMs: number };
    try {
      const allPagesMs = await pollFor('every page present on the standby', 60_000, () => {
        const m = new RegExp(`replica ${runId}: every page present (\\d+) ms after the decision`).exec(fs.readFileSync(agent.logFile, 'utf8'));
        return m ? Number(m[1]) : undefined;
      }, 50);
      await restoredVerifies(w, from);
      return {
        figures: { ...perEpochFigures(epochs), failoverRunningMs: answer.decisionToRunningMs, failoverAllPagesMs: allPagesMs },
        details: { epochs, pagesChanged: run.events.filter((x) => x.event === 'committed').map((x) => x.pagesChanged), commitMs: run.events.filter((x) => x.event === 'committed').map((x) => x.commitMs) },
      };
    } finally {
      await killPidNamespace(answer.pid);
    }
  } finally {
    run.proc.kill('SIGKILL');
    fs.rmSync(path.join(agent.stateDir, 'replicas', runId), { recursive: true, force: true });
  }
}

/** Runs a command in `netns` to its end; throws with its output unless it exits 0. */
async function inNetns(netns: string, name: string, file: string, args: string[], cwd?: string): Promise<string> {
  const proc = new Proc({ name, file, args, netns, cwd }, ['ignore', 'pipe', 'pipe']);
  await proc.waitOk(120_000);
  return proc.outputText;
}

const DIR_COPY = () => path.join(repoRoot(), 'dist', 'bench', 'lib', 'dir-copy.js');

async function copyDirRun(hosts: TwoHosts, s: Setting, runDir: string, w: EpochsWorkload): Promise<FigureValues> {
  const root = path.join(runDir, 'standby');
  fs.mkdirSync(root, { recursive: true });
  const receiver = new Proc({ name: 'dir-copy recv', file: process.execPath, args: [DIR_COPY(), 'recv', '0', root], netns: hosts.destination }, ['ignore', 'pipe', 'pipe']);
  try {
    const port = await pollFor('the copy receiver', 10_000, () => {
      const m = /ready (\d+)/.exec(receiver.outputText);
      return m ? Number(m[1]) : undefined;
    });
    const epochs: Epoch[] = [];
    let previous: string | undefined;
    for (let k = 1; k <= EPOCHS; k++) {
      const started = performance.now();
      const dir = path.join(runDir, `dump-${k}`);
      fs.mkdirSync(dir);
      const dumpStarted = performance.now();
      await inNetns(hosts.source, 'criu dump --leave-running', s.criu, ['dump', '-t', String(w.pid), '-D', dir, '-v4', '-o', 'dump.log', '--leave-running'], dir);
      const frozenMs = performance.now() - dumpStarted;
      const sent = JSON.parse((await inNetns(hosts.source, 'dir-copy send', process.execPath, [DIR_COPY(), 'send', dir, hosts.destinationAddress, String(port), String(k)])).trim().split('\n').pop()!) as { bytes: number };
      epochs.push({ frozenMs, sentBytes: sent.bytes, epochMs: performance.now() - started, hashMs: null });
      if (previous) fs.rmSync(previous, { recursive: true, force: true });
      previous = dir;
      if (k < EPOCHS) {
        await nextGenerationInTime(w, k, started, s.intervalMs);
        await new Promise((resolve) => setTimeout(resolve, started + s.intervalMs - performance.now()));
      }
    }
    await killPidNamespace(w.pid);
    const from = logSize(w.dir);
    const copy = path.join(root, `copy-${EPOCHS}`);
    const decision = performance.now();
    await inNetns(hosts.destination, 'criu restore', s.criu, ['restore', '-D', copy, '-d', '-v4', '-o', 'restore.log', '--pidfile', path.join(copy, 'restored.pid')], copy);
    const runningMs = performance.now() - decision;
    const pid = Number(fs.readFileSync(path.join(copy, 'restored.pid'), 'utf8').trim());
    try {
      await restoredVerifies(w, from);
    } finally {
      await killPidNamespace(pid);
    }
    // A plain restore has every page in place when it returns.
    return { figures: { ...perEpochFigures(epochs), failoverRunningMs: runningMs, failoverAllPagesMs: runningMs }, details: { epochs } };
  } finally {
    receiver.kill('SIGKILL');
    await receiver.exited;
  }
}

function oneLine(v: FigureValues): string {
  const f = v.figures;
  const n = (x: number | null | undefined, d = 0) => (x === null || x === undefined || !Number.isFinite(x) ? '–' : x.toFixed(d));
  return `frozen ${n(f.frozenMs)} ms, sent ${n(f.sentMiB, 2)} MiB, epoch ${n(f.epochMs)} ms, hash ${n(f.hashMs)} ms; failover running ${n(f.failoverRunningMs)} ms, all pages ${n(f.failoverAllPagesMs)} ms`;
}

async function compare(ctx: BenchContext, hosts: TwoHosts, s: Setting, rounds: number): Promise<Comparison> {
  const title = `CRIU ${s.version}, ${s.mib} MiB, ${s.percent} % of the pages written per interval (${s.intervalMs / 1000} s)`;
  ctx.log(`== ${title}: ${rounds} rounds, ${CONFIGS.join(' / ')} alternating`);
  const agentDir = fs.mkdtempSync(path.join(SHM, 'lazyd-bench-standby-'));
  const agent = await startAgent({ netns: hosts.destination, criu: s.criu, stateDir: agentDir });
  let seq = 0;
  try {
    const outcomes = await runAlternating<FigureValues, Config>({
      configs: CONFIGS,
      rounds,
      log: ctx.log,
      describe: oneLine,
      run: async (config) => {
        const runDir = fs.mkdtempSync(path.join(SHM, `lazyd-bench-replicate-${config}-`));
        let w: EpochsWorkload | undefined;
        try {
          w = await startEpochsWorkload(path.join(runDir, 'w'), s.mib, s.classes, hosts.source, ['--verify-on-request', '1']);
          if (config === 'copy-dir') return await copyDirRun(hosts, s, runDir, w);
          return await lazydRun(hosts, agent, s, config === 'lazyd', `bench-${++seq}`, runDir, w);
        } finally {
          if (w) await stopEpochsWorkload(w);
          if (!ctx.keep) fs.rmSync(runDir, { recursive: true, force: true });
        }
      },
    });
    return makeComparison({
      title,
      params: { criuVersion: s.version, mib: s.mib, writePercent: s.percent, intervalMs: s.intervalMs, epochs: EPOCHS, rttMs: RTT_MS, rounds },
      configs: [...CONFIGS],
      figures: FIGURES,
      runs: toRunRecords(outcomes),
    });
  } finally {
    await agent.stop();
    fs.rmSync(agentDir, { recursive: true, force: true });
  }
}

/** One line per comparison: both lazyd modes against copy-dir, the medians' ratios. */
function headline(comparisons: Comparison[]): string {
  const ratio = (c: Comparison, key: string, config: string) => {
    const s = c.summary.find((x) => x.key === key)!;
    const base = s.perConfig['copy-dir']?.median;
    const v = s.perConfig[config]?.median;
    return base && Number.isFinite(v) && Number.isFinite(base) ? (v / base).toFixed(2) : '–';
  };
  const rows = comparisons.map((c) => [
    `${c.params.criuVersion}, ${c.params.writePercent} %`,
    ratio(c, 'frozenMs', 'lazyd'), ratio(c, 'sentMiB', 'lazyd'), ratio(c, 'sentMiB', 'lazyd-no-compare'), ratio(c, 'epochMs', 'lazyd'),
    ratio(c, 'failoverRunningMs', 'lazyd'), ratio(c, 'failoverAllPagesMs', 'lazyd'),
  ]);
  return markdownTable(
    ['CRIU, written per interval', 'frozen lazyd/copy', 'sent lazyd/copy', 'sent no-compare/copy', 'epoch lazyd/copy', 'failover running lazyd/copy', 'failover all pages lazyd/copy'],
    rows,
    ['l', 'r', 'r', 'r', 'r', 'r', 'r'],
  );
}

export const replicateBenchmark: Benchmark = {
  name: 'replicate',
  description: '`lazyd replicate` (with and without page comparison) vs copying a whole `criu dump --leave-running` each interval, and failover, alternating',
  optIn: true,
  estimate(ctx) {
    const rounds = ctx.quick ? 1 : Math.min(ctx.pairs, 2);
    const runs = ctx.criuVersions.length * FRACTIONS.length * CONFIGS.length * rounds;
    return `${runs} runs of ${EPOCHS} epochs of ${ctx.quick ? 64 : 512} MiB (~${Math.ceil((runs * (ctx.quick ? 8 : 28)) / 60) + 1} min)`;
  },
  async run(ctx) {
    const mib = ctx.quick ? 64 : 512;
    const intervalMs = ctx.quick ? 2000 : 9000;
    const rounds = ctx.quick ? 1 : Math.min(ctx.pairs, 2);
    const hosts = createTwoHosts({ id: `br${process.pid % 10000}` });
    try {
      const limits = await measureLimits(ctx, [RTT_MS], hosts);
      await hosts.setRtt(RTT_MS);
      const comparisons: Comparison[] = [];
      for (const version of ctx.criuVersions) {
        for (const [percent, classes] of FRACTIONS) {
          comparisons.push(await compare(ctx, hosts, { version, criu: findCriu(version).path, mib, percent, classes, intervalMs }, rounds));
        }
      }
      return {
        name: 'replicate',
        description: replicateBenchmark.description,
        comparisons,
        summary: `Ratios of the medians against copy-dir:\n\n${headline(comparisons)}\n\nThis machine's limits:\n\n${limitsMarkdown(limits)}`,
        data: { limits },
        notes: [
          `Each run: ${EPOCHS} epochs, one every interval (start to start); the per-epoch figures are the medians over the epochs after the first (the first always carries every page). Rounds alternate copy-dir, lazyd, lazyd-no-compare.`,
          'frozen: the run time of `criu dump --leave-running` into tmpfs (an upper bound of the freeze; the same command in every configuration). sent: for lazyd the bytes lazyd replicate wrote to the standby in the epoch (images, deltas, messages); for copy-dir the stream (every image file). epoch: from the dump start until the standby held the epoch complete (lazyd: its ack after rebuilding and checking every file; copy-dir: the receiver\'s ack after the last byte).',
          'hash: lazyd replicate\'s SHA-256 of every page and of every file (the addon\'s, on a worker thread; node:crypto before, bench page-hash compares the two) and writing the deltas; --tracking full hashes each file whole only (it still sends every file\'s checksum).',
          'failover: lazyd: `lazyd failover` on the standby (decision → running as it reports; every page present: the agent\'s log line when its lazy-pages exited); copy-dir: a plain `criu restore -d` of the last complete copy (running = every page present). Each restored workload verified every page before the figure was kept.',
          'The workload writes its next generation right after an epoch is on the standby; a run fails if the generation was not written before the next epoch began.',
        ],
      } satisfies BenchResult;
    } finally {
      hosts.destroy();
    }
  },
};
