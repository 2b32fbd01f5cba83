// Benchmark "migration": whole lazy migrations between two hosts on one machine (test/harness/netns.ts: two network
// namespaces joined by a veth with a delay of 0, 0.5 or 5 ms RTT), stock CRIU against lazyd, alternating.
//
// Configurations are <source>+<destination>:
//   source       criu-dump      `criu dump --lazy-pages --port`: the frozen tasks serve their own memory
//                criu           `criu page-server --lazy-pages` on a plain dump
//                lazyd          `lazyd --page-server` on a plain dump (serve mode)
//                lazyd-staging  `lazyd --page-server` started first; `criu dump --page-server` uploads the pages
//                               into its memory (the tasks are then gone), and it serves them lazily
//                lazyd-relay    `lazyd --page-server` started first; `criu dump --lazy-pages --address 127.0.0.1`
//                               on the source, `lazyd staging relay` pulls its lazy pages into lazyd's memory (the
//                               dump then ends, the tasks are gone), and lazyd serves them lazily meanwhile and after
//   destination  criu           `criu lazy-pages`        lazyd   `lazyd lazy-pages`
// The workload, criu dump and the page server run in the source namespace; the daemon and criu restore in the
// destination one. The headline compares criu-dump+criu (stock CRIU), lazyd-staging+lazyd and lazyd-relay+lazyd.
//
// Workloads (test/workload/workload.c; pid-namespaced, heartbeat every 5 ms, verifying what it reads against its
// pattern; after all pages are present every page is checked once more with do-verify-all):
//   idle    reads nothing after the restore (--hot-pct 0)   seq     reads every page in order, back to back
//   random  every page, a fresh random order per pass       hot     a fixed scattered 10% of the pages, at random
//   multi   4 processes (--children 3) of size/4 each, in order
//
// Slices of the full mode (LAZYD_BENCH_SLICES=A,B,C,D picks some, LAZYD_BENCH_WORKLOADS=seq,hot,
// LAZYD_BENCH_RTTS=0.5, LAZYD_BENCH_SIZES=512 (MiB) and LAZYD_BENCH_CONFIGS=lazyd-relay+lazyd narrow them;
// LAZYD_BENCH_BOUND_S is the bound, default 60 s):
// run in the order A, D, C, B (most telling first); each finished comparison is also kept in
// bench/results/migration-partial-<pid>.json until the benchmark ends.
//   A  headline three, CRIU 4.2.1, 512 MiB, every workload × RTT 0 / 0.5 / 5 ms
//   B  headline three, CRIU 4.1.1, 512 MiB, every workload at 0.5 ms
//   C  headline three, CRIU 4.2.1, 64 MiB and 2 GiB, seq and hot at 0.5 ms
//   D  all 10 source × destination pairings, CRIU 4.2.1, 512 MiB, seq and random at 0.5 ms, alternated together
//   R  relay staging's matrix (issue 11): headline three, seq, 64 MiB / 512 MiB / 2 GiB × RTT 0 / 0.5 / 5 ms with
//      CRIU 4.2.1, and 512 MiB × the three RTTs with CRIU 4.1.1 (not in the default slices)
//   E  the bars of ISSUE 12 (docs/benchmarks.md): headline three, CRIU 4.2.1, 512 MiB hot, random and idle at
//      0 / 0.5 / 5 ms (fault service p50/p99/max while the drain runs; the idle drain against the TCP limit),
//      and 2 GiB idle at 0 ms (all present against the TCP and UFFDIO_COPY limits); not in the default run
// --quick: the headline three, 64 MiB, seq and hot, at 0 and 5 ms, one round.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  checkHost,
  instanceDirs,
  nowNs,
  readLog,
  readTouches,
  runLazyMigration,
  touchControl,
  wakeWorkload,
  type CriuVersion,
  type DaemonKind,
  type MigrationResult,
  type SlowRead,
  type SourceKind,
  type WorkloadOptions,
} from '../test/harness/index.js';
import { createTwoHosts, type TwoHosts } from '../test/harness/netns.js';
import { NETNS_CPUS } from '../test/harness/process.js';
import { repoRoot } from '../src/paths.js';
import { runAlternating } from './lib/alternate.js';
import { sampleMachineCpu } from './lib/cpu.js';
import { clockTicks } from './lib/host.js';
import { criuFaultServiceUs, readLazydLatency } from './lib/daemon.js';
import { readLazyPagesRequests } from './lib/migration.js';
import { readServedSessions } from '../test/harness/session-log.js';
import { makeComparison, markdownTable, toRunRecords, type BenchResult, type Comparison, type FigureDef, type FigureValues } from './lib/report.js';
import { max, median, p99 } from './lib/stats.js';
import { barChartSvg } from './lib/svg.js';
import { limitsMarkdown, measureLimits, type Limits } from './limits.js';
import type { BenchContext, Benchmark } from './lib/types.js';

const BOUND_MS = Number(process.env.LAZYD_BENCH_BOUND_S ?? 60) * 1000;
// LAZYD_BENCH_LAZYD_ARGS='--drain-inflight-bytes 1048576': extra flags for every `lazyd lazy-pages` (experiments).
const DEST_DAEMON_ARGS = process.env.LAZYD_BENCH_LAZYD_ARGS?.split(' ').filter(Boolean);
// LAZYD_BENCH_RELAY_ARGS='--relay-inflight-bytes 4194304': extra flags for every `lazyd staging relay` (experiments).
const RELAY_ARGS = process.env.LAZYD_BENCH_RELAY_ARGS?.split(' ').filter(Boolean);

type Source = Extract<SourceKind, 'criu-dump' | 'criu' | 'lazyd' | 'lazyd-staging' | 'lazyd-relay'>;
const SOURCES: Source[] = ['criu-dump', 'criu', 'lazyd', 'lazyd-staging', 'lazyd-relay'];
const DESTS: DaemonKind[] = ['criu', 'lazyd'];
const STOCK = 'criu-dump+criu';
const LAZYD = 'lazyd-staging+lazyd';
const RELAY = 'lazyd-relay+lazyd';
/** What the headline compares, alternated in one run: stock CRIU, lazyd's staging flow, lazyd's relay flow. */
const HEADLINE = [STOCK, LAZYD, RELAY];

