// lazyd's Prometheus metrics. Nothing is counted here: every value is read from the native counters (relaxed
// atomics kept by the page-server and fault-engine threads) when a scrape asks, through prom-client collect()
// callbacks (the replication commands' values come from their plain counters, src/replicate/stats.ts). Base
// units (seconds, bytes), counters end in _total, and no label carries a pid or an address.
import fs from 'node:fs';
import path from 'node:path';
import client from 'prom-client';
import { repoRoot } from '../paths.js';
import type { LazyPagesStats, PageServerStats } from '../native.js';
import type { ReplicaSummary } from '../replicate/protocol.js';
import type { ReplicateCounters, StandbyCounters } from '../replicate/stats.js';
import { counter, gauge, labelledCounter, NativeHistogram } from './metric-types.js';
import { registerReplicateMetrics, registerStandbyMetrics } from './replica-metrics.js';

/** What `PageServer.stats()` (native) returns. */
export type PageServerCounters = PageServerStats;

/** What `LazyPages.stats()` (native) returns. */
export type EngineCounters = LazyPagesStats;

export interface MetricsSources {
  role: 'page-server' | 'lazy-pages' | 'replicate' | 'agent';
  /** --criu-abi as given (auto, 4.1, 4.2). */
  criuAbi: string;
  pageServer?: () => PageServerCounters | undefined;
  /** Staged checkpoints held now (serve mode with staging). */
  stagedCheckpoints?: () => number;
  lazyPages?: () => EngineCounters | undefined;
  /** `lazyd replicate`: the primary's epochs. */
  replicate?: () => ReplicateCounters;
  /** `lazyd agent`: the standby's replicas. */
  standby?: { counters: () => StandbyCounters; replicas: () => ReplicaSummary[] };
}

