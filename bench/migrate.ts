// Benchmark "migrate": one whole migration between two hosts on one machine (test/harness/netns.ts: two network
// namespaces joined by a veth with 0.5 or 5 ms RTT), as a user runs it, alternating:
//   stock-criu     the stock-CRIU script: `criu dump --lazy-pages --port P` on the source, the images copied,
//                  `criu lazy-pages --page-server` and `criu restore --lazy-pages` on the destination
//                  (test/harness/migration.ts runLazyMigration, source 'criu-dump', daemon 'criu')
//   lazyd-migrate  `lazyd migrate --pid PID --to DST:PORT` into a running `lazyd agent` (the agent runs all along,
//                  as a service would; its start is not counted): relay staging on the source, the agent's
//                  lazy-pages engine started on hello
// Both with the same CRIU on both ends and the same workload (test/workload/workload.c, 512 MiB, reading every
// page in order back to back, heartbeat every 5 ms), each restored workload verified against its pre-dump sums.
// Figures, all from the freeze (the start of `criu dump`):
//   downtime   the longest heartbeat gap of the workload across the migration (what its clients would see)
//   frozen     until the dump exited (the originals killed; lazyd migrate holds them until the restore succeeded)
//   all pages  until the destination's lazy-pages daemon exited (every page present)
// --quick: 64 MiB, one round.
import fs from 'node:fs';
import path from 'node:path';
import {
  checkHost,
  findCriu,
  instanceDirs,
  readHeartbeats,
  runLazyMigration,
  waitForAllPasses,
  withRunDir,
  nowNs,
  logOffset,
  type CriuVersion,
  type WorkloadOptions,
} from '../test/harness/index.js';
import { createTwoHosts, type TwoHosts } from '../test/harness/netns.js';
import { runMigrate, startAgent, startSourceWorkload, stopSourceWorkload, type Agent } from '../test/harness/agent.js';
import { runAlternating } from './lib/alternate.js';
import { makeComparison, toRunRecords, type BenchResult, type Comparison, type FigureDef, type FigureValues } from './lib/report.js';
import type { BenchContext, Benchmark } from './lib/types.js';

const CONFIGS = ['stock-criu', 'lazyd-migrate'] as const;
type Config = (typeof CONFIGS)[number];
const RTTS = [0.5, 5];

export const FIGURES: FigureDef[] = [
  { key: 'downtimeMs', label: 'downtime: longest workload heartbeat gap', unit: 'ms', digits: 0 },
  { key: 'frozenMs', label: 'source tasks frozen (freeze → dump exit)', unit: 'ms', digits: 0 },
  { key: 'allPagesMs', label: 'all pages present (freeze → lazy-pages daemon exit)', unit: 'ms', digits: 0 },
  { key: 'wireMiB', label: 'bytes on the wire (veth, both ways)', unit: 'MiB', digits: 1 },
];

function workload(mib: number, seed: number): WorkloadOptions {
  return { mib, order: 'seq', seed, intervalMs: 0 };
}

/** The longest gap between heartbeats from `fromNs` on (the freeze lies inside it). */
function longestGapMs(dir: string, fromNs: bigint): number {
  const beats = readHeartbeats(dir).filter((b) => b >= fromNs);
  let longest = 0;
  for (let i = 1; i < beats.length; i++) longest = Math.max(longest, Number(beats[i] - beats[i - 1]) / 1e6);
  return longest;
}

function wireMiB(hosts: TwoHosts, before: { sourceTx: number; sourceRx: number }): number {
  const after = hosts.wireBytes();
  return (after.sourceTx - before.sourceTx + after.sourceRx - before.sourceRx) / 1048576;
}

async function stockRun(hosts: TwoHosts, version: CriuVersion, mib: number, seed: number): Promise<FigureValues> {
  const before = hosts.wireBytes();
  let downtimeMs = NaN;
  const result = await runLazyMigration({
    criuVersion: version,
    server: 'criu-dump',
    daemon: 'criu',
    workload: workload(mib, seed),
    passes: 1,
    network: { source: hosts.source, destination: hosts.destination, sourceAddress: hosts.sourceAddress },
    onRestored: (_restored, checkpoint) => {
      downtimeMs = longestGapMs(checkpoint.workloadDir, checkpoint.dumpStartNs - 100_000_000n);
    },
  });
  // The stages of the script run one after the other: the dump until it serves, the copy, the daemon's start,
  // then the restore until the daemon exited.
  const allPagesMs = result.dumpMs + result.serverStartMs + result.copyMs + result.daemonStartMs + result.allPagesMs;
  return {
    figures: { downtimeMs, frozenMs: result.sourceFrozenMs, allPagesMs, wireMiB: wireMiB(hosts, before) },
    details: { restoreMs: result.restoreMs, lazyPages: result.lazyPages.copied, sum: result.sums[0] },
  };
}

