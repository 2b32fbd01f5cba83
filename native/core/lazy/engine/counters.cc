#include "lazy/engine/counters.h"

#include "util/clock.h"

namespace lazyd {

const uint64_t kLatencyBoundsUs[kLatencyBuckets] = {10,   25,    50,    100,   250,    500,       1000,
                                                    2500, 5000,  10000, 50000, 250000, UINT64_MAX};

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
  size_t i = 0;
  while (i + 1 < kLatencyBuckets && us > kLatencyBoundsUs[i]) i++;
  latency_us[i].add(faults);
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
  s.events_fork = events_fork.get();
  s.events_remap = events_remap.get();
  s.events_remove = events_remove.get();
  s.events_unmap = events_unmap.get();
  s.pages_discarded = pages_discarded.get();
  s.tls_failures = tls_failures.get();
  for (size_t i = 0; i < kLatencyBuckets; i++) s.latency_us[i] = latency_us[i].get();
  s.latency_sum_us = latency_sum_us.get();
  s.latency_count = latency_count.get();
  for (size_t i = 0; i < kFaultResults; i++) s.faults_by_result[i] = results[i].get();
  s.bytes_sent = bytes_sent.get();
  return s;
}

}  // namespace engine
}  // namespace lazyd