type WorkloadName = 'idle' | 'seq' | 'random' | 'hot' | 'multi';
const WORKLOADS: WorkloadName[] = ['idle', 'seq', 'random', 'hot', 'multi'];

function workloadOptions(name: WorkloadName, mib: number, seed: number): WorkloadOptions {
  switch (name) {
    case 'idle':
      return { mib, order: 'seq', seed, hotPct: 0, intervalMs: 20 };
    case 'seq':
      return { mib, order: 'seq', seed, intervalMs: 0 };
    case 'random':
      return { mib, order: 'random', seed, intervalMs: 0 };
    case 'hot':
      return { mib, order: 'random', seed, hotPct: 10, intervalMs: 0 };
    case 'multi':
      return { mib: Math.max(1, Math.floor(mib / 4)), order: 'seq', seed, children: 3, intervalMs: 0 };
  }
}

export const FIGURES: FigureDef[] = [
  { key: 'boundHit', label: `over the ${BOUND_MS / 1000} s bound`, unit: 'runs', digits: 0 },
  { key: 'dumpMs', label: 'dump (tasks frozen, images written / upload done / lazy dump serving)', unit: 'ms', digits: 0 },
  { key: 'sourceFrozenMs', label: 'source tasks frozen (dump start → dump exit)', unit: 'ms', digits: 0 },
  { key: 'daemonStartMs', label: 'destination daemon start (inside the downtime unless pre-started: lazyd-relay+lazyd)', unit: 'ms', digits: 0 },
  { key: 'restoreMs', label: 'restore to running (criu restore)', unit: 'ms', digits: 0 },
  { key: 'downtimeMs', label: 'downtime (last heartbeat before dump → first after restore)', unit: 'ms', digits: 0 },
  { key: 'pagesInstalledMs', label: 'all pages present (from restore start)', unit: 'ms', digits: 0 },
  { key: 'pagesAtBound', label: 'pages present at the bound (bounded runs)', unit: 'pages', digits: 0 },
  { key: 'stallMaxMs', label: 'workload stall: max heartbeat gap', unit: 'ms', digits: 1 },
  { key: 'stallP99Ms', label: 'workload stall: p99 heartbeat gap', unit: 'ms', digits: 1 },
  { key: 'touchP50Us', label: 'page first-read latency when slow (fault) p50, workload-measured', unit: 'µs', digits: 0 },
  { key: 'touchP99Us', label: 'page first-read latency when slow (fault) p99, workload-measured', unit: 'µs', digits: 0 },
  { key: 'touchMaxUs', label: 'page first-read latency when slow (fault) max, workload-measured', unit: 'µs', digits: 0 },
  { key: 'touchSlow', label: 'slow first reads (> 2 µs) while pages arrived', unit: 'count', digits: 0 },
  { key: 'faultP50Us', label: 'fault service p50, daemon-reported', unit: 'µs', digits: 0 },
  { key: 'faultP99Us', label: 'fault service p99, daemon-reported', unit: 'µs', digits: 0 },
  { key: 'faultMaxUs', label: 'fault service max, daemon-reported', unit: 'µs', digits: 0 },
  { key: 'faults', label: 'faults the daemon served', unit: 'count', digits: 0 },
  { key: 'requests', label: 'page requests (GETs)', unit: 'count', digits: 0 },
  { key: 'wireMiB', label: 'bytes on the wire (veth, both ways)', unit: 'MiB', digits: 1 },
  { key: 'imagesMiB', label: 'images copied to the destination', unit: 'MiB', digits: 1 },
  { key: 'rateMiBs', label: 'lazy pages / all-present time', unit: 'MiB/s', digits: 0, lowerIsBetter: false },
  { key: 'tcpFraction', label: 'that rate / TCP limit at this RTT', unit: 'fraction', digits: 2, lowerIsBetter: false },
  { key: 'limitTimeRatio', label: 'all present / the time the TCP and bulk UFFDIO_COPY limits allow (the slower of the two)', unit: 'ratio', digits: 2 },
  { key: 'installMBs', label: 'the destination\'s UFFDIO_COPY rate: bytes placed / time inside it (lazyd only)', unit: 'MB/s', digits: 0, lowerIsBetter: false },
  { key: 'machineBusyPct', label: 'all CPUs busy from restore start to all present (user+system+irq, both hosts)', unit: '%', digits: 0 },
  { key: 'machineStealPct', label: 'CPU time stolen by the hypervisor in that window', unit: '%', digits: 1 },
  { key: 'drainMiBs', label: 'the drain: lazy pages / (all present - restore to running)', unit: 'MiB/s', digits: 0, lowerIsBetter: false },
  { key: 'drainTcpFraction', label: 'the drain / TCP limit at this RTT', unit: 'fraction', digits: 2, lowerIsBetter: false },
  { key: 'drainInstallFraction', label: 'the drain / one TCP stream received and installed by one thread at this RTT (limits: TCP + install)', unit: 'fraction', digits: 2, lowerIsBetter: false },
  { key: 'srcCpuMs', label: 'source daemon CPU (user+sys)', unit: 'ms', digits: 0 },
  { key: 'dstCpuMs', label: 'destination daemon CPU (user+sys)', unit: 'ms', digits: 0 },
  { key: 'srcPeakMiB', label: 'source daemon peak RSS', unit: 'MiB', digits: 0 },
  { key: 'dstPeakMiB', label: 'destination daemon peak RSS', unit: 'MiB', digits: 0 },
  { key: 'sourceHeldMiB', label: 'source memory held for the restore', unit: 'MiB', digits: 0 },
];

// ---------------------------------------------------------------- per-process sampling

