// The summary line of fault service time (PAGEFAULT read → page installed), from the engine's fine histogram
// (native/core/lazy/engine/latency_quantiles.h): p50 and p99 as bucket upper bounds within 1.6 % of the value, the
// maximum exact. The Prometheus histogram (latencyBoundsUs, four buckets per doubling) is the metrics' own.

import type { LazyPagesStats } from '../native.js';

export type LatencyFigures = Pick<LazyPagesStats, 'latencyCount' | 'latencyP50Us' | 'latencyP99Us' | 'latencyMaxUs'>;

export function latencyLine(s: LatencyFigures): string {
  if (s.latencyCount === 0) return 'fault service time: no faults';
  return `fault service time: p50 <= ${s.latencyP50Us} us, p99 <= ${s.latencyP99Us} us, max ${s.latencyMaxUs} us (${s.latencyCount} faults)`;
}
