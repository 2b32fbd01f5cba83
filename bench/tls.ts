// Benchmark "tls": what `--tls` costs on the lazy transfer. The same lazy migration (512 MiB, the workload touching
// its memory sequentially and back to back) plain and with TLS, alternating (plain tls plain tls ...):
//   lazyd    lazyd --page-server (serve mode)        → lazyd lazy-pages
//   criu     criu page-server --lazy-pages            → criu lazy-pages        (reference: CRIU's own TLS cost)
// Both ends present certificates of a CA made for the run (test/harness/pki.ts), with its CRL, and check names.
//
// Figures per run (times from the start of `criu restore --lazy-pages -d`):
//   all pages present   until the daemon logged its last task done
//   lazy-pages exit     until the daemon exited 0
//   fault service       lazyd: its summary line (PAGEFAULT read → page installed; fine bucket upper bounds); criu: its -v4
//                       log, "#PF at X" → "uffd_copy" covering X
//   daemon CPU          utime+stime of the destination daemon (lazyd's includes starting node)
//   server CPU          utime+stime of the page server from just before the restore to its exit (start-up left out)
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { checkHost, makeTestPki, runLazyMigration, tlsArgs, type CriuVersion, type DaemonKind, type ServerKind, type TestPki } from '../test/harness/index.js';
import { runAlternating } from './lib/alternate.js';
import { sampleCpu, type CpuSampler } from './lib/cpu.js';
import { criuFaultServiceUs, readLazydLatency, watchDaemonCpu, type DaemonWatch } from './lib/daemon.js';
import { makeComparison, toRunRecords, type BenchResult, type Comparison, type FigureDef, type FigureValues } from './lib/report.js';
import { median, p99 } from './lib/stats.js';
import type { BenchContext, Benchmark } from './lib/types.js';

type Transport = 'plain' | 'tls';
const TRANSPORTS: Transport[] = ['plain', 'tls'];

interface Pair {
  name: string;
  server: ServerKind;
  daemon: DaemonKind;
}
const PAIRS: Pair[] = [
  { name: 'lazyd page server → lazyd lazy-pages', server: 'lazyd', daemon: 'lazyd' },
  { name: 'criu page-server → criu lazy-pages (reference)', server: 'criu', daemon: 'criu' },
];

const FIGURES: FigureDef[] = [
  { key: 'pagesInstalledMs', label: 'all pages present', unit: 'ms', digits: 0 },
  { key: 'lazyPagesExitMs', label: 'lazy-pages exit', unit: 'ms', digits: 0 },
  { key: 'rateMiBs', label: 'rate (lazy pages / all present)', unit: 'MiB/s', digits: 1, lowerIsBetter: false },
  { key: 'faultP50Us', label: 'fault service time p50', unit: 'µs', digits: 0 },
  { key: 'faultP99Us', label: 'fault service time p99', unit: 'µs', digits: 0 },
  { key: 'faults', label: 'faults', unit: 'count', digits: 0 },
  { key: 'daemonCpuMs', label: 'destination daemon CPU (user+sys)', unit: 'ms', digits: 0 },
  { key: 'serverCpuMs', label: 'page server CPU during the restore (user+sys)', unit: 'ms', digits: 0 },
  { key: 'restoreMs', label: 'time to resume (criu restore)', unit: 'ms', digits: 0 },
  { key: 'stallMaxMs', label: 'stall after resume: max hb gap', unit: 'ms', digits: 1 },
];

function finite(v: number | undefined | null): number | null {
  return v !== undefined && v !== null && Number.isFinite(v) ? v : null;
}

