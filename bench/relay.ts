// Benchmark "relay" (opt-in): how fast relay staging pulls a `criu dump --lazy-pages` into lazyd on one host, by
// bulk request size and bytes in flight (`lazyd staging relay --relay-request-bytes / --relay-inflight-bytes`),
// alternating the settings in rounds. Per run: a fresh workload of the size, `criu dump --lazy-pages --address
// 127.0.0.1`, `lazyd staging relay` into a fresh `lazyd --page-server --control-socket`, no restore: the pull alone,
// from the native relay's start to the dump's CLOSE answered ("in N ms" of the relay's line), and the time the
// tasks stayed frozen (dump start → dump exit). Feeds the defaults of those flags (src/config/flags.ts).
import path from 'node:path';
import {
  checkHost,
  checkpointWorkload,
  findCriu,
  nowNs,
  RELAYED_RE,
  startRelayCommand,
  startRelayDaemon,
  withRunDir,
  type CriuVersion,
} from '../test/harness/index.js';
import { runAlternating } from './lib/alternate.js';
import { makeComparison, toRunRecords, type BenchResult, type FigureDef, type FigureValues } from './lib/report.js';
import type { BenchContext, Benchmark } from './lib/types.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** request bytes / bulk bytes in flight; the first is the baseline of the ratios (the flags' defaults). */
const SETTINGS: [number, number][] = [
  [1 * MiB, 1 * MiB],
  [1 * MiB, 4 * MiB],
  [256 * KiB, 1 * MiB],
  [1 * MiB, 16 * MiB],
  [4 * MiB, 16 * MiB],
  [4 * MiB, 64 * MiB],
];

const FIGURES: FigureDef[] = [
  { key: 'pullMs', label: 'pull: relay start → the dump\'s CLOSE answered', unit: 'ms', digits: 0 },
  { key: 'rateMiBs', label: 'pull rate', unit: 'MiB/s', digits: 0, lowerIsBetter: false },
  { key: 'frozenMs', label: 'source tasks frozen (dump start → dump exit)', unit: 'ms', digits: 0 },
  { key: 'commandMs', label: '`lazyd staging relay` start → exit', unit: 'ms', digits: 0 },
];

function name([request, inflight]: [number, number]): string {
  const size = (b: number) => (b >= MiB ? `${b / MiB}M` : `${b / KiB}K`);
  return `req ${size(request)} / inflight ${size(inflight)}`;
}

async function pullOnce(version: CriuVersion, mib: number, setting: [number, number]): Promise<FigureValues> {
  return withRunDir(`relay-bench-${mib}`, async (runDir, onCleanup) => {
    const daemon = await startRelayDaemon({ dir: path.join(runDir, 'lazyd'), address: '127.0.0.1', stagingMaxBytes: 2 * mib * MiB + 64 * MiB });
    onCleanup(() => daemon.server.kill());
    const checkpoint = await checkpointWorkload({
      criu: findCriu(version),
      runDir,
      workload: { mib, order: 'seq', intervalMs: 0 },
      onCleanup,
      requireLazy: false,
      lazyDump: { address: '127.0.0.1' },
    });
    const dump = checkpoint.dumpServer!;
    const command = await startRelayCommand(daemon, checkpoint.imagesDir, dump, [
      '--relay-request-bytes', String(setting[0]),
      '--relay-inflight-bytes', String(setting[1]),
    ]);
    const { exit, line } = await command.done(600_000);
    const dumpExit = await dump.finish(60_000);
    const dumpStart = performance.now() - Number(nowNs() - checkpoint.dumpStartNs) / 1e6;
    const m = RELAYED_RE.exec(line)!;
    const pullMs = Number(m[5]);
    return {
      figures: {
        pullMs,
        rateMiBs: (Number(m[3]) * 4096) / MiB / (pullMs / 1000),
        frozenMs: dump.proc.startedAt + dumpExit.ms - dumpStart,
        commandMs: exit.ms,
      },
      details: { line },
    };
  });
}

export const relayBenchmark: Benchmark = {
  name: 'relay',
  description: 'relay staging: pull rate of a criu dump --lazy-pages into lazyd on one host, by request size and bytes in flight',
  optIn: true,
  estimate: (ctx) => (ctx.quick ? '~1 min' : '~5 min'),
  async run(ctx) {
    checkHost(ctx.criuVersions);
    const version = [...ctx.criuVersions].sort().at(-1)!;
    const comparisons = [];
    for (const mib of ctx.quick ? [64] : [64, 512]) {
      const configs = SETTINGS.map(name);
      ctx.log(`== CRIU ${version}, ${mib} MiB: ${ctx.pairs} rounds of ${configs.join(', ')}`);
      const outcomes = await runAlternating<FigureValues>({
        configs,
        rounds: ctx.quick ? 1 : ctx.pairs,
        log: ctx.log,
        describe: (v) => `pull ${v.figures.pullMs} ms (${v.figures.rateMiBs?.toFixed(0)} MiB/s), frozen ${v.figures.frozenMs?.toFixed(0)} ms`,
        run: (config) => pullOnce(version, mib, SETTINGS[configs.indexOf(config)]!),
      });
      comparisons.push(
        makeComparison({ title: `CRIU ${version}, ${mib} MiB`, params: { criuVersion: version, mib }, configs, figures: FIGURES, runs: toRunRecords(outcomes) }),
      );
    }
    return {
      name: 'relay',
      description: relayBenchmark.description,
      comparisons,
      notes: [
        'One host: the workload, criu dump --lazy-pages (on 127.0.0.1) and lazyd --page-server share the machine; no restore runs, so this is the pull alone.',
        'The ratio column compares each setting with the first (the flags\' defaults).',
      ],
    } satisfies BenchResult;
  },
};
