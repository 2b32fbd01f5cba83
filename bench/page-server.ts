// Benchmark "page-server": the same lazy migration served by criu's own page server
// (`criu page-server --lazy-pages`, kind 'criu') and by lazyd's (`lazyd --page-server`, serve mode, kind
// 'lazyd'). Same workload, same client (`criu lazy-pages --page-server`), same CRIU version on both ends; the
// two run alternately (criu lazyd criu lazyd ...), one comparison per CRIU version × touch order.
//
// Per run, from the harness (test/harness/migration.ts) and bench/lib/migration.ts:
//   dump           `criu dump` of the workload (the same work for both: a control figure)
//   server start   from spawning the server until it signals ready (criu loads every page into pipes first)
//   resume         `criu restore --lazy-pages -d` from its start to its exit: the workload runs again. The
//                  server is already listening: its start is not inside this figure.
//   all present    from the restore's start until lazy-pages logged its last task done (its -v4 log)
//   lazy-pages exit from the restore's start until `criu lazy-pages` exited 0
//   close stall    the difference of the two: the CLOSE handshake at the end of the session
//   downtime       heartbeat gap across dump + server start + image copy + restore
//   stall max/p99  heartbeat gaps of the workload from its first beat after the restore to the end of the
//                  verification (the workload beats every 5 ms; a fault waiting for a page delays it)
//   pages, requests what `criu lazy-pages` asked the server for (its log); fault requests are those right after
//                  a "#PF at" line, the rest are its background fetch
//   round trips    from the daemon's "Read <addr>" log line to its "uffd_copy: <addr>" line: request, server,
//                  reply, per request (µs stamps of the -v4 log). The figure closest to the server alone.
//   rate           lazy pages / all-present time
//   server CPU     user+system ms of the server process, at ready and until it exits (/proc sampling)
import { checkHost, type CriuVersion, type PageOrder, type ServerKind } from '../test/harness/index.js';
import { runAlternating } from './lib/alternate.js';
import { measuredMigration, type MeasuredMigration } from './lib/migration.js';
import { makeComparison, toRunRecords, type BenchResult, type Comparison, type FigureDef, type FigureValues } from './lib/report.js';
import { median, p99, summarize } from './lib/stats.js';
import type { BenchContext, Benchmark } from './lib/types.js';

const SERVERS: ServerKind[] = ['criu', 'lazyd'];
const ORDERS: PageOrder[] = ['seq', 'random'];
const ORDER_NAME: Record<PageOrder, string> = { seq: 'sequential', random: 'random' };
/**
 * The workload verifies its memory back to back (no pause between passes): it touches pages in its order all the
 * time, so the restore never lands in an idle pause (with the default 50 ms pause, a 64 MiB workload would be idle
 * most of the time and the background fetch alone would move its pages).
 */
const INTERVAL_MS = 0;

export const FIGURES: FigureDef[] = [
  { key: 'dumpMs', label: 'dump (control)', unit: 'ms', digits: 0 },
  { key: 'serverStartMs', label: 'server start → ready', unit: 'ms', digits: 0 },
  { key: 'restoreMs', label: 'time to resume (criu restore)', unit: 'ms', digits: 0 },
  { key: 'pagesInstalledMs', label: 'all pages present', unit: 'ms', digits: 0 },
  { key: 'lazyPagesExitMs', label: 'lazy-pages exit', unit: 'ms', digits: 0 },
  { key: 'closeStallMs', label: 'close stall (exit − all present)', unit: 'ms', digits: 0 },
  { key: 'downtimeMs', label: 'downtime (hb gap over dump…restore)', unit: 'ms', digits: 0 },
  { key: 'stallMaxMs', label: 'stall after resume: max hb gap', unit: 'ms', digits: 1 },
  { key: 'stallP99Ms', label: 'stall after resume: p99 hb gap', unit: 'ms', digits: 1 },
  { key: 'pagesServed', label: 'pages served', unit: 'pages', digits: 0 },
  { key: 'requests', label: 'requests (lazy-pages reads)', unit: 'count', digits: 0 },
  { key: 'faults', label: 'of which fault requests', unit: 'count', digits: 0 },
  { key: 'faultRttMedianUs', label: 'fault round trip, median', unit: 'µs', digits: 0 },
  { key: 'faultRttP99Us', label: 'fault round trip, p99', unit: 'µs', digits: 0 },
  { key: 'bgRttMedianUs', label: 'background request round trip, median', unit: 'µs', digits: 0 },
  { key: 'rateMiBs', label: 'rate (lazy pages / all present)', unit: 'MiB/s', digits: 1, lowerIsBetter: false },
  { key: 'serverCpuReadyMs', label: 'server CPU until ready', unit: 'ms', digits: 0 },
  { key: 'serverCpuMs', label: 'server CPU total', unit: 'ms', digits: 0 },
  { key: 'serverCpuPerRequestUs', label: 'server CPU per request (after ready)', unit: 'µs', digits: 1 },
];