/** CPU ms and peak RSS (VmHWM) of one process, sampled from /proc until stop(); the last sample counts. */
class ProcWatch {
  cpuMs: number | undefined;
  peakKiB: number | undefined;
  private timer: NodeJS.Timeout;
  constructor(
    public pid: number,
    intervalMs = 20,
  ) {
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.timer.unref();
  }
  sample(): void {
    try {
      const stat = fs.readFileSync(`/proc/${this.pid}/stat`, 'utf8');
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (rest[0] === 'Z' || rest[0] === 'X') return;
      const f = (n: number) => Number(rest[n - 3]);
      this.cpuMs = ((f(14) + f(15) + f(16) + f(17)) * 1000) / clockTicks();
      const hwm = fs.readFileSync(`/proc/${this.pid}/status`, 'utf8').match(/^VmHWM:\s+(\d+) kB/m);
      if (hwm) this.peakKiB = Number(hwm[1]);
    } catch {
      // gone
    }
  }
  stop(): void {
    this.sample();
    clearInterval(this.timer);
  }
}

/** The direct child of this process whose argv has "lazy-pages" (the destination daemon), polled until stop(). */
function watchDestinationDaemon(): { get: () => ProcWatch | undefined; stop: () => void } {
  let watch: ProcWatch | undefined;
  const find = () => {
    if (watch) return;
    try {
      for (const tid of fs.readdirSync(`/proc/${process.pid}/task`)) {
        for (const pid of fs.readFileSync(`/proc/${process.pid}/task/${tid}/children`, 'utf8').split(/\s+/).filter(Boolean)) {
          const argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0');
          // nsenter execs the daemon under the same pid: wait for the exec (argv[0] no longer nsenter).
          if (argv.includes('lazy-pages') && !/(nsenter|taskset)$/.test(argv[0])) watch = new ProcWatch(Number(pid));
        }
      }
    } catch {
      // raced with an exit
    }
  };
  const timer = setInterval(find, 5);
  timer.unref();
  return {
    get: () => watch,
    stop: () => {
      clearInterval(timer);
      watch?.stop();
    },
  };
}

// ---------------------------------------------------------------- one migration

interface Cell {
  criuVersion: CriuVersion;
  mib: number;
  workload: WorkloadName;
  rttMs: number;
}

function finite(v: number | null | undefined): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

/** Every page checked once more after all are present: do-verify-all in every instance, bad 0, all pages. */
async function verifyAllPages(result: { restoredPid: number }, workloadDir: string, children: number, pagesEach: number): Promise<void> {
  const dirs = instanceDirs(workloadDir, children);
  const offsets = dirs.map((d) => readLog(d).offset);
  for (const d of dirs) touchControl(d, 'do-verify-all');
  wakeWorkload(result.restoredPid);
  const deadline = performance.now() + 60_000;
  for (;;) {
    const lines = dirs.map((d, i) => readLog(d, offsets[i]).verifyAll.at(-1));
    if (lines.every(Boolean)) {
      for (const [i, line] of lines.entries()) {
        if (line!.bad !== 0 || line!.ok !== pagesEach) throw new Error(`${dirs[i]}: verify-all found ${line!.bad} bad pages, ${line!.ok}/${pagesEach} ok`);
      }
      return;
    }
    if (performance.now() > deadline) throw new Error(`no verify-all line in ${dirs.join(', ')} within 60 s`);
    await sleep(20);
  }
}

/**
 * The workload's slow first reads (its "touch" histograms) in the passes that began after the restore started
 * and before every page was present: what the faults cost as the restored process saw them (bucket upper bounds).
 */
function touchLatency(
  dirs: string[],
  logOffsets: number[],
  restoreStartNs: bigint,
  allPagesNs: bigint,
): { p50: number | null; p99: number | null; max: number | null; slow: number } {
  const counts = new Map<number, number>();
  dirs.forEach((dir, i) => {
    const passes = new Set(readLog(dir, logOffsets[i] ?? 0).passes.filter((p) => p.start < allPagesNs).map((p) => p.pass));
    const slow: SlowRead[] = [];
    for (const line of readTouches(dir, slow)) {
      if (!passes.has(line.pass)) continue;
      for (const [us, n] of line.buckets) counts.set(us, (counts.get(us) ?? 0) + n);
    }
    // A read the checkpoint froze midway (it began before the restore) measured the downtime, not a fault.
    for (const read of slow) {
      if (read.endNs < restoreStartNs || read.endNs - BigInt(read.ns) >= restoreStartNs) continue;
      const us = read.ns / 1000;
      const bucket = [...counts.keys()].sort((a, b) => a - b).find((b) => b >= us) ?? Math.max(...counts.keys());
      if (counts.get(bucket)) counts.set(bucket, counts.get(bucket)! - 1);
    }
  });
  const buckets = [...counts.entries()].sort((a, b) => a[0] - b[0]);
  const total = buckets.reduce((a, [, n]) => a + n, 0);
  if (!total) return { p50: null, p99: null, max: null, slow: 0 };
  const q = (f: number) => {
    const rank = Math.ceil(f * total);
    let seen = 0;
    for (const [us, n] of buckets) {
      seen += n;
      if (seen >= rank) return us;
    }
    return buckets.at(-1)![0];
  };
  return { p50: q(0.5), p99: q(0.99), max: buckets.at(-1)![0], slow: total };
}

function stagedBytes(logFile: string): number | null {
  let text = '';
  try {
    text = fs.readFileSync(logFile, 'utf8');
  } catch {
    return null;
  }
  let bytes: number | null = null;
  for (const line of text.split('\n')) {
    if (!/Staged checkpoint/.test(line)) continue;
    // lazyd's serve-mode log is pino JSON; its -o text form (criu-style) writes key=value.
    const m = line.match(/(?:"bytes":|\bbytes=)(\d+)/);
    if (m) bytes = Number(m[1]);
  }
  return bytes;
}

/** `--link stock` among the destination daemon's extra arguments (LAZYD_BENCH_LAZYD_ARGS): CRIU's bytes on purpose. */
function asksStockLink(args: readonly string[] | undefined): boolean {
  return !!args?.some((a, i) => a === '--link=stock' || (a === '--link' && args[i + 1] === 'stock'));
}

