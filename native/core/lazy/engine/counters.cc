#include "lazy/engine/counters.h"

#include <algorithm>

#include "util/clock.h"

namespace lazyd {

// 8 * 2^(k/4) µs rounded, k = 0..68 (fault_engine.h), then +inf.
const uint64_t kLatencyBoundsUs[kLatencyBuckets] = {
    8, 10, 11, 13, 16, 19, 23, 27, 32, 38, 45, 54, 64, 76, 91, 108, 128, 152, 181, 215, 256, 304, 362, 431, 512,
    609, 724, 861, 1024, 1218, 1448, 1722, 2048, 2435, 2896, 3444, 4096, 4871, 5793, 6889, 8192, 9742, 11585, 13777,
    16384, 19484, 23170, 27554, 32768, 38968, 46341, 55109, 65536, 77936, 92682, 110218, 131072, 155872, 185364,
    220436, 262144, 311744, 370728, 440872, 524288, 623487, 741455, 881744, 1048576, UINT64_MAX};

const char* fault_result_name(FaultResult result) {
  switch (result) {
    case FaultResult::kCopied: return "copied";
    case FaultResult::kZeroPage: return "zeropage";
    case FaultResult::kExists: return "exists";
    case FaultResult::kDropped: return "dropped";
    case FaultResult::kRetried: return "retried";
    case FaultResult::kGone: return "gone";
  }
  return "?";
}

const char* engine_state_name(EngineState state) {
  switch (state) {
    case EngineState::kIdle: return "idle";
    case EngineState::kWaitingRestore: return "waiting-restore";
    case EngineState::kHandshake: return "handshake";
    case EngineState::kRunning: return "running";
    case EngineState::kClosing: return "closing";
    case EngineState::kDone: return "done";
    case EngineState::kFailed: return "failed";
  }
  return "?";
}

namespace engine {

void EngineCounters::count_result(FaultResult result, uint64_t faults) {
  results[static_cast<size_t>(result)].add(faults);
}

void EngineCounters::settle(FaultResult result, uint64_t t0, uint64_t faults) {
  count_result(result, faults);
  if (result != FaultResult::kCopied && result != FaultResult::kZeroPage && result != FaultResult::kExists) return;
  const uint64_t us = (now_ns() - t0) / 1000;
  const size_t i = static_cast<size_t>(std::lower_bound(kLatencyBoundsUs, kLatencyBoundsUs + kLatencyBuckets - 1, us) -
                                      kLatencyBoundsUs);
  latency_us[i].add(faults);
  latency_fine.record(us, faults);
  latency_sum_us.add(us * faults);
  latency_count.add(faults);
}

EngineSummary EngineCounters::summary() const {
  EngineSummary s;
  s.faults = faults.get();
  s.pages_fault = pages_fault.get();
  s.pages_around = pages_around.get();
  s.pages_background = pages_background.get();
  s.pages_zero = pages_zero.get();
  s.pages_exist = pages_exist.get();
  s.pages_dropped = pages_dropped.get();
  s.pages_total = pages_total.get();
  s.bytes_received = bytes_received.get();
  s.copy_bytes = copy_bytes.get();
  s.copy_ns = copy_ns.get();
  const uint64_t t0 = start_ns.get(), t1 = end_ns.get();
  s.seconds = t0 ? static_cast<double>((t1 ? t1 : now_ns()) - t0) / 1e9 : 0;
  return s;
}

EngineStats EngineCounters::snapshot(EngineState state) const {
  EngineStats s;
  s.state = state;
  s.summary = summary();
  s.tasks_total = tasks_total.get();
  s.tasks_active = tasks_active.get();
  s.pages_remaining = pages_remaining.get();
  s.pages_in_flight = pages_in_flight.get();
  s.faults_waiting = faults_waiting.get();
  s.requests = requests.get();
  s.requests_in_flight = requests_in_flight.get();
  s.bg_bytes_in_flight = bg_bytes_in_flight.get();
  s.bg_window_bytes = bg_window_bytes.get();
  s.link_rtt_us = link_rtt_us.get();
  s.link_bandwidth_bps = link_bandwidth_bps.get();
  s.bytes_background = bytes_background.get();
  s.events_fork = events_fork.get();
  s.events_remap = events_remap.get();
  s.events_remove = events_remove.get();
  s.events_unmap = events_unmap.get();
  s.pages_discarded = pages_discarded.get();
  s.tls_failures = tls_failures.get();
  s.checksum_mismatches = checksum_mismatches.get();
  s.reconnects = reconnects.get();
  s.install_slices = install_slices.get();
  s.faults_reasked = faults_reasked.get();
  for (size_t i = 0; i < kLatencyBuckets; i++) s.latency_us[i] = latency_us[i].get();
  s.latency_sum_us = latency_sum_us.get();
  s.latency_count = latency_count.get();
  s.latency_p50_us = latency_fine.quantile_us(0.5);
  s.latency_p99_us = latency_fine.quantile_us(0.99);
  s.latency_max_us = latency_fine.max_us();
  for (size_t i = 0; i < kFaultResults; i++) s.faults_by_result[i] = results[i].get();
  s.bytes_sent = bytes_sent.get();
  return s;
}

}  // namespace engine
}  // namespace lazyd