function figuresOf(m: MeasuredMigration): FigureValues {
  const r = m.result;
  const finite = (v: number | undefined) => (v !== undefined && Number.isFinite(v) ? v : null);
  const figures: Record<string, number | null> = {
    dumpMs: r.dumpMs,
    serverStartMs: r.serverStartMs,
    restoreMs: r.restoreMs,
    pagesInstalledMs: r.pagesInstalledMs,
    lazyPagesExitMs: r.allPagesMs,
    closeStallMs: r.allPagesMs - r.pagesInstalledMs,
    downtimeMs: finite(r.resumeGapMs),
    stallMaxMs: r.heartbeat.maxGapMs,
    stallP99Ms: r.heartbeat.p99GapMs,
    pagesServed: m.requests.pages,
    requests: m.requests.requests,
    faults: m.requests.faults,
    faultRttMedianUs: finite(median(m.requests.faultRttUs)),
    faultRttP99Us: finite(p99(m.requests.faultRttUs)),
    bgRttMedianUs: finite(median(m.requests.backgroundRttUs)),
    rateMiBs: r.pagesInstalledMs > 0 ? (r.lazyPages.copied * 4096) / 1048576 / (r.pagesInstalledMs / 1000) : null,
    serverCpuReadyMs: finite(m.serverCpuReadyMs),
    serverCpuMs: finite(m.serverCpuMs),
    serverCpuPerRequestUs:
      m.serverCpuMs !== undefined && m.serverCpuReadyMs !== undefined && m.requests.requests > 0
        ? ((m.serverCpuMs - m.serverCpuReadyMs) * 1000) / m.requests.requests
        : null,
  };
  const passes = r.passes.map((p) => p.length).reduce((a, b) => a + b, 0);
  return {
    figures,
    details: {
      mib: r.mib,
      dataPages: r.dataPages,
      lazyPagesInImages: r.lazyPagesInImages,
      lazyPagesInstalled: r.lazyPages.copied,
      lazyPagesExpected: r.lazyPages.total,
      dumpAttempts: r.dumpAttempts,
      copyMs: Math.round(r.copyMs),
      verifyMs: Math.round(r.verifyMs),
      totalMs: Math.round(r.totalMs),
      passesWhileLazy: r.passesWhileLazy,
      passesAfter: passes,
      sum: r.sums[0],
      heartbeats: r.heartbeat.beats,
      stallMaxAtNs: r.heartbeat.maxGapEndNs,
      stallP50Ms: r.heartbeat.p50GapMs,
      requests: { ...m.requests, faultRttUs: summarize(m.requests.faultRttUs), backgroundRttUs: summarize(m.requests.backgroundRttUs) },
      lazydSessions: m.lazydSessions,
      serverPid: m.serverPid,
      serverChildrenAtReady: m.serverChildren,
      cpuSamples: m.cpuSamples,
      serverExit: r.serverExit,
    },
  };
}