async function migrate(ctx: BenchContext, hosts: TwoHosts, cell: Cell, config: string, limits: Limits): Promise<FigureValues> {
  const [source, dest] = config.split('+') as [Source, DaemonKind];
  const wl = workloadOptions(cell.workload, cell.mib, 1000 + cell.mib);
  const instances = (wl.children ?? 0) + 1;
  let srcWatch: ProcWatch | undefined;
  let srcLog: string | undefined;
  const dst = watchDestinationDaemon();
  let fault: { p50: number | null; p99: number | null; max: number | null; n: number } = { p50: null, p99: null, max: null, n: 0 };
  let faults: number | null = null;
  let requests: number | null = null;
  let verified = false;
  let staged: number | null = null;
  let relayHeld: number | null = null;
  let touch: { p50: number | null; p99: number | null; max: number | null; slow: number } = { p50: null, p99: null, max: null, slow: 0 };
  const wireBefore = hosts.wireBytes();
  // Both "hosts" share this machine's CPUs: how busy they all were while the pages moved says whether a flow was
  // short of CPU (a relay's pull from the dump runs inside that window, staging's upload before it).
  const machine = sampleMachineCpu(nowNs);
  let restoreStartNs: bigint | undefined;
  let result: MigrationResult;
  try {
    result = await runLazyMigration({
      criuVersion: cell.criuVersion,
      server: source,
      daemon: dest,
      // The recommended relay flow starts the destination daemon first (it reads the images at hand-over), so its
      // start-up is outside the downtime. criu lazy-pages reads the images at start: it cannot be pre-started.
      preStartDaemon: source === 'lazyd-relay' && dest === 'lazyd',
      daemonArgs: dest === 'lazyd' ? DEST_DAEMON_ARGS : undefined,
      relayArgs: source === 'lazyd-relay' ? RELAY_ARGS : undefined,
      workload: wl,
      keep: ctx.keep,
      network: { source: hosts.source, destination: hosts.destination, sourceAddress: hosts.sourceAddress },
      timeouts: { allPagesMs: BOUND_MS, dumpMs: 180_000, passesMs: 120_000, restoreMs: 120_000 },
      progress: ctx.verbose ? (m) => ctx.log(`    ${m}`) : undefined,
      onSource: ({ pid, logFile }) => {
        srcWatch = new ProcWatch(pid);
        srcLog = logFile;
      },
      onRestored: async (restored, checkpoint) => {
        restoreStartNs = restored.restoreStartNs;
        srcWatch?.stop();
        dst.stop();
        // criu dump marks no page lazy when a thread's stack pointer is page-aligned (its is_stack() quirk, about
        // once in 256 dumps per thread: test/harness/migration.ts). A relayed dump then restores eagerly, which is
        // right, but is not a lazy migration: its figures would be another flow's.
        if (restored.lazyPages.total === 0) {
          throw new Error(`${config}: criu dump marked no page lazy (a page-aligned stack pointer, criu's is_stack() quirk): not a lazy migration, not counted`);
        }
        // Read while the run dir exists (it is removed once the migration succeeds).
        if (source === 'lazyd-staging' && srcLog) staged = stagedBytes(srcLog);
        if (source === 'lazyd-relay') relayHeld = null; // read from the relay's line once the migration returns
        const log = path.join(restored.dstDir, 'lazy-pages.log');
        if (dest === 'criu') {
          const us = criuFaultServiceUs(log);
          fault = { p50: finite(median(us)), p99: finite(p99(us)), max: finite(max(us)), n: us.length };
          const r = readLazyPagesRequests(log);
          faults = r.faults;
          requests = r.requests;
        } else {
          // lazyd from a lazyd source must run the lazyd link (priority connection, checksums): a run that fell
          // back to CRIU's bytes (lazyd-link.json missing from the images) would be a different pair's figures.
          const wantLink = (source === 'lazyd-staging' || source === 'lazyd-relay') && !asksStockLink(DEST_DAEMON_ARGS);
          if (wantLink && !/Loaded .*, lazyd link\)/.test(fs.readFileSync(log, 'utf8'))) {
            throw new Error(`${config}: the destination's lazyd lazy-pages did not use the lazyd link (no lazyd-link.json with the images: ${log})`);
          }
          const lat = readLazydLatency(log);
          if (lat) fault = { p50: lat.p50Us, p99: lat.p99Us, max: lat.maxUs, n: lat.faults };
          faults = restored.lazydTotals?.faults ?? lat?.faults ?? null;
        }
        touch = touchLatency(instanceDirs(checkpoint.workloadDir, wl.children ?? 0), restored.logOffsets, restored.restoreStartNs, restored.allPagesNs);
        await verifyAllPages(restored, checkpoint.workloadDir, wl.children ?? 0, wl.mib * 256);
        verified = true;
      },
      afterFinish: (server) => {
        if (dest === 'lazyd' || source === 'lazyd' || source === 'lazyd-staging' || source === 'lazyd-relay') {
          const s = readServedSessions(server.logFile);
          if (s && dest === 'lazyd') requests = s.gets;
        }
      },
    });
  } catch (error) {
    srcWatch?.stop();
    dst.stop();
    machine.stop();
    throw error;
  }
  machine.stop();
  const wireAfter = hosts.wireBytes();
  if (!verified) throw new Error('the restored workload was not verified');
  const r = result;
  const lazyMiB = (r.lazyPages.copied * 4096) / 1048576;
  const rate = r.pagesInstalledMs > 0 ? lazyMiB / (r.pagesInstalledMs / 1000) : NaN;
  // The drain's own rate: no page moves in the background before criu restore has handed the tasks over and
  // finished (RSTF, a moment before it exits), so its time is all present less the restore's.
  const drainMs = r.pagesInstalledMs - r.restoreMs;
  const drainRate = drainMs > 0 ? lazyMiB / (drainMs / 1000) : NaN;
  const tcp = limits.tcp.find((t) => t.where === 'veth' && t.rttMs === cell.rttMs);
  if (source === 'lazyd-relay') relayHeld = r.relay?.bytes ?? null;
  const held =
    source === 'lazyd-staging'
      ? (staged ?? NaN) / 1048576
      : source === 'lazyd-relay'
        ? (relayHeld ?? NaN) / 1048576
        : source === 'criu-dump'
          ? (r.dataPages * 4096) / 1048576
          : NaN;
  const dstW = dst.get();
  const window = restoreStartNs !== undefined ? machine.shares(restoreStartNs, restoreStartNs + BigInt(Math.round(r.pagesInstalledMs * 1e6))) : undefined;
  return {
    figures: {
      boundHit: 0,
      dumpMs: r.dumpMs,
      sourceFrozenMs: r.sourceFrozenMs,
      daemonStartMs: r.daemonStartMs,
      restoreMs: r.restoreMs,
      downtimeMs: finite(r.resumeGapMs),
      pagesInstalledMs: r.pagesInstalledMs,
      pagesAtBound: null,
      stallMaxMs: r.heartbeat.maxGapMs,
      stallP99Ms: r.heartbeat.p99GapMs,
      touchP50Us: touch.p50,
      touchP99Us: touch.p99,
      touchMaxUs: touch.max,
      touchSlow: touch.slow,
      faultP50Us: fault.p50,
      faultP99Us: fault.p99,
      faultMaxUs: fault.max,
      faults,
      requests,
      wireMiB: (wireAfter.sourceTx - wireBefore.sourceTx + wireAfter.sourceRx - wireBefore.sourceRx) / 1048576,
      imagesMiB: r.copiedBytes / 1048576,
      rateMiBs: finite(rate),
      tcpFraction: tcp ? finite((rate * 1048576) / (tcp.MBs * 1e6)) : null,
      // The slower of the two limits bounds a pipeline of transfer and install (issue 12's 2 GiB bar: <= 1.5). The
      // drain installs in bulk, so its limit is the bulk UFFDIO_COPY rate, not the one-fault-at-a-time one.
      limitTimeRatio: tcp && limits.uffdBulk.MBs > 0 ? finite(r.pagesInstalledMs / 1000 / ((lazyMiB * 1048576) / (Math.min(tcp.MBs, limits.uffdBulk.MBs) * 1e6))) : null,
      drainMiBs: finite(drainRate),
      drainTcpFraction: tcp ? finite((drainRate * 1048576) / (tcp.MBs * 1e6)) : null,
      // Neither limit above includes the other's cost: a lazy-pages daemon receives and installs on one thread, so
      // the stream it can take in is this one (measured the same way, with no protocol at all).
      drainInstallFraction: tcp?.installMBs ? finite((drainRate * 1048576) / (tcp.installMBs * 1e6)) : null,
      srcCpuMs: finite(srcWatch?.cpuMs),
      dstCpuMs: finite(dstW?.cpuMs),
      srcPeakMiB: srcWatch?.peakKiB !== undefined ? srcWatch.peakKiB / 1024 : null,
      dstPeakMiB: dstW?.peakKiB !== undefined ? dstW.peakKiB / 1024 : null,
      sourceHeldMiB: finite(held),
      installMBs: r.lazydTotals?.copyMs ? finite((r.lazydTotals.copyBytes ?? NaN) / 1e3 / r.lazydTotals.copyMs) : null,
      machineBusyPct: window ? window.busy * 100 : null,
      machineStealPct: window ? window.steal * 100 : null,
    },
    details: {
      instances,
      dataPages: r.dataPages,
      lazyPagesInImages: r.lazyPagesInImages,
      lazyPagesInstalled: r.lazyPages.copied,
      lazyPagesTotal: r.lazyPages.total,
      passesWhileLazy: r.passesWhileLazy,
      heartbeats: r.heartbeat.beats,
      faultSamples: fault.n,
      allPagesMs: r.allPagesMs,
      copyMs: r.copyMs,
      serverStartMs: r.serverStartMs,
      totalMs: r.totalMs,
      lazydTotals: r.lazydTotals?.line,
      relay: r.relay?.line,
      relayMs: r.relay?.ms,
    },
  };
}

