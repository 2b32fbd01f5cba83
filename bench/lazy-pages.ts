// Benchmark "lazy-pages": the same lazy migration with `criu lazy-pages` (kind 'criu') and with `lazyd lazy-pages`
// (kind 'lazyd', the drop-in) as the destination daemon. The source is the same for both: lazyd's page server in
// serve mode, started by the harness on the plain dump. Same workload (verifying its memory back to back,
// intervalMs 0), same CRIU version for dump and restore; the two daemons run alternately (criu lazyd criu lazyd
// ...), one comparison per size × CRIU version × touch order.
//
// Figures per run (times from the start of `criu restore --lazy-pages -d`):
//   time to resume      `criu restore` from its start to its exit: the workload runs again
//   all pages present   until the daemon logged its last task done (-v4 / -o log, "UFFD transferred pages")
//   lazy-pages exit     until the daemon exited 0
//   stall max / p99     heartbeat gaps of the workload (it beats every 5 ms) from the restore to the end of verification
//   fault service       criu: "#PF at X" → "uffd_copy: X.." in its -v4 log (µs stamps), faults whose page came in
//                       by a copy; lazyd: its own summary line (PAGEFAULT read → page installed; fine bucket upper bounds)
//   requests            GET requests the page server (lazyd serve mode, the same for both) answered, from its log
//   daemon CPU          utime+stime of the daemon process (/proc sampling every 20 ms; lazyd's includes node's start)
// A run is bounded: when the daemon has not finished within BOUND_MS, the run counts as "> BOUND_MS" (its
// time figures are the bound, a lower bound) — not as a failure.
import fs from 'node:fs';
import path from 'node:path';
import { checkHost, runLazyMigration, type CriuVersion, type DaemonKind, type MigrationResult, type PageOrder } from '../test/harness/index.js';
import { runAlternating } from './lib/alternate.js';
import { criuFaultServiceUs, readLazydLatency, watchDaemonCpu, type DaemonWatch } from './lib/daemon.js';
import { readLazyPagesRequests } from './lib/migration.js';
import { readServedSessions } from '../test/harness/session-log.js';
import { makeComparison, toRunRecords, type BenchResult, type Comparison, type FigureDef, type FigureValues } from './lib/report.js';
import { max, median, p99 } from './lib/stats.js';
import type { BenchContext, Benchmark } from './lib/types.js';

const DAEMONS: DaemonKind[] = ['criu', 'lazyd'];
const ORDERS: PageOrder[] = ['seq', 'random'];
const ORDER_NAME: Record<PageOrder, string> = { seq: 'sequential', random: 'random' };
const INTERVAL_MS = 0;
/** Bound of one run's lazy phase (restore start → daemon exit), env LAZYD_BENCH_BOUND_S to change it. */
const BOUND_MS = Number(process.env.LAZYD_BENCH_BOUND_S ?? 180) * 1000;

export const FIGURES: FigureDef[] = [
  { key: 'boundHit', label: `runs over the ${BOUND_MS / 1000} s bound (1 = yes)`, unit: 'runs', digits: 0 },
  { key: 'restoreMs', label: 'time to resume (criu restore)', unit: 'ms', digits: 0 },
  { key: 'pagesInstalledMs', label: 'all pages present', unit: 'ms', digits: 0 },
  { key: 'lazyPagesExitMs', label: 'lazy-pages exit', unit: 'ms', digits: 0 },
  { key: 'stallMaxMs', label: 'stall after resume: max hb gap', unit: 'ms', digits: 1 },
  { key: 'stallP99Ms', label: 'stall after resume: p99 hb gap', unit: 'ms', digits: 1 },
  { key: 'faultP50Us', label: 'fault service time p50', unit: 'µs', digits: 0 },
  { key: 'faultP99Us', label: 'fault service time p99', unit: 'µs', digits: 0 },
  { key: 'faultMaxUs', label: 'fault service time max', unit: 'µs', digits: 0 },
  { key: 'faults', label: 'faults (daemon count)', unit: 'count', digits: 0 },
  { key: 'requests', label: 'page-server requests (GETs)', unit: 'count', digits: 0 },
  { key: 'pagesServed', label: 'pages served', unit: 'pages', digits: 0 },
  { key: 'rateMiBs', label: 'rate (lazy pages / all present)', unit: 'MiB/s', digits: 1, lowerIsBetter: false },
  { key: 'daemonCpuMs', label: 'daemon CPU (user+sys)', unit: 'ms', digits: 0 },
  { key: 'dumpMs', label: 'dump (control)', unit: 'ms', digits: 0 },
];

function finite(v: number | undefined | null): number | null {
  return v !== undefined && v !== null && Number.isFinite(v) ? v : null;
}

interface Measured {
  result: MigrationResult;
  daemonCpuMs: number | undefined;
  faultUs: { p50: number | null; p99: number | null; max: number | null; n: number; source: string };
  faults: number | null;
  requests: number | null;
  pages: number | null;
  lazydLine?: string;
  lazydLatencyLine?: string;
}