async function lazydRun(hosts: TwoHosts, agent: Agent, version: CriuVersion, mib: number, seed: number): Promise<FigureValues> {
  return withRunDir(`bench-migrate-${version}`, async (runDir, onCleanup) => {
    const source = await startSourceWorkload(path.join(runDir, 'w'), workload(mib, seed), hosts.source);
    onCleanup(() => stopSourceWorkload(source));
    const before = hosts.wireBytes();
    const startNs = nowNs();
    const run = runMigrate({ netns: hosts.source, pid: source.workload.pid, agent, criu: findCriu(version).path, dumpDir: path.join(runDir, 'dump') });
    const { code, report } = await run.finished;
    if (code !== 0) throw new Error(`lazyd migrate exited ${code}: ${report.message}`);
    const wire = wireMiB(hosts, before);
    onCleanup(() => process.kill(report.restoredPid!, 'SIGKILL'));
    const offsets = instanceDirs(source.dir, 0).map((d) => logOffset(d));
    await waitForAllPasses(source.dir, 0, 1, 60_000, { sinceNs: nowNs(), fromOffsets: offsets, expectSums: source.sums, pid: report.restoredPid });
    return {
      figures: { downtimeMs: longestGapMs(source.dir, startNs), frozenMs: report.frozenMs!, allPagesMs: report.allPagesMs!, wireMiB: wire },
      details: { reportDowntimeMs: report.downtimeMs, heldMs: report.heldMs, stages: report.stages, lazyPages: report.lazyPages, bytes: report.bytes, sum: source.sums[0] },
    };
  });
}

function oneLine(v: FigureValues): string {
  const f = v.figures;
  const n = (x: number | null, d = 0) => (x === null || !Number.isFinite(x) ? '–' : x.toFixed(d));
  return `downtime ${n(f.downtimeMs)} ms, frozen ${n(f.frozenMs)} ms, all pages ${n(f.allPagesMs)} ms, wire ${n(f.wireMiB, 1)} MiB`;
}

async function compare(ctx: BenchContext, hosts: TwoHosts, version: CriuVersion, rtt: number, mib: number): Promise<Comparison> {
  const title = `CRIU ${version}, ${mib} MiB sequential, RTT ${rtt} ms`;
  ctx.log(`== ${title}: ${ctx.pairs} pairs, stock-criu / lazyd-migrate alternating`);
  await hosts.setRtt(rtt);
  const agentDir = fs.mkdtempSync('/tmp/lazyd-bench-agent-');
  const agent = await startAgent({ netns: hosts.destination, criu: findCriu(version).path, stateDir: agentDir });
  try {
    const outcomes = await runAlternating<FigureValues, Config>({
      configs: CONFIGS,
      rounds: ctx.pairs,
      log: ctx.log,
      describe: oneLine,
      run: (config, round) => (config === 'stock-criu' ? stockRun(hosts, version, mib, round) : lazydRun(hosts, agent, version, mib, round)),
    });
    return makeComparison({
      title,
      params: { criuVersion: version, mib, rttMs: rtt, delayer: hosts.delayer, pairs: ctx.pairs, workload: 'seq, intervalMs 0' },
      configs: [...CONFIGS],
      figures: FIGURES,
      runs: toRunRecords(outcomes),
    });
  } finally {
    await agent.stop();
    fs.rmSync(agentDir, { recursive: true, force: true });
  }
}

export const migrateBenchmark: Benchmark = {
  name: 'migrate',
  description: '`lazyd migrate` into `lazyd agent` vs the stock-CRIU script (dump --lazy-pages, copy, criu lazy-pages, restore), alternating',
  estimate(ctx) {
    const mib = ctx.quick ? 64 : 512;
    const rtts = ctx.quick ? 1 : RTTS.length;
    return `${rtts * ctx.criuVersions.length * 2 * ctx.pairs} migrations of ${mib} MiB`;
  },
  async run(ctx) {
    checkHost(ctx.criuVersions);
    const mib = ctx.quick ? 64 : 512;
    const hosts = createTwoHosts({ id: `bm${process.pid % 10000}` });
    try {
      const comparisons: Comparison[] = [];
      for (const version of ctx.criuVersions) {
        for (const rtt of ctx.quick ? [5] : RTTS) comparisons.push(await compare(ctx, hosts, version, rtt, mib));
      }
      return {
        name: 'migrate',
        description: migrateBenchmark.description,
        comparisons,
        notes: [
          'Every figure is measured from the freeze: the start of `criu dump --lazy-pages` (for lazyd migrate, inside it; its checks before the freeze are not counted).',
          'downtime: the longest gap between the workload\'s 5 ms heartbeats across the migration; frozen: until the dump exited and the originals were gone; all pages: until the destination\'s lazy-pages daemon exited.',
          'stock-criu all pages = the script\'s stages one after the other (dump until serving, copy, daemon start, restore until the daemon exited).',
          'lazyd-migrate: relay staging in the source\'s lazyd pulls every lazy page from the dump into memory and its native page server serves the destination (no JavaScript in the page path); the dump\'s CLOSE waits for the destination\'s restore (frozen ≥ downtime: the original stays frozen for a rollback until then); the agent starts `lazyd lazy-pages` when the migration is accepted, outside the downtime.',
          'Ratios: lazyd-migrate / stock-criu of the medians, and the range of the per-pair ratio.',
        ],
      } satisfies BenchResult;
    } finally {
      hosts.destroy();
    }
  },
};
