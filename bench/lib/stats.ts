// Small statistics over a handful of runs: median, min, max and nearest-rank quantiles. NaN/undefined/null
// values (a figure a run could not measure) are left out; an empty set gives NaN everywhere.

export interface Summary {
  /** Values that were counted. */
  n: number;
  median: number;
  min: number;
  max: number;
  mean: number;
  p99: number;
}

/** The finite numbers of a list, ascending. */
export function finiteSorted(values: readonly (number | null | undefined)[]): number[] {
  return values.filter((v): v is number => typeof v === 'number' && Number.isFinite(v)).sort((a, b) => a - b);
}

/** Median (mean of the two middle values for an even count). */
export function median(values: readonly (number | null | undefined)[]): number {
  const s = finiteSorted(values);
  if (!s.length) return NaN;
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

export function min(values: readonly (number | null | undefined)[]): number {
  const s = finiteSorted(values);
  return s.length ? s[0] : NaN;
}

export function max(values: readonly (number | null | undefined)[]): number {
  const s = finiteSorted(values);
  return s.length ? s[s.length - 1] : NaN;
}

export function mean(values: readonly (number | null | undefined)[]): number {
  const s = finiteSorted(values);
  return s.length ? s.reduce((a, b) => a + b, 0) / s.length : NaN;
}

/** Nearest-rank quantile, q in [0, 1]: the smallest value with at least q of the values at or below it. */
export function quantile(values: readonly (number | null | undefined)[], q: number): number {
  const s = finiteSorted(values);
  if (!s.length) return NaN;
  const rank = Math.ceil(q * s.length);
  return s[Math.min(s.length - 1, Math.max(0, rank - 1))];
}

export function p99(values: readonly (number | null | undefined)[]): number {
  return quantile(values, 0.99);
}

export function summarize(values: readonly (number | null | undefined)[]): Summary {
  return {
    n: finiteSorted(values).length,
    median: median(values),
    min: min(values),
    max: max(values),
    mean: mean(values),
    p99: p99(values),
  };
}

/** a / b, NaN unless both are finite and b is not 0. */
export function ratio(a: number, b: number): number {
  return Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? a / b : NaN;
}