function oneLine(v: FigureValues): string {
  const f = v.figures;
  const ms = (x: number | null) => (x === null ? '–' : `${x.toFixed(0)}`);
  return (
    `start ${ms(f.serverStartMs)} ms, resume ${ms(f.restoreMs)} ms, all present ${ms(f.pagesInstalledMs)} ms, ` +
    `exit ${ms(f.lazyPagesExitMs)} ms, stall max ${f.stallMaxMs?.toFixed(1)} ms, ${f.pagesServed} pages in ${f.requests} requests ` +
    `(${f.faults} faults, rtt median ${ms(f.faultRttMedianUs)} µs), ` +
    `server CPU ${ms(f.serverCpuMs)} ms`
  );
}

function sizes(ctx: BenchContext): number[] {
  return ctx.quick ? [64] : [512];
}

export const pageServerBenchmark: Benchmark = {
  name: 'page-server',
  description: 'criu page-server --lazy-pages vs lazyd --page-server, same lazy migration (criu lazy-pages client)',
  optIn: true, // loopback, one daemon swapped; the migration benchmark covers every pairing between two hosts
  estimate(ctx) {
    const runs = ctx.criuVersions.length * ORDERS.length * sizes(ctx).length * ctx.pairs * SERVERS.length;
    return `${runs} migrations of ${sizes(ctx).join(', ')} MiB (${ctx.quick ? '~3 s' : '~5 s sequential, ~50 s random'} each)`;
  },
  async run(ctx) {
    checkHost(ctx.criuVersions);
    const comparisons: Comparison[] = [];
    for (const mib of sizes(ctx)) {
      for (const criuVersion of ctx.criuVersions) {
        for (const order of ORDERS) {
          comparisons.push(await compare(ctx, criuVersion, mib, order));
        }
      }
    }
    const result: BenchResult = {
      name: 'page-server',
      description: pageServerBenchmark.description,
      comparisons,
      notes: [
        'Times are from the start of `criu restore`, so the server start is not in them; "server start" is its own row.',
        '`criu lazy-pages` asks for one page per fault and keeps one background request in flight, so random touch is slow whatever the server.',
        'Ratios: lazyd/criu of the medians, and the range of the ratio within each pair (the runs of one pair ran back to back).',
        'Server CPU: utime+stime of the server process from /proc/<pid>/stat, sampled every 20 ms until it exits (USER_HZ resolution); for lazyd it includes starting node.',
        'The -v4 logs of every criu process are on (the harness sets them): the lazy-pages client logs two lines per request.',
        'Random touch: the total time follows the number of requests, which swings several-fold between runs of either server: ' +
          'random faults cut the remaining lazy ranges into holes, the background fetch then brings ~1 page per request, and the ' +
          "client's cost per request grows as the holes multiply. Whether the background fetch gets ahead in the first second " +
          'decides the run. The round-trip and CPU-per-request rows are the ones that isolate the server there.',
      ],
    };
    return result;
  },
};

async function compare(ctx: BenchContext, criuVersion: CriuVersion, mib: number, order: PageOrder): Promise<Comparison> {
  const title = `CRIU ${criuVersion}, ${mib} MiB, ${ORDER_NAME[order]} touch`;
  ctx.log(`== ${title}: ${ctx.pairs} pairs, ${SERVERS.join(' / ')} alternating`);
  const seed = 1000 + mib;
  const outcomes = await runAlternating<FigureValues, ServerKind>({
    configs: SERVERS,
    rounds: ctx.pairs,
    log: ctx.log,
    describe: oneLine,
    run: async (server) => {
      const measured = await measuredMigration({
        criuVersion,
        server,
        workload: { mib, order, seed, intervalMs: INTERVAL_MS },
        keep: ctx.keep,
        // Random touch under criu lazy-pages is slow (one page per fault): give the transfer time to finish.
        timeouts: { allPagesMs: Math.max(120_000, mib * 600) },
        progress: ctx.verbose ? (message) => ctx.log(`    ${message}`) : undefined,
      });
      return figuresOf(measured);
    },
  });
  return makeComparison({
    title,
    params: { criuVersion, mib, order, seed, intervalMs: INTERVAL_MS, pairs: ctx.pairs, servers: SERVERS },
    configs: SERVERS,
    figures: FIGURES,
    runs: toRunRecords(outcomes),
  });
}
