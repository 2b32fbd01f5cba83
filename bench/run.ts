// `npm run bench`: runs the benchmark suite (bench/registry.ts), prints a Markdown table per comparison, and
// saves bench/results/<benchmark>-<date>[-quick].json (every run's figures, the host) and the .md beside it.
//
// Usage: node dist/bench/run.js [--quick] [--only NAME[,NAME]] [--pairs N] [--criu 4.1.1|4.2.1|both]
//                               [--keep] [--verbose] [--list]
// Needs root and CRIU installed by scripts/install-criu.sh. Exits 1 when a run failed (after its retry) or a
// benchmark could not run; the results of the others are still written.
import fs from 'node:fs';
import path from 'node:path';
import { CRIU_VERSIONS, isCriuVersion, type CriuVersion } from '../test/harness/index.js';
import { repoRoot } from '../src/paths.js';
import { describeHost } from './lib/host.js';
import { fileStamp, resultMarkdown, writeResultFiles } from './lib/report.js';
import type { BenchContext } from './lib/types.js';
import { BENCHMARKS } from './registry.js';

const USAGE = `usage: node dist/bench/run.js [--quick] [--only NAME[,NAME]] [--pairs N] [--criu ${CRIU_VERSIONS.join('|')}|both] [--keep] [--verbose] [--list]
  --quick     small sizes and 3 pairs (a smoke test; under 3 minutes)
  --only      run only these benchmarks (${BENCHMARKS.map((b) => b.name).join(', ')}); without it, all but the opt-in ones
  --pairs N   rounds of alternation per comparison (default 3)
  --criu V    CRIU version(s) on both ends (default both)
  --keep      keep the run directories of successful runs (/tmp/lazyd-e2e-*)
  --verbose   print every step of every migration
  --list      list the benchmarks and exit`;

interface Options {
  quick: boolean;
  only: string[] | undefined;
  pairs: number | undefined;
  criu: CriuVersion[];
  keep: boolean;
  verbose: boolean;
  list: boolean;
}

function usageError(message: string): never {
  throw new Error(`${message}\n${USAGE}`);
}

export function parseArgs(argv: string[]): Options {
  const options: Options = { quick: false, only: undefined, pairs: undefined, criu: [...CRIU_VERSIONS], keep: false, verbose: false, list: false };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2);
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined) usageError(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--quick':
        options.quick = true;
        break;
      case '--only': {
        const names = value().split(',').map((s) => s.trim()).filter(Boolean);
        const unknown = names.filter((n) => !BENCHMARKS.some((b) => b.name === n));
        if (unknown.length || !names.length) usageError(`--only: unknown benchmark ${unknown.join(', ') || '(none given)'}`);
        options.only = names;
        break;
      }
      case '--pairs': {
        const n = Number(value());
        if (!Number.isInteger(n) || n < 1) usageError('--pairs must be a whole number >= 1');
        options.pairs = n;
        break;
      }
      case '--criu': {
        const v = value();
        if (v === 'both' || v === 'all') options.criu = [...CRIU_VERSIONS];
        else if (isCriuVersion(v)) options.criu = [v];
        else usageError(`--criu must be one of ${CRIU_VERSIONS.join(', ')}, both`);
        break;
      }
      case '--keep':
        options.keep = true;
        break;
      case '-v':
      case '--verbose':
        options.verbose = true;
        break;
      case '--list':
        options.list = true;
        break;
      case '-h':
      case '--help':
        process.stdout.write(USAGE + '\n');
        process.exit(0);
      // eslint-disable-next-line no-fallthrough
      default:
        usageError(`unknown argument ${argv[i]}`);
    }
  }
  return options;
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  const options = parseArgs(argv);
  const started = performance.now();
  const log = (message: string) => process.stderr.write(`[${((performance.now() - started) / 1000).toFixed(1).padStart(7)}s] ${message}\n`);
  const ctx: BenchContext = {
    quick: options.quick,
    pairs: options.pairs ?? 3,
    criuVersions: options.criu,
    keep: options.keep,
    verbose: options.verbose,
    log,
  };
  const selected = BENCHMARKS.filter((b) => (options.only ? options.only.includes(b.name) : !b.optIn));
  if (options.list) {
    for (const b of BENCHMARKS) {
      process.stdout.write(`${b.name.padEnd(16)} ${b.description}${b.optIn ? ' (only with --only)' : ''}\n${''.padEnd(16)} ${b.estimate(ctx)}\n`);
    }
    return 0;
  }

  const host = describeHost(ctx.criuVersions);
  const resultsDir = path.join(repoRoot(), 'bench', 'results');
  let failed = false;
  for (const bench of selected) {
    log(`benchmark ${bench.name}: ${bench.estimate(ctx)}`);
    const startedAt = new Date();
    let result;
    try {
      result = await bench.run(ctx);
    } catch (error) {
      failed = true;
      log(`benchmark ${bench.name} FAILED: ${(error as Error).message ?? error}`);
      continue;
    }
    const finishedAt = new Date();
    const meta = { startedAt: startedAt.toISOString(), finishedAt: finishedAt.toISOString(), argv };
    const markdown = resultMarkdown(result, host, meta);
    const base = `${bench.name}-${fileStamp(startedAt)}${ctx.quick ? '-quick' : ''}`;
    const { svg, ...stored } = result;
    const files = writeResultFiles(resultsDir, base, { ...meta, benchmark: result.name, options: { ...ctx, log: undefined }, host, result: stored }, markdown);
    if (svg) fs.writeFileSync(path.join(resultsDir, `${base}.svg`), svg);
    process.stdout.write('\n' + markdown + '\n');
    log(`results: ${path.relative(process.cwd(), files.json)}, ${path.relative(process.cwd(), files.markdown)}`);
    const bad = result.comparisons.flatMap((c) => c.runs.filter((r) => !r.ok));
    if (bad.length) {
      failed = true;
      log(`${bench.name}: ${bad.length} run(s) failed even after a retry (see the table notes)`);
    }
  }
  log(`done in ${((performance.now() - started) / 1000).toFixed(0)} s`);
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    process.stderr.write(`\nbench FAILED: ${(error as Error).message ?? error}\n`);
    process.exit(2);
  },
);