/** A run whose daemon had not finished within the bound: its times are the bound; pages present from the log. */
function boundFigures(error: string, dest: DaemonKind): FigureValues {
  const kept = error.match(/\(files kept in (\/tmp\/lazyd-e2e-[^)\s]+)\)/)?.[1];
  let pages: number | null = null;
  if (kept) {
    const log = path.join(kept, 'dst', 'lazy-pages.log');
    try {
      const text = fs.readFileSync(log, 'latin1');
      if (dest === 'criu') {
        let bytes = 0;
        for (const m of text.matchAll(/uffd_copy: 0x[0-9a-f]+\/(\d+)/g)) bytes += Number(m[1]);
        pages = bytes / 4096;
      }
    } catch {
      // no log
    }
    if (!process.argv.includes('--keep')) fs.rmSync(kept, { recursive: true, force: true });
  }
  const figures: Record<string, number | null> = Object.fromEntries(FIGURES.map((f) => [f.key, null]));
  figures.boundHit = 1;
  figures.pagesInstalledMs = BOUND_MS;
  figures.pagesAtBound = pages;
  return { figures, details: { boundHit: true, error: error.split('\n').slice(0, 3).join(' | ') } };
}

function oneLine(v: FigureValues): string {
  const f = v.figures;
  const n = (x: number | null | undefined, d = 0) => (x === null || x === undefined ? '–' : x.toFixed(d));
  if (f.boundHit) return `> ${BOUND_MS / 1000} s (bound hit; ${n(f.pagesAtBound)} pages present)`;
  return (
    `downtime ${n(f.downtimeMs)} ms, all present ${n(f.pagesInstalledMs)} ms, stall max ${n(f.stallMaxMs, 1)} ms, ` +
    `touch p50/p99 ${n(f.touchP50Us)}/${n(f.touchP99Us)} µs (${n(f.touchSlow)}), daemon ${n(f.faultP50Us)}/${n(f.faultP99Us)} µs, ${n(f.requests)} GETs, wire ${n(f.wireMiB)} MiB, ` +
    `CPU src ${n(f.srcCpuMs)} dst ${n(f.dstCpuMs)} ms`
  );
}