async function measure(pki: TestPki, pair: Pair, transport: Transport, criuVersion: CriuVersion, mib: number, ctx: BenchContext): Promise<FigureValues> {
  const tls = transport === 'tls';
  let watch: DaemonWatch | undefined;
  let serverCpu: CpuSampler | undefined;
  let daemonCpuMs: number | undefined;
  let serverCpuMs: number | undefined;
  let fault: { p50: number | null; p99: number | null; n: number } = { p50: null, p99: null, n: 0 };
  let faults: number | null = null;
  let latencyLine: string | undefined;
  try {
    const result = await runLazyMigration({
      criuVersion,
      server: pair.server,
      daemon: pair.daemon,
      workload: { mib, order: 'seq', seed: 2000 + mib, intervalMs: 0 },
      serverOptions: tls ? { extraArgs: tlsArgs(pki, { as: pki.a }) } : undefined,
      daemonArgs: tls ? tlsArgs(pki, { as: pki.b }) : undefined,
      keep: ctx.keep,
      timeouts: { allPagesMs: 180_000, dumpMs: 120_000 },
      progress: ctx.verbose ? (message) => ctx.log(`    ${message}`) : undefined,
      beforeRestore: (server) => {
        serverCpu = sampleCpu(server.pid);
        watch = watchDaemonCpu();
      },
      onRestored: (restored) => {
        daemonCpuMs = watch?.stop();
        const log = path.join(restored.dstDir, 'lazy-pages.log');
        const text = fs.readFileSync(log, 'utf8');
        // Make sure the run measured what it says.
        const sawTls = pair.daemon === 'lazyd' ? / over \(TLS1\.[23]\)/.test(text) : /tls: TLS handshake completed/.test(text);
        if (sawTls !== tls) throw new Error(`${transport} run, but the daemon's log ${sawTls ? 'shows' : 'lacks'} a TLS session: ${log}`);
        if (pair.daemon === 'lazyd') {
          const lat = readLazydLatency(log);
          latencyLine = lat?.line;
          if (lat) fault = { p50: lat.p50Us, p99: lat.p99Us, n: lat.faults };
          faults = restored.lazydTotals?.faults ?? lat?.faults ?? null;
        } else {
          const us = criuFaultServiceUs(log);
          fault = { p50: finite(median(us)), p99: finite(p99(us)), n: us.length };
          faults = us.length;
        }
      },
      afterFinish: () => {
        const first = serverCpu?.firstMs;
        const last = serverCpu?.stop();
        serverCpuMs = first !== undefined && last !== undefined ? last - first : undefined;
      },
    });
    return {
      figures: {
        pagesInstalledMs: result.pagesInstalledMs,
        lazyPagesExitMs: result.allPagesMs,
        rateMiBs: result.pagesInstalledMs > 0 ? (result.lazyPages.copied * 4096) / 1048576 / (result.pagesInstalledMs / 1000) : null,
        faultP50Us: fault.p50,
        faultP99Us: fault.p99,
        faults,
        daemonCpuMs: finite(daemonCpuMs),
        serverCpuMs: finite(serverCpuMs),
        restoreMs: result.restoreMs,
        stallMaxMs: result.heartbeat.maxGapMs,
      },
      details: {
        transport,
        mib: result.mib,
        lazyPagesInstalled: result.lazyPages.copied,
        faultSamples: fault.n,
        lazydTotals: result.lazydTotals?.line,
        lazydLatency: latencyLine,
        sum: result.sums[0],
      },
    };
  } finally {
    watch?.stop();
    serverCpu?.stop();
  }
}

function oneLine(v: FigureValues): string {
  const f = v.figures;
  const n = (x: number | null, d = 0) => (x === null ? '–' : x.toFixed(d));
  return (
    `all present ${n(f.pagesInstalledMs)} ms (${n(f.rateMiBs, 0)} MiB/s), exit ${n(f.lazyPagesExitMs)} ms, ` +
    `fault p50/p99 ${n(f.faultP50Us)}/${n(f.faultP99Us)} µs, daemon CPU ${n(f.daemonCpuMs)} ms, server CPU ${n(f.serverCpuMs)} ms`
  );
}

async function compare(ctx: BenchContext, pki: TestPki, pair: Pair, criuVersion: CriuVersion, mib: number): Promise<Comparison> {
  const title = `${pair.name}, CRIU ${criuVersion}, ${mib} MiB, sequential touch`;
  ctx.log(`== ${title}: ${ctx.pairs} pairs, plain / tls alternating`);
  const outcomes = await runAlternating<FigureValues, Transport>({
    configs: TRANSPORTS,
    rounds: ctx.pairs,
    log: ctx.log,
    describe: oneLine,
    run: (transport) => measure(pki, pair, transport, criuVersion, mib, ctx),
  });
  return makeComparison({
    title,
    params: { criuVersion, mib, order: 'seq', intervalMs: 0, pairs: ctx.pairs, server: pair.server, daemon: pair.daemon, transports: TRANSPORTS },
    configs: TRANSPORTS,
    figures: FIGURES,
    runs: toRunRecords(outcomes),
  });
}

export const tlsBenchmark: Benchmark = {
  name: 'tls',
  description: 'the cost of --tls on the lazy transfer: plain vs TLS, lazyd → lazyd and (reference) criu → criu',
  estimate(ctx) {
    const mib = ctx.quick ? 64 : 512;
    return `${PAIRS.length * 2 * ctx.pairs} migrations of ${mib} MiB (CRIU ${[...ctx.criuVersions].sort().at(-1)})`;
  },
  async run(ctx) {
    checkHost(ctx.criuVersions);
    // One CRIU version: TLS runs in lazyd and in the same GnuTLS either way; the newest one asked for.
    const criuVersion = [...ctx.criuVersions].sort().at(-1)!;
    const mib = ctx.quick ? 64 : 512;
    const pkiDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-bench-pki-'));
    try {
      const pki = await makeTestPki(pkiDir);
      const comparisons: Comparison[] = [];
      for (const pair of PAIRS) comparisons.push(await compare(ctx, pki, pair, criuVersion, mib));
      return {
        name: 'tls',
        description: tlsBenchmark.description,
        comparisons,
        notes: [
          'TLS: mutual X.509 (ECDSA P-256 certificates of a CA made for the run, its CRL loaded, names checked), GnuTLS default priorities on every end (TLS 1.3, AES-256-GCM here).',
          'lazyd under TLS reads page bytes into a buffer (pread) and sends them in records of their own; plain, it sends them with sendfile (no copy).',
          'Times are from the start of `criu restore --lazy-pages -d`. Server CPU counts from just before the restore to the server\'s exit; daemon CPU is the whole daemon (lazyd\'s includes starting node).',
          'Ratios: tls/plain of the medians, and the range of the per-pair ratio.',
        ],
      } satisfies BenchResult;
    } finally {
      fs.rmSync(pkiDir, { recursive: true, force: true });
    }
  },
};
