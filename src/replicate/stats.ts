// What `lazyd replicate` (the primary) and the agent's replicas (the standby) count, as plain numbers the
// --metrics-address registry reads at scrape time (src/metrics/replica-metrics.ts). No prom-client here: it is
// loaded only when metrics are asked for.

/** A duration histogram kept as the registry's native histograms are: per-bucket counts and a sum, in µs. */
export interface DurationHistogram {
  boundsUs: number[];
  counts: number[];
  sumUs: number;
  count: number;
}

/** Buckets 1 ms … 65 s, doubling, and +Inf. */
export function durationHistogram(): DurationHistogram {
  const boundsUs = [...Array.from({ length: 17 }, (_, i) => 1000 * 2 ** i), Infinity];
  return { boundsUs, counts: boundsUs.map(() => 0), sumUs: 0, count: 0 };
}

export function observeMs(h: DurationHistogram, ms: number): void {
  const us = ms * 1000;
  h.counts[h.boundsUs.findIndex((bound) => us <= bound)]++;
  h.sumUs += us;
  h.count++;
}

/** The primary's figures: totals over the epochs, the last epoch's, and what lag is computed from. */
export interface ReplicateCounters {
  epochsCommitted: number;
  pages: number;
  pagesChanged: number;
  bytesSent: number;
  frozen: DurationHistogram;
  hash: DurationHistogram;
  commit: DurationHistogram;
  last: { epoch: number; frozenMs: number; pagesChanged: number; bytesSent: number; commitMs: number } | undefined;
  /** Date.now() of the committed epoch's dump (of the start, before the first commit): lag is measured from it. */
  committedStateAt: number;
  /** An epoch dumped and not yet acknowledged. */
  inFlight: boolean;
}

export function replicateCounters(): ReplicateCounters {
  return {
    epochsCommitted: 0, pages: 0, pagesChanged: 0, bytesSent: 0,
    frozen: durationHistogram(), hash: durationHistogram(), commit: durationHistogram(),
    last: undefined, committedStateAt: Date.now(), inFlight: false,
  };
}

/** The standby's figures over every replica it holds. */
export interface StandbyCounters {
  epochsCommitted: number;
  epochsDiscarded: number;
  failovers: number;
  failoversFailed: number;
  commit: DurationHistogram;
  /** Failover: decision → the restored tree running. */
  failoverRunning: DurationHistogram;
}

export function standbyCounters(): StandbyCounters {
  return { epochsCommitted: 0, epochsDiscarded: 0, failovers: 0, failoversFailed: 0, commit: durationHistogram(), failoverRunning: durationHistogram() };
}
