// Fault service time (PAGEFAULT read → page installed) from the engine's histogram: bucket upper bounds in µs.

import type { LazyPagesStats } from '../native.js';

/** The histogram part of the engine's stats (src/native.ts). */
export type LatencyHistogram = Pick<LazyPagesStats, 'latencyBoundsUs' | 'latencyCounts'>;

/** The upper bound of the bucket holding the q-quantile (0 < q <= 1), or undefined without samples. */
export function quantileUpperBoundUs(h: LatencyHistogram, q: number): number | undefined {
  const total = h.latencyCounts.reduce((a, b) => a + b, 0);
  if (total === 0) return undefined;
  const rank = Math.ceil(q * total);
  let seen = 0;
  for (let i = 0; i < h.latencyCounts.length; i++) {
    seen += h.latencyCounts[i];
    if (seen >= rank) return h.latencyBoundsUs[i];
  }
  return h.latencyBoundsUs.at(-1);
}

export function latencyLine(h: LatencyHistogram): string {
  const total = h.latencyCounts.reduce((a, b) => a + b, 0);
  if (total === 0) return 'fault service time: no faults';
  const show = (q: number) => {
    const bound = quantileUpperBoundUs(h, q)!;
    return Number.isFinite(bound) ? `<= ${bound} us` : `> ${h.latencyBoundsUs.at(-2)} us`;
  };
  return `fault service time: p50 ${show(0.5)}, p99 ${show(0.99)}, max ${show(1)} (${total} faults)`;
}
