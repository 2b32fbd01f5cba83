// The replication metrics: `lazyd replicate --metrics-address` (the primary: per-epoch freeze, hash and commit
// times, pages and bytes, lag) and `lazyd agent --metrics-address` (the standby: commits, discarded epochs,
// failovers). Values are read from the counters src/replicate/stats.ts keeps, when a scrape asks.
import type client from 'prom-client';
import type { ReplicaSummary } from '../replicate/protocol.js';
import type { DurationHistogram, ReplicateCounters, StandbyCounters } from '../replicate/stats.js';
import { counter, gauge, NativeHistogram } from './metric-types.js';

function histogram(registry: client.Registry, name: string, help: string, read: () => DurationHistogram): void {
  registry.registerMetric(new NativeHistogram(name, help, read) as unknown as client.Metric);
}

export function registerReplicateMetrics(registry: client.Registry, read: () => ReplicateCounters): void {
  counter(registry, 'lazyd_replicate_epochs_committed_total', 'epochs the standby acknowledged as committed', () => read().epochsCommitted);
  histogram(registry, 'lazyd_replicate_epoch_frozen_seconds', "per epoch: criu dump --leave-running's run time (an upper bound of the tasks' freeze)", () => read().frozen);
  histogram(registry, 'lazyd_replicate_epoch_hash_seconds', 'per epoch: hashing every page and writing the deltas', () => read().hash);
  histogram(registry, 'lazyd_replicate_epoch_commit_seconds', "per epoch: the standby's rebuild and check before its ack", () => read().commit);
  counter(registry, 'lazyd_replicate_pages_total', 'pages dumped, over all committed epochs', () => read().pages);
  counter(registry, 'lazyd_replicate_pages_changed_total', 'pages sent because they changed (every page with --tracking full and in a first epoch)', () => read().pagesChanged);
  counter(registry, 'lazyd_replicate_sent_bytes_total', 'bytes sent to the standby in committed epochs (images, deltas, messages)', () => read().bytesSent);
  gauge(registry, 'lazyd_replicate_committed_epoch', 'the last epoch the standby committed (0: none yet)', () => read().last?.epoch ?? 0);
  gauge(registry, 'lazyd_replicate_last_epoch_frozen_seconds', 'the last committed epoch: criu dump run time', () => (read().last?.frozenMs ?? 0) / 1000);
  gauge(registry, 'lazyd_replicate_last_epoch_pages_changed', 'the last committed epoch: pages sent', () => read().last?.pagesChanged);
  gauge(registry, 'lazyd_replicate_last_epoch_sent_bytes', 'the last committed epoch: bytes sent', () => read().last?.bytesSent);
  gauge(registry, 'lazyd_replicate_last_epoch_commit_seconds', "the last committed epoch: the standby's rebuild and check", () => (read().last?.commitMs ?? 0) / 1000);
  gauge(registry, 'lazyd_replicate_lag_seconds', "how far the standby's committed state is behind now: seconds since that epoch's dump (since the start before the first commit)", () => (Date.now() - read().committedStateAt) / 1000);
  gauge(registry, 'lazyd_replicate_lag_epochs', 'epochs dumped here and not yet committed on the standby (0 or 1: one epoch is in flight at a time)', () => (read().inFlight ? 1 : 0));
}

export function registerStandbyMetrics(registry: client.Registry, read: () => StandbyCounters, replicas: () => ReplicaSummary[]): void {
  counter(registry, 'lazyd_replica_epochs_committed_total', 'epochs committed (rebuilt, checked and renamed into place), over all replicas', () => read().epochsCommitted);
  counter(registry, 'lazyd_replica_epochs_discarded_total', 'epochs cut off half-way or refused and deleted (the committed one kept)', () => read().epochsDiscarded);
  counter(registry, 'lazyd_replica_failovers_total', 'failovers whose restore started the tree (lazyd failover or --failover-after)', () => read().failovers);
  counter(registry, 'lazyd_replica_failovers_failed_total', 'failovers whose restore failed (the images are kept)', () => read().failoversFailed);
  histogram(registry, 'lazyd_replica_commit_seconds', 'per epoch: rebuild and check of every file, then the rename', () => read().commit);
  histogram(registry, 'lazyd_replica_failover_running_seconds', 'per failover: the decision to the restored tree running', () => read().failoverRunning);
  gauge(registry, 'lazyd_replicas', 'replicas held on this standby', () => replicas().length);
  gauge(registry, 'lazyd_replica_primaries_connected', 'replicas whose primary is connected now', () => replicas().filter((r) => r.connected).length);
  gauge(registry, 'lazyd_replica_committed_bytes', 'bytes of the committed epochs of every replica', () => replicas().reduce((sum, r) => sum + r.bytes, 0));
}