// ---------------------------------------------------------------- the matrix

interface Plan {
  slice: string;
  cell: Cell;
  configs: string[];
  rounds: number;
}

export function plans(ctx: BenchContext): Plan[] {
  const newest = [...ctx.criuVersions].sort().at(-1)!;
  const oldest = [...ctx.criuVersions].sort()[0];
  const headline = HEADLINE;
  if (ctx.quick) {
    return (['seq', 'hot'] as WorkloadName[]).flatMap((workload) =>
      [0, 5].map((rttMs) => ({ slice: 'quick', cell: { criuVersion: newest, mib: 64, workload, rttMs }, configs: headline, rounds: 1 })),
    );
  }
  const slices = (process.env.LAZYD_BENCH_SLICES ?? 'A,D,C,B').split(',').map((s) => s.trim().toUpperCase());
  const out: Plan[] = [];
  const rounds = ctx.pairs;
  for (const slice of slices) {
    if (slice === 'A') {
      for (const workload of WORKLOADS) {
        for (const rttMs of [0, 0.5, 5]) out.push({ slice, cell: { criuVersion: newest, mib: 512, workload, rttMs }, configs: headline, rounds });
      }
    } else if (slice === 'B' && oldest !== newest) {
      for (const workload of WORKLOADS) out.push({ slice, cell: { criuVersion: oldest, mib: 512, workload, rttMs: 0.5 }, configs: headline, rounds });
    } else if (slice === 'C') {
      for (const mib of [64, 2048]) {
        for (const workload of ['seq', 'hot'] as WorkloadName[]) out.push({ slice, cell: { criuVersion: newest, mib, workload, rttMs: 0.5 }, configs: headline, rounds });
      }
    } else if (slice === 'R') {
      const cells = [
        ...[64, 512, 2048].flatMap((mib) => [0, 0.5, 5].map((rttMs) => ({ criuVersion: newest, mib, rttMs }))),
        ...(oldest !== newest ? [0, 0.5, 5].map((rttMs) => ({ criuVersion: oldest, mib: 512, rttMs })) : []),
      ];
      for (const c of cells) out.push({ slice, cell: { ...c, workload: 'seq' }, configs: headline, rounds });
    } else if (slice === 'E') {
      for (const workload of ['hot', 'random', 'idle'] as WorkloadName[]) {
        for (const rttMs of [0, 0.5, 5]) out.push({ slice, cell: { criuVersion: newest, mib: 512, workload, rttMs }, configs: headline, rounds });
      }
      out.push({ slice, cell: { criuVersion: newest, mib: 2048, workload: 'idle', rttMs: 0 }, configs: headline, rounds });
    } else if (slice === 'D') {
      const all = [...HEADLINE, ...SOURCES.flatMap((s) => DESTS.map((d) => `${s}+${d}`)).filter((c) => !HEADLINE.includes(c))];
      for (const workload of ['seq', 'random'] as WorkloadName[]) out.push({ slice, cell: { criuVersion: newest, mib: 512, workload, rttMs: 0.5 }, configs: all, rounds });
    }
  }
  const only = process.env.LAZYD_BENCH_WORKLOADS?.split(',');
  const rtts = process.env.LAZYD_BENCH_RTTS?.split(',').map(Number);
  const sizes = process.env.LAZYD_BENCH_SIZES?.split(',').map(Number);
  const configs = process.env.LAZYD_BENCH_CONFIGS?.split(',');  // e.g. lazyd-relay+lazyd: an A/B of lazyd alone
  return out
    .filter((p) => (!only || only.includes(p.cell.workload)) && (!rtts || rtts.includes(p.cell.rttMs)) && (!sizes || sizes.includes(p.cell.mib)))
    .map((p) => (configs ? { ...p, configs: p.configs.filter((c) => configs.includes(c)) } : p))
    .filter((p) => p.configs.length > 0);
}

function title(plan: Plan): string {
  const c = plan.cell;
  return `${plan.slice}: CRIU ${c.criuVersion}, ${c.mib >= 1024 ? `${c.mib / 1024} GiB` : `${c.mib} MiB`}, ${c.workload}, RTT ${c.rttMs} ms`;
}

// ---------------------------------------------------------------- summary, picture

const HEADLINE_FIGURES: { key: string; label: string }[] = [
  { key: 'downtimeMs', label: 'downtime' },
  { key: 'pagesInstalledMs', label: 'all present' },
  { key: 'stallMaxMs', label: 'max stall' },
  { key: 'touchP99Us', label: 'fault p99 (workload)' },
  { key: 'sourceFrozenMs', label: 'source frozen' },
  { key: 'sourceHeldMiB', label: 'source memory held' },
  { key: 'dstCpuMs', label: 'dest CPU' },
  { key: 'srcCpuMs', label: 'source CPU' },
];

function cellText(c: Comparison, key: string, config: string, digits = 0): string {
  const s = c.summary.find((x) => x.key === key)?.perConfig[config];
  if (!s || !s.n) return '–';
  const bound = c.summary.find((x) => x.key === 'boundHit')?.perConfig[config];
  const prefix = key === 'pagesInstalledMs' && bound && bound.max > 0 ? '>' : '';
  const v = s.median;
  return prefix + (Math.abs(v) >= 10000 ? `${(v / 1000).toFixed(1)}k` : v.toFixed(digits));
}

function ratioText(c: Comparison, key: string, a: string, b: string): string {
  const fa = c.summary.find((x) => x.key === key)?.perConfig[a];
  const fb = c.summary.find((x) => x.key === key)?.perConfig[b];
  if (!fa?.n || !fb?.n || fa.median === 0) return '–';
  const r = fb.median / fa.median;
  const bound = c.summary.find((x) => x.key === 'boundHit')?.perConfig[a];
  return (key === 'pagesInstalledMs' && bound && bound.max > 0 ? '<' : '') + r.toFixed(2);
}

function unitOf(key: string): string {
  return key.endsWith('Us') ? ' µs' : key.endsWith('MiB') ? ' MiB' : ' ms';
}