async function measure(criuVersion: CriuVersion, daemon: DaemonKind, mib: number, order: PageOrder, seed: number, ctx: BenchContext): Promise<Measured> {
  let watch: DaemonWatch | undefined;
  let daemonCpuMs: number | undefined;
  let faultUs: Measured['faultUs'] = { p50: null, p99: null, max: null, n: 0, source: 'n/a' };
  let faults: number | null = null;
  let requests: number | null = null;
  let pages: number | null = null;
  let lazydLatencyLine: string | undefined;
  try {
    const result = await runLazyMigration({
      criuVersion,
      server: 'lazyd',
      daemon,
      workload: { mib, order, seed, intervalMs: INTERVAL_MS },
      keep: ctx.keep,
      timeouts: { allPagesMs: BOUND_MS, dumpMs: 120_000 },
      progress: ctx.verbose ? (message) => ctx.log(`    ${message}`) : undefined,
      beforeRestore: () => {
        watch = watchDaemonCpu();
      },
      onRestored: (restored) => {
        daemonCpuMs = watch?.stop();
        const log = path.join(restored.dstDir, 'lazy-pages.log');
        if (daemon === 'criu') {
          const us = criuFaultServiceUs(log);
          faultUs = { p50: finite(median(us)), p99: finite(p99(us)), max: finite(max(us)), n: us.length, source: 'criu -v4 log #PF→uffd_copy' };
          faults = readLazyPagesRequests(log).faults;
        } else {
          const lat = readLazydLatency(log);
          lazydLatencyLine = lat?.line;
          if (lat) faultUs = { p50: lat.p50Us, p99: lat.p99Us, max: lat.maxUs, n: lat.faults, source: 'lazyd summary line (bucket bounds within 1.6 %, max exact)' };
          faults = restored.lazydTotals?.faults ?? lat?.faults ?? null;
        }
      },
      afterFinish: (server) => {
        const s = readServedSessions(server.logFile);
        requests = s?.gets ?? null;
        pages = s?.pages ?? null;
      },
    });
    return { result, daemonCpuMs, faultUs, faults, requests, pages, lazydLine: result.lazydTotals?.line, lazydLatencyLine };
  } finally {
    watch?.stop();
  }
}

function figuresOf(m: Measured): FigureValues {
  const r = m.result;
  const split = m.lazydLine?.match(/on demand (\d+) \/ near faults (\d+) \/ background (\d+)/);
  return {
    figures: {
      boundHit: 0,
      restoreMs: r.restoreMs,
      pagesInstalledMs: r.pagesInstalledMs,
      lazyPagesExitMs: r.allPagesMs,
      stallMaxMs: r.heartbeat.maxGapMs,
      stallP99Ms: r.heartbeat.p99GapMs,
      faultP50Us: m.faultUs.p50,
      faultP99Us: m.faultUs.p99,
      faultMaxUs: m.faultUs.max,
      faults: m.faults,
      requests: m.requests,
      pagesServed: m.pages,
      rateMiBs: r.pagesInstalledMs > 0 ? (r.lazyPages.copied * 4096) / 1048576 / (r.pagesInstalledMs / 1000) : null,
      daemonCpuMs: finite(m.daemonCpuMs),
      dumpMs: r.dumpMs,
    },
    details: {
      mib: r.mib,
      dataPages: r.dataPages,
      lazyPagesInImages: r.lazyPagesInImages,
      lazyPagesInstalled: r.lazyPages.copied,
      downtimeMs: r.resumeGapMs,
      passesWhileLazy: r.passesWhileLazy,
      heartbeats: r.heartbeat.beats,
      stallP50Ms: r.heartbeat.p50GapMs,
      faultServiceSource: m.faultUs.source,
      faultServiceSamples: m.faultUs.n,
      lazydTotals: m.lazydLine,
      lazydLatency: m.lazydLatencyLine,
      lazydSplit: split ? { onDemand: Number(split[1]), nearFaults: Number(split[2]), background: Number(split[3]) } : undefined,
      sum: r.sums[0],
    },
  };
}

/** A run whose daemon did not finish within the bound: its time figures are the bound (a lower bound). */
function boundFigures(error: string): FigureValues {
  const kept = error.match(/\(files kept in (\/tmp\/lazyd-e2e-[^)\s]+)\)/)?.[1];
  if (kept && !process.argv.includes('--keep')) fs.rmSync(kept, { recursive: true, force: true });
  const figures: Record<string, number | null> = Object.fromEntries(FIGURES.map((f) => [f.key, null]));
  figures.boundHit = 1;
  figures.pagesInstalledMs = BOUND_MS;
  figures.lazyPagesExitMs = BOUND_MS;
  return { figures, details: { boundHit: true, error: error.split('\n').slice(0, 3).join(' | ') } };
}

function oneLine(v: FigureValues): string {
  const f = v.figures;
  if (f.boundHit) return `> ${BOUND_MS / 1000} s (bound hit)`;
  const n = (x: number | null, d = 0) => (x === null ? '–' : x.toFixed(d));
  return (
    `resume ${n(f.restoreMs)} ms, all present ${n(f.pagesInstalledMs)} ms, exit ${n(f.lazyPagesExitMs)} ms, ` +
    `stall max ${n(f.stallMaxMs, 1)} ms p99 ${n(f.stallP99Ms, 1)} ms, fault p50/p99/max ${n(f.faultP50Us)}/${n(f.faultP99Us)}/${n(f.faultMaxUs)} µs, ` +
    `${n(f.faults)} faults, ${n(f.requests)} GETs, daemon CPU ${n(f.daemonCpuMs)} ms`
  );
}

