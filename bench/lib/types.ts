// What a benchmark module exports, and what the runner (bench/run.ts) gives it.
import type { CriuVersion } from '../../test/harness/index.js';
import type { BenchResult } from './report.js';

export interface BenchContext {
  /** Small sizes, few rounds: a smoke test of the benchmark itself. */
  quick: boolean;
  /** Rounds of alternation (pairs when two configurations are compared). */
  pairs: number;
  criuVersions: CriuVersion[];
  /** Keep the run directories of successful runs too. */
  keep: boolean;
  /** Print the harness's step-by-step progress. */
  verbose: boolean;
  log: (message: string) => void;
}

export interface Benchmark {
  name: string;
  description: string;
  /** Rough duration, for the runner's plan line. */
  estimate(ctx: BenchContext): string;
  run(ctx: BenchContext): Promise<BenchResult>;
  /** Not part of a plain `npm run bench`: runs only when named with --only. */
  optIn?: boolean;
}
