// The fault engine's metrics (util/counter.h: written by the engine thread, read from any thread), the fault
// latency histogram, and the snapshots built from them: EngineSummary (events) and EngineStats (stats()).
#pragma once

#include <cstdint>

#include "lazy/engine/latency_quantiles.h"
#include "lazy/fault_engine.h"
#include "util/counter.h"

namespace lazyd::engine {

struct EngineCounters {
  // Totals (EngineSummary).
  Counter faults, pages_fault, pages_around, pages_background, pages_zero, pages_exist, pages_dropped, pages_total,
      bytes_received, copy_bytes, copy_ns;
  // Gauges, published after each loop pass (publish_gauges in fault_engine.cc).
  Counter tasks_active, pages_remaining, pages_in_flight, faults_waiting, requests_in_flight, bg_bytes_in_flight,
      bg_window_bytes, link_rtt_us, link_bandwidth_bps;
  // Other totals.
  Counter tasks_total, requests, events_fork, events_remap, events_remove, events_unmap, pages_discarded, bytes_sent,
      tls_failures, bytes_background, checksum_mismatches, reconnects, install_slices,
      faults_reasked;
  // Fault service time, and how each fault message ended.
  Counter latency_us[kLatencyBuckets], latency_sum_us, latency_count;
  LatencyQuantiles latency_fine;  // the same samples, for p50 / p99 / max (summary line, benchmarks)
  Counter results[kFaultResults];
  // The engine's own time: from listening to done or failed.
  Counter start_ns, end_ns;

  void count_result(FaultResult result, uint64_t faults);
  // `faults` fault messages settled now, waiting since t0; only those that got their page are timed.
  void settle(FaultResult result, uint64_t t0, uint64_t faults = 1);

  EngineSummary summary() const;
  EngineStats snapshot(EngineState state) const;
};

}  // namespace lazyd::engine