interface Plan {
  mib: number;
  criuVersion: CriuVersion;
  pairs: number;
}

/** 512 MiB on every CRIU version asked for; 2 GiB on the newest one only, at most 2 pairs. --quick: 64 MiB. */
function plans(ctx: BenchContext): Plan[] {
  if (ctx.quick) return ctx.criuVersions.map((criuVersion) => ({ mib: 64, criuVersion, pairs: ctx.pairs }));
  const sizes = (process.env.LAZYD_BENCH_SIZES ?? '512,2048').split(',').map(Number);
  const newest = [...ctx.criuVersions].sort().at(-1)!;
  return sizes.flatMap((mib) =>
    mib >= 2048 ? [{ mib, criuVersion: newest, pairs: Math.min(ctx.pairs, 2) }] : ctx.criuVersions.map((criuVersion) => ({ mib, criuVersion, pairs: ctx.pairs })),
  );
}

export const lazyPagesBenchmark: Benchmark = {
  name: 'lazy-pages',
  description: 'criu lazy-pages vs lazyd lazy-pages as the destination daemon, same lazy migration (lazyd page server, serve mode)',
  optIn: true, // loopback, one daemon swapped; the migration benchmark covers every pairing between two hosts
  estimate(ctx) {
    const p = plans(ctx);
    const runs = p.reduce((n, x) => n + x.pairs * ORDERS.length * DAEMONS.length, 0);
    return `${runs} migrations (${p.map((x) => `${x.mib} MiB/${x.criuVersion}×${x.pairs} pairs`).join(', ')}), each bounded at ${BOUND_MS / 1000} s`;
  },
  async run(ctx) {
    checkHost(ctx.criuVersions);
    const comparisons: Comparison[] = [];
    for (const plan of plans(ctx)) {
      for (const order of ORDERS) comparisons.push(await compare(ctx, plan, order));
    }
    return {
      name: 'lazy-pages',
      description: lazyPagesBenchmark.description,
      comparisons,
      notes: [
        'Source: lazyd page server (serve mode) for both daemons; the client under test is the destination lazy-pages daemon.',
        'Times are from the start of `criu restore --lazy-pages -d`.',
        `Each run is bounded at ${BOUND_MS / 1000} s (restore start → daemon exit); a run over it counts with the bound as its ` +
          `"all pages present" and "exit" figures (a lower bound: the median then reads "≥"), its other figures are not measured.`,
        'Fault service time: criu — from its -v4 log, "#PF at X" to the "uffd_copy" covering X (µs stamps; the logging itself is ' +
          'in the path); lazyd — its summary line, PAGEFAULT read → page installed: p50 and p99 as upper bounds of buckets within 1.6 % of the value, the max exact.',
        'Daemon CPU: utime+stime of the daemon process from /proc/<pid>/stat every 20 ms (USER_HZ resolution); for lazyd it includes starting node.',
        'Ratios: lazyd/criu of the medians, and the range of the per-pair ratio (the two runs of a pair ran back to back).',
      ],
    } satisfies BenchResult;
  },
};

async function compare(ctx: BenchContext, plan: Plan, order: PageOrder): Promise<Comparison> {
  const { mib, criuVersion, pairs } = plan;
  const title = `CRIU ${criuVersion}, ${mib} MiB, ${ORDER_NAME[order]} touch`;
  ctx.log(`== ${title}: ${pairs} pairs, ${DAEMONS.join(' / ')} alternating`);
  const seed = 1000 + mib;
  const outcomes = await runAlternating<FigureValues, DaemonKind>({
    configs: DAEMONS,
    rounds: pairs,
    log: ctx.log,
    describe: oneLine,
    run: async (daemon) => {
      const started = performance.now();
      try {
        return figuresOf(await measure(criuVersion, daemon, mib, order, seed, ctx));
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        // Over the bound: recorded as "> bound", not retried, not a failure.
        if (performance.now() - started >= BOUND_MS) return boundFigures(message);
        throw error;
      }
    },
  });
  const over = outcomes.filter((o) => o.value?.figures.boundHit).map((o) => o.config);
  const overNote = DAEMONS.map((d) => [d, over.filter((c) => c === d).length] as const)
    .filter(([, n]) => n > 0)
    .map(([d, n]) => `${d} ${n}/${pairs} runs > ${BOUND_MS / 1000} s`);
  return makeComparison({
    title: overNote.length ? `${title} (${overNote.join(', ')})` : title,
    params: { criuVersion, mib, order, seed, intervalMs: INTERVAL_MS, pairs, daemons: DAEMONS, source: 'lazyd', boundMs: BOUND_MS },
    configs: DAEMONS,
    figures: FIGURES,
    runs: toRunRecords(outcomes),
  });
}

