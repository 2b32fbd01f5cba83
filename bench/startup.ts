// Benchmark "startup": how soon each daemon is ready after its exec, on the images of a real plain dump (the
// self-verifying workload, dumped by the CRIU version under test).
//
//   lazy-pages   `criu lazy-pages` against `lazyd lazy-pages` (the drop-in, run as a tool runs it: bin/lazyd.js by
//                its shebang), same argv: -D dir -o lazy-pages.log -v4 --status-fd 3. `criu restore --lazy-pages`
//                connects to lazy-pages.socket at its start, so this time is inside a migration's downtime
//                whenever the daemon is started after the dump. A third configuration, `node bin/lazyd.js`
//                with the environment as it is, shows what the shebang saves when NODE_EXTRA_CA_CERTS is set.
//   page server  `criu page-server --lazy-pages` against `lazyd --page-server` (for information: the page
//                server is started before the restore, outside the downtime).
// Figures per start: exec → the --status-fd byte, and exec → the socket listening (read from /proc, see
// bench/lib/ready-time.ts); the configurations alternate, N rounds; median and p90 in the headline table.
import fs from 'node:fs';
import path from 'node:path';
import { checkHost, checkpointWorkload, findCriu, freePort, lazydBin, withRunDir, type CriuVersion } from '../test/harness/index.js';
import { runAlternating } from './lib/alternate.js';
import { readyTime, type ReadySpec, type ReadyTime } from './lib/ready-time.js';
import { makeComparison, markdownTable, toRunRecords, type BenchResult, type Comparison, type FigureDef, type FigureValues } from './lib/report.js';
import { median, quantile } from './lib/stats.js';
import type { BenchContext, Benchmark } from './lib/types.js';

const LAZY_PAGES_CONFIGS = ['criu lazy-pages', 'lazyd lazy-pages', 'node bin/lazyd.js lazy-pages'] as const;
const PAGE_SERVER_CONFIGS = ['criu page-server', 'lazyd --page-server'] as const;
type Config = (typeof LAZY_PAGES_CONFIGS)[number] | (typeof PAGE_SERVER_CONFIGS)[number];

export const FIGURES: FigureDef[] = [
  { key: 'statusMs', label: 'exec → status-fd byte', unit: 'ms', digits: 1 },
  { key: 'listenMs', label: 'exec → socket listening', unit: 'ms', digits: 1 },
];

function rounds(ctx: BenchContext): number {
  return Number(process.env.LAZYD_BENCH_STARTUP_ROUNDS ?? (ctx.quick ? 10 : 30));
}

function sizes(ctx: BenchContext): number[] {
  return ctx.quick ? [64] : (process.env.LAZYD_BENCH_STARTUP_SIZES ?? '64,512').split(',').map(Number);
}

/** The argv of each configuration on the images in `dir`. */
async function specOf(config: Config, criuVersion: CriuVersion, dir: string): Promise<ReadySpec> {
  const criu = findCriu(criuVersion).path;
  const lazyPagesArgs = ['lazy-pages', '-D', dir, '-o', 'lazy-pages.log', '-v4', '--status-fd', '3'];
  switch (config) {
    case 'criu lazy-pages':
      return { file: criu, args: lazyPagesArgs, cwd: dir, listen: 'unix' };
    case 'lazyd lazy-pages':
      return { file: lazydBin(), args: lazyPagesArgs, cwd: dir, listen: 'unix' };
    case 'node bin/lazyd.js lazy-pages':
      return { file: process.execPath, args: [lazydBin(), ...lazyPagesArgs], cwd: dir, listen: 'unix' };
    case 'criu page-server': {
      const port = String(await freePort());
      const args = ['page-server', '--lazy-pages', '-D', dir, '--address', '127.0.0.1', '--port', port, '-o', 'page-server.log', '-v4', '--status-fd', '3'];
      return { file: criu, args, cwd: dir, listen: 'tcp' };
    }
    case 'lazyd --page-server': {
      const port = String(await freePort());
      const args = ['--page-server', '-D', dir, '--address', '127.0.0.1', '--port', port, '-o', 'page-server.log', '-v4', '--status-fd', '3'];
      return { file: lazydBin(), args, cwd: dir, listen: 'tcp' };
    }
  }
}

function figuresOf(t: ReadyTime): FigureValues {
  return { figures: { statusMs: t.statusMs, listenMs: t.listenMs } };
}