export function lazydVersion(): string {
  try {
    return JSON.parse(fs.readFileSync(path.join(repoRoot(), 'package.json'), 'utf8')).version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

export function createMetricsRegistry(sources: MetricsSources): client.Registry {
  const registry = new client.Registry();
  const info = new client.Gauge({
    name: 'lazyd_build_info',
    help: 'lazyd build and runtime: always 1, the facts are the labels',
    labelNames: ['version', 'node_version', 'criu_abi', 'role'],
    registers: [registry],
  });
  info.set({ version: lazydVersion(), node_version: process.version, criu_abi: sources.criuAbi, role: sources.role }, 1);

  const ps = sources.pageServer;
  if (ps) {
    counter(registry, 'lazyd_page_server_sessions_total', 'page-server sessions accepted (lazy fetches and uploads)', () => ps()?.sessionsTotal);
    counter(registry, 'lazyd_page_server_sessions_failed_total', 'page-server sessions that ended with an error', () => ps()?.sessionsFailed);
    gauge(registry, 'lazyd_page_server_sessions_active', 'page-server sessions open now', () => ps()?.sessionsActive);
    gauge(registry, 'lazyd_page_server_requests_in_flight', 'GET requests read and not yet answered in full, over all sessions', () => ps()?.requestsInFlight);
    counter(registry, 'lazyd_page_server_requests_total', 'GET requests answered by the page server', () => ps()?.getsTotal);
    counter(registry, 'lazyd_page_server_pages_sent_total', 'pages sent in GET replies', () => ps()?.pagesTotal);
    counter(registry, 'lazyd_page_server_sent_bytes_total', 'bytes the page server sent (reply headers, pages, CLOSE answers)', () => ps()?.bytesTotal);
    counter(registry, 'lazyd_page_server_received_bytes_total', 'bytes the page server read (requests, uploads)', () => ps()?.bytesReceived);
    counter(
      registry,
      'lazyd_page_server_access_refused_total',
      'connections refused at accept and sessions refused at their first command by --allow-from & co (address or certificate name), and fetch sessions refused by the link binding (unknown token, a GET outside the token\'s checkpoint, no token under --require-link-token)',
      () => ps()?.accessRefused,
    );
    gauge(registry, 'lazyd_staging_bytes', 'page bytes held by staged checkpoints and uploads in progress', () => ps()?.stagingBytes);
    gauge(registry, 'lazyd_staging_limit_bytes', 'the staging memory cap (--staging-max-bytes)', () => ps()?.stagingMaxBytes);
    if (sources.stagedCheckpoints) {
      const staged = sources.stagedCheckpoints;
      gauge(registry, 'lazyd_staged_checkpoints', 'staged checkpoints served from memory now', () => staged());
    }
  }

  const lp = sources.lazyPages;
  if (lp) {
    labelledCounter(registry, 'lazyd_faults_total', 'page faults of the restored tasks, by how each ended', 'result', () => lp()?.faultsByResult);
    registry.registerMetric(
      new NativeHistogram(
        'lazyd_fault_service_seconds',
        'fault service time: from reading the PAGEFAULT to the page installed (copied, zero page, or already there)',
        () => {
          const s = lp();
          return s && { boundsUs: s.latencyBoundsUs, counts: s.latencyCounts, sumUs: s.latencySumUs, count: s.latencyCount };
        },
      ) as unknown as client.Metric,
    );
    labelledCounter(registry, 'lazyd_pages_installed_total', 'lazy pages installed with UFFDIO_COPY, by path', 'path', () => {
      const s = lp()?.summary;
      return s && { demand: s.pagesFault, near_fault: s.pagesAround, background: s.pagesBackground };
    });
    counter(registry, 'lazyd_zero_pages_total', 'faults outside any lazy range served with UFFDIO_ZEROPAGE', () => lp()?.summary.pagesZero);
    counter(registry, 'lazyd_pages_present_total', 'lazy pages found already present (EEXIST)', () => lp()?.summary.pagesExist);
    counter(registry, 'lazyd_pages_dropped_total', 'lazy pages no longer wanted (unmapped, removed, task exited)', () => lp()?.summary.pagesDropped);
    gauge(registry, 'lazyd_restore_lazy_pages', 'lazy pages of the restore (those of forked children included)', () => lp()?.summary.pagesTotal);
    gauge(registry, 'lazyd_pages_remaining', 'lazy pages not installed yet (requested or not)', () => {
      const s = lp();
      return s && s.pagesRemaining + s.pagesInFlight;
    });
    counter(registry, 'lazyd_page_requests_total', 'requests sent to the page source', () => lp()?.requests);
    gauge(registry, 'lazyd_page_requests_in_flight', 'requests sent to the page source and not answered yet', () => lp()?.requestsInFlight);
    gauge(registry, 'lazyd_drain_window_bytes', "the drain's bytes in flight allowed now (measured bandwidth x RTT within --drain-inflight-bytes..--drain-inflight-max-bytes, or the faulting cap)", () => lp()?.drainWindowBytes);
    counter(registry, 'lazyd_drain_requested_bytes_total', 'bytes the background drain requested', () => lp()?.drainRequestedBytes);
    counter(registry, 'lazyd_faults_reasked_total', 'demand faults on a page a drain request held, asked for again on the priority connection', () => lp()?.faultsReasked);
    counter(registry, 'lazyd_drain_install_slices_total', 'drain reply parts installed a loop pass later (faults first: a fault waits behind one 128 KiB slice)', () => lp()?.installSlices);
    gauge(registry, 'lazyd_page_link_rtt_seconds', "the page link's round trip as measured from replies that did not queue (0: not yet)", () => {
      const us = lp()?.linkRttUs;
      return us === undefined ? undefined : us / 1e6;
    });
    gauge(registry, 'lazyd_page_link_bandwidth_bytes', "the page link's delivery rate as measured, bytes per second (0: not yet)", () => lp()?.linkBandwidth);
    gauge(registry, 'lazyd_faults_waiting', 'faulting pages waiting for their install now', () => lp()?.faultsWaiting);
    gauge(registry, 'lazyd_restores_active', 'restores in progress (1 from the restore connection until every page is in)', () => {
      const state = lp()?.state;
      return state === 'handshake' || state === 'running' || state === 'closing' ? 1 : 0;
    });
    counter(registry, 'lazyd_tasks_total', 'restored tasks handed over (and their forked children)', () => lp()?.tasksTotal);
    gauge(registry, 'lazyd_tasks_active', 'restored tasks with lazy pages still to install', () => lp()?.tasksActive);
    counter(registry, 'lazyd_lazy_pages_received_bytes_total', 'bytes read from the page source (reply headers and pages)', () => lp()?.summary.bytesReceived);
    counter(registry, 'lazyd_uffd_copied_bytes_total', 'bytes UFFDIO_COPY placed into the restored tasks', () => lp()?.summary.copyBytes);
    counter(registry, 'lazyd_uffd_copy_seconds_total', 'time spent inside UFFDIO_COPY (the install\'s own cost; fresh pages that must first be backed make it grow)', () => {
      const ns = lp()?.summary.copyNs;
      return ns === undefined ? undefined : ns / 1e9;
    });
    counter(registry, 'lazyd_page_checksum_mismatches_total', 'pages that failed their lazyd link checksum (each fetched again once; twice fails the restore)', () => lp()?.checksumMismatches);
    counter(registry, 'lazyd_lazy_pages_sent_bytes_total', 'bytes sent to the page server (requests, CLOSE)', () => lp()?.bytesSent);
  }

  if (sources.replicate) registerReplicateMetrics(registry, sources.replicate);
  if (sources.standby) registerStandbyMetrics(registry, sources.standby.counters, sources.standby.replicas);
  if (ps || lp) counter(registry, 'lazyd_tls_failures_total', 'TLS handshakes or records that failed', () => ps?.()?.tlsFailures ?? lp?.()?.tlsFailures ?? 0);
  return registry;
}