/**
 * Per case and figure: stock CRIU → lazyd staging → lazyd relay (medians), with each lazyd flow's ratio to stock
 * CRIU (staging ÷ stock, relay ÷ stock). Comparisons from before the relay existed show the pair only.
 */
export function headlineTable(comparisons: Comparison[]): string {
  const rows = comparisons
    .filter((c) => c.configs.includes(STOCK) && c.configs.includes(LAZYD))
    .map((c) => {
      const relay = c.configs.includes(RELAY);
      return [
        c.title.replace(/^\w+: /, ''),
        ...HEADLINE_FIGURES.map((f) => {
          const digits = f.key === 'stallMaxMs' ? 1 : 0;
          const values = [STOCK, LAZYD, ...(relay ? [RELAY] : [])].map((config) => cellText(c, f.key, config, digits)).join(' → ');
          const ratios = [ratioText(c, f.key, STOCK, LAZYD), ...(relay ? [ratioText(c, f.key, STOCK, RELAY)] : [])].join(', ');
          return `${values} (${ratios})`;
        }),
      ];
    });
  return markdownTable(['case', ...HEADLINE_FIGURES.map((f) => `${f.label}${unitOf(f.key)}`)], rows);
}

/** The issue's bar for relay staging, case by case: downtime ≤ 1.0× stock, all present no later than staging. */
export function relayBarTable(comparisons: Comparison[]): string {
  const med = (c: Comparison, key: string, config: string) => c.summary.find((x) => x.key === key)?.perConfig[config];
  const rows = comparisons
    .filter((c) => c.configs.includes(STOCK) && c.configs.includes(LAZYD) && c.configs.includes(RELAY))
    .map((c) => {
      const down = ratioText(c, 'downtimeMs', STOCK, RELAY);
      const frozen = ratioText(c, 'sourceFrozenMs', STOCK, RELAY);
      const present = ratioText(c, 'pagesInstalledMs', LAZYD, RELAY);
      const downOk = (med(c, 'downtimeMs', RELAY)?.median ?? Infinity) <= (med(c, 'downtimeMs', STOCK)?.median ?? -Infinity);
      const presentOk = (med(c, 'pagesInstalledMs', RELAY)?.median ?? Infinity) <= (med(c, 'pagesInstalledMs', LAZYD)?.median ?? -Infinity);
      return [c.title.replace(/^\w+: /, ''), `${down}${downOk ? '' : ' ✗'}`, frozen, `${present}${presentOk ? '' : ' ✗'}`];
    });
  return markdownTable(['case', 'downtime relay ÷ stock (bar ≤ 1.0)', 'source frozen relay ÷ stock (bar ≤ 0.3 at 512 MiB, 0.5 ms)', 'all present relay ÷ staging (bar ≤ 1.0)'], rows);
}

function pairingTable(c: Comparison): string {
  const keys = ['downtimeMs', 'pagesInstalledMs', 'stallMaxMs', 'touchP99Us', 'requests', 'srcCpuMs', 'dstCpuMs', 'srcPeakMiB', 'dstPeakMiB'];
  const rows = c.configs.map((config) => [config, ...keys.map((k) => cellText(c, k, config, k === 'stallMaxMs' ? 1 : 0))]);
  return markdownTable(['source+destination', ...keys.map((k) => FIGURES.find((f) => f.key === k)!.label + ` (${FIGURES.find((f) => f.key === k)!.unit})`)], rows);
}

function svgOf(comparisons: Comparison[], subtitle: string): string {
  const head = comparisons.filter((c) => c.configs.includes(STOCK) && c.configs.includes(LAZYD));
  return barChartSvg({
    title: 'lazyd (relay staging + lazyd lazy-pages) / stock CRIU (dump --lazy-pages + criu lazy-pages), medians',
    subtitle,
    series: HEADLINE_FIGURES.map((f) => f.label),
    groups: head.map((c) => ({
      label: c.title.replace(/^\w+: CRIU /, ''),
      values: HEADLINE_FIGURES.map((f) => {
        const s = c.summary.find((x) => x.key === f.key);
        if (!s) return NaN;
        // The relay flow against stock CRIU (ratioOfMedians is the second config's, staging's).
        const relay = s.perConfig[RELAY];
        const stock = s.perConfig[STOCK];
        return relay?.n && stock?.n ? relay.median / stock.median : s.ratioOfMedians;
      }),
    })),
    min: 0.001,
    max: 100,
  });
}

// ---------------------------------------------------------------- the benchmark