async function compare(
  ctx: BenchContext,
  criuVersion: CriuVersion,
  mib: number,
  dir: string,
  what: string,
  configs: readonly Config[],
): Promise<Comparison> {
  const n = rounds(ctx);
  const title = `${what}, CRIU ${criuVersion}, images of a ${mib} MiB workload`;
  ctx.log(`== ${title}: ${n} rounds, ${configs.join(' / ')} alternating`);
  const outcomes = await runAlternating<FigureValues, Config>({
    configs,
    rounds: n,
    settleMs: 100,
    log: ctx.verbose ? ctx.log : undefined,
    describe: (v) => `status ${v.figures.statusMs?.toFixed(1)} ms, listening ${v.figures.listenMs?.toFixed(1)} ms`,
    run: async (config) => figuresOf(await readyTime(await specOf(config, criuVersion, dir))),
  });
  return makeComparison({
    title,
    params: { criuVersion, mib, rounds: n, configs, env: { NODE_EXTRA_CA_CERTS: process.env.NODE_EXTRA_CA_CERTS ? 'set' : 'unset' } },
    configs: [...configs],
    figures: FIGURES,
    runs: toRunRecords(outcomes),
  });
}

/** The headline: median and p90 of each configuration's exec → status-fd byte, and lazyd's ratio to criu. */
function headline(comparisons: Comparison[]): string {
  const rows = comparisons.map((c) => {
    const values = (config: string, key: string) => c.runs.filter((r) => r.ok && r.config === config).map((r) => r.figures[key]);
    const cell = (config: string, key: string) => `${median(values(config, key)).toFixed(1)} / ${quantile(values(config, key), 0.9).toFixed(1)}`;
    const [base, cand] = c.configs;
    return [
      c.title,
      cell(base, 'statusMs'),
      cell(cand, 'statusMs'),
      (median(values(cand, 'statusMs')) / median(values(base, 'statusMs'))).toFixed(2),
      cell(base, 'listenMs'),
      cell(cand, 'listenMs'),
    ];
  });
  return markdownTable(
    ['case', 'criu: status byte median / p90 (ms)', 'lazyd: status byte median / p90 (ms)', 'lazyd/criu (medians)', 'criu: listening median / p90 (ms)', 'lazyd: listening median / p90 (ms)'],
    rows,
    ['l', 'r', 'r', 'r', 'r', 'r'],
  );
}

export const startupBenchmark: Benchmark = {
  name: 'startup',
  description: 'ready time after exec: criu lazy-pages vs lazyd lazy-pages (and criu page-server vs lazyd --page-server)',
  estimate(ctx) {
    const starts = ctx.criuVersions.length * sizes(ctx).length * rounds(ctx) * (LAZY_PAGES_CONFIGS.length + PAGE_SERVER_CONFIGS.length);
    return `${ctx.criuVersions.length * sizes(ctx).length} plain dumps, ${starts} daemon starts (~${Math.ceil(starts * 0.4 + 10)} s)`;
  },
  async run(ctx) {
    checkHost(ctx.criuVersions);
    const comparisons: Comparison[] = [];
    for (const criuVersion of ctx.criuVersions) {
      for (const mib of sizes(ctx)) {
        await withRunDir(
          `startup-${criuVersion}-${mib}`,
          async (runDir, onCleanup) => {
            const checkpoint = await checkpointWorkload({ criu: findCriu(criuVersion), runDir, workload: { mib }, onCleanup });
            const dir = path.join(runDir, 'dst');
            fs.mkdirSync(dir);
            for (const name of fs.readdirSync(checkpoint.imagesDir)) {
              if (name.endsWith('.img')) fs.copyFileSync(path.join(checkpoint.imagesDir, name), path.join(dir, name));
            }
            comparisons.push(await compare(ctx, criuVersion, mib, dir, 'lazy-pages daemon', LAZY_PAGES_CONFIGS));
            comparisons.push(await compare(ctx, criuVersion, mib, dir, 'page server', PAGE_SERVER_CONFIGS));
          },
          ctx.keep,
        );
      }
    }
    const lazyPages = comparisons.filter((c) => c.title.startsWith('lazy-pages'));
    return {
      name: 'startup',
      description: startupBenchmark.description,
      summary: ['Ready time of the lazy-pages daemon (exec → status-fd byte; exec → lazy-pages.socket listening):', '', headline(lazyPages)].join('\n'),
      comparisons,
      notes: [
        'exec: just before spawn() in the benchmark process; status byte: its arrival on the pipe given as --status-fd 3; listening: ' +
          "the first 1 ms poll that finds a socket of the daemon's among the listening ones of /proc/net/unix (__SO_ACCEPTCON) or /proc/net/tcp{,6} (LISTEN).",
        '`lazyd lazy-pages` is executed as bin/lazyd.js, as a tool runs `lazyd` (its shebang starts node without NODE_EXTRA_CA_CERTS); ' +
          '`node bin/lazyd.js lazy-pages` keeps the environment as it is (NODE_EXTRA_CA_CERTS ' +
          (process.env.NODE_EXTRA_CA_CERTS ? 'set in this run' : 'not set in this run: the two are the same') + ').',
        'Every daemon reads the images of a real plain dump of the same workload, in a directory of their own (the page servers serve it).',
        'The configurations alternate (criu, lazyd, ...) so that the drift of a shared machine hits them alike; p90 is nearest-rank.',
      ],
    } satisfies BenchResult;
  },
};
