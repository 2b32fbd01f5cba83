// When `lazyd migrate --pre-copy` stops iterating `criu pre-dump` and goes to the final lazy dump (P.Haul's rules,
// README "--pre-copy"): after at most `maxIterations` iterations; when an iteration wrote fewer than `minPages`
// pages (what is left is small enough for post-copy); or when it wrote more than `maxGrowthPercent` % more pages
// than the one before (the tree dirties memory faster than it crosses: another round would not converge).

export interface PreCopyLimits {
  maxIterations: number;
  minPages: number;
  maxGrowthPercent: number;
}

export const PRE_COPY_LIMITS: PreCopyLimits = { maxIterations: 8, minPages: 64, maxGrowthPercent: 10 };

export type PreCopyStop = 'max-iterations' | 'few-pages' | 'growth';

/**
 * Whether to stop after the iterations so far (`written[i]`: pages the (i+1)-th pre-dump wrote), and by which
 * rule; undefined: run another. When several rules hold, the first in the order above is named.
 */
export function preCopyStop(written: readonly number[], limits: PreCopyLimits = PRE_COPY_LIMITS): PreCopyStop | undefined {
  const n = written.length;
  if (n === 0) return undefined;
  if (n >= limits.maxIterations) return 'max-iterations';
  const last = written[n - 1];
  if (last < limits.minPages) return 'few-pages';
  // Integers only: "more than 10 % more" is last * 100 > previous * 110.
  if (n >= 2 && last * 100 > written[n - 2] * (100 + limits.maxGrowthPercent)) return 'growth';
  return undefined;
}

/** The stop rule in words, for the progress note and the report. */
export function describeStop(stop: PreCopyStop, written: readonly number[], limits: PreCopyLimits = PRE_COPY_LIMITS): string {
  const n = written.length;
  const last = written[n - 1] ?? 0;
  switch (stop) {
    case 'max-iterations':
      return `${n} iterations, the most allowed (--pre-copy-max-iterations ${limits.maxIterations})`;
    case 'few-pages':
      return `iteration ${n} wrote ${last} pages, fewer than ${limits.minPages}`;
    case 'growth':
      return `iteration ${n} wrote ${last} pages, more than ${limits.maxGrowthPercent} % above the ${written[n - 2]} of iteration ${n - 1}`;
  }
}