export const migrationBenchmark: Benchmark = {
  name: 'migration',
  description: 'whole lazy migrations between two network namespaces (RTT 0 / 0.5 / 5 ms): stock CRIU vs lazyd, every source × destination',
  estimate(ctx) {
    const p = plans(ctx);
    const runs = p.reduce((n, x) => n + x.rounds * x.configs.length, 0);
    return `${runs} migrations in ${p.length} comparisons, each bounded at ${BOUND_MS / 1000} s${ctx.quick ? ' (~1.5 min)' : ' (~60-75 min)'}`;
  },
  async run(ctx) {
    checkHost(ctx.criuVersions);
    const hosts = createTwoHosts();
    // LAZYD_BENCH_CPUS=0:1 — the source host's commands on CPU 0, the destination's on CPU 1 (as two machines:
    // relay staging's pull on the source then does not take CPU from the restore on the destination).
    const cpus = process.env.LAZYD_BENCH_CPUS?.split(':');
    if (cpus?.length === 2) {
      NETNS_CPUS.set(hosts.source, cpus[0]!);
      NETNS_CPUS.set(hosts.destination, cpus[1]!);
    }
    const started = new Date();
    const partialFile = path.join(repoRoot(), 'bench', 'results', `migration-partial-${process.pid}.json`);
    try {
      const p = plans(ctx);
      const rtts = [...new Set(p.map((x) => x.cell.rttMs))].sort((a, b) => a - b);
      const limits = await measureLimits(ctx, rtts, hosts);
      const comparisons: Comparison[] = [];
      for (const plan of p) {
        await hosts.setRtt(plan.cell.rttMs);
        const name = title(plan);
        ctx.log(`== ${name}: ${plan.rounds} rounds of ${plan.configs.join(' ')}`);
        const outcomes = await runAlternating<FigureValues>({
          configs: plan.configs,
          rounds: plan.rounds,
          log: ctx.log,
          describe: oneLine,
          run: async (config) => {
            const t0 = performance.now();
            try {
              return await migrate(ctx, hosts, plan.cell, config, limits);
            } catch (error) {
              const message = error instanceof Error ? error.message : String(error);
              if (performance.now() - t0 >= BOUND_MS && /did not exit within/.test(message)) return boundFigures(message, config.split('+')[1] as DaemonKind);
              throw error;
            }
          },
        });
        comparisons.push(
          makeComparison({
            title: name,
            params: { ...plan.cell, slice: plan.slice, boundMs: BOUND_MS, delayer: hosts.delayer, workload: workloadOptions(plan.cell.workload, plan.cell.mib, 0) },
            configs: plan.configs,
            figures: FIGURES,
            runs: toRunRecords(outcomes),
          }),
        );
        // Kept as it goes: a run stopped early still leaves its finished comparisons (removed at the end).
        fs.mkdirSync(path.dirname(partialFile), { recursive: true });
        fs.writeFileSync(partialFile, JSON.stringify({ limits, comparisons, headline: headlineTable(comparisons) }, null, 1) + '\n');
      }
      fs.rmSync(partialFile, { force: true });
      const summary = [
        '### Limits of this machine (measured by the suite)',
        '',
        limitsMarkdown(limits),
        '',
        '### Headline: stock CRIU → lazyd staging → lazyd relay, medians (staging ÷ stock, relay ÷ stock)',
        '',
        `stock CRIU = \`criu dump --lazy-pages --port\` + \`criu lazy-pages\`; lazyd staging = \`criu dump --page-server\` into \`lazyd --page-server\` + \`lazyd lazy-pages\`; lazyd relay = \`criu dump --lazy-pages --address 127.0.0.1\` relayed into \`lazyd --page-server\` by \`lazyd staging relay\` + \`lazyd lazy-pages\`. "all present" of a run over the ${BOUND_MS / 1000} s bound counts as the bound (">", the ratio then "<").`,
        '',
        headlineTable(comparisons),
        '',
        '### Relay staging against the bar of issue 11',
        '',
        relayBarTable(comparisons),
        '',
        ...comparisons
          .filter((c) => c.configs.length > 2)
          .flatMap((c) => [`### Every source × destination: ${c.title.replace(/^\w+: /, '')} (medians)`, '', pairingTable(c), '']),
      ].join('\n');
      return {
        name: 'migration',
        description: migrationBenchmark.description,
        comparisons,
        summary,
        svg: svgOf(comparisons, `${started.toISOString().slice(0, 10)}, ${hosts.delayer ?? 'no'} delay, bound ${BOUND_MS / 1000} s; below 1× = lazyd lower (better)`),
        data: { limits, cpus: cpus?.length === 2 ? { source: cpus[0], destination: cpus[1] } : 'any' },
        notes: [
          'Two hosts on one machine: workload, criu dump and the page server in one network namespace, the lazy-pages daemon and criu restore in another, joined by a veth (MTU 64000). The RTT is added half on each side (netem where the kernel has it, else bench/netdelay via NFQUEUE on input); the measured RTT is in the limits table.',
          'Downtime: workload heartbeat gap (5 ms beats) from the last beat before the dump to the first after the restore; it includes the dump, the image copy to the destination directory and starting the daemon.',
          '"source tasks frozen": dump start → dump exit. For criu-dump (criu dump --lazy-pages) the frozen tasks serve their pages until the daemon\'s CLOSE, so this is until all pages have left the source.',
          'Fault cost as the workload sees it: the workload times the first read of every page it verifies and keeps a histogram of those over 2 µs (4 buckets per doubling; values are bucket upper bounds); counted over the passes that began after the restore started and before all pages were present. A few slow reads per pass are preemptions on this shared VM, in every configuration alike.',
          'Fault service time, daemon-reported: criu lazy-pages — from its -v4 log, "#PF at X" to the uffd_copy covering X (µs stamps, the logging is in the path); lazyd lazy-pages — its own summary line (PAGEFAULT read → page installed): p50 and p99 as upper bounds of buckets within 1.6 % of the value, the max exact.',
          'Requests: criu lazy-pages — "Read" lines of its log; lazyd lazy-pages — GETs the lazyd page server counted (lazyd sources), else not measured.',
          'CPU and peak RSS: utime+stime (own threads and reaped children) and VmHWM from /proc every 20 ms; the source daemon is the page server, or the `criu dump` process for criu-dump; lazyd figures include starting node.',
          'Source memory held: criu-dump — the frozen tasks keep all their data pages until CLOSE; lazyd-staging — the bytes lazyd reports staged (memfd, released after the restore completes); lazyd-relay — the lazy pages lazyd pulled (its memfd; the frozen tasks hold theirs only until the pull ends); image-based sources hold the pages on disk (not counted).',
          'lazyd-relay+lazyd starts `lazyd lazy-pages` on the empty destination dir before the dump (the recommended flow: it needs no image to start and reads them once they are copied there), so its start-up is outside the downtime; its "destination daemon start" is that pre-start. criu lazy-pages (criu-dump+criu) reads the images at start and cannot be pre-started: it starts after the copy, inside the downtime, as does lazyd-staging+lazyd.',
          '"source tasks frozen" for lazyd-relay: dump start → dump exit, which follows lazyd\'s CLOSE once it holds every lazy page (the restore need not have fetched anything yet).',
          'After all pages are present, the workload checks every page once more (do-verify-all); a run counts only if it found every page right.',
          'The machine is a 2-vCPU VM shared with other jobs while this ran: absolute times drift, the alternation (A B A B …) keeps ratios fair.',
        ],
      } satisfies BenchResult;
    } finally {
      hosts.destroy();
    }
  },
};
