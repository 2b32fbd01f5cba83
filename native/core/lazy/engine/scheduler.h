// What the fault engine asks the page source for next, in priority order (lazy/fault_engine.h):
//   1. demand faults: the faulting page alone, never held back;
//   2. fault-around: the rest of a window after each faulting page;
//   3. the background drain, after RSTF only (before it the restorer may not have registered the VMAs yet), in
//      requests that double from bg_min_bytes to bg_max_bytes. Its bytes in flight follow the link's measured
//      bandwidth x RTT (link_estimator.h; bg_in_flight_bytes the floor, bg_in_flight_max_bytes the ceiling), and
//      are capped low while faults wait or were seen in the last fault_quiet_ms (and for drain_start_ms after RSTF
//      when faults share the drain's connection), so no fault queues behind megabytes of drain, and held at the
//      floor for kRecentFaultQuiets quiet times after a fault and during drain_start_ms on a priority link (the
//      window opens past it only while the tasks do not fault): drain_window(). bg_rate_bytes caps the drain's
//      rate (a token bucket; faults and fault-around are not limited).
#pragma once

#include <cstdint>
#include <deque>
#include <utility>

#include "lazy/engine/core.h"
#include "lazy/engine/link_estimator.h"
#include "lazy/engine/requests.h"
#include "lazy/engine/source_link.h"
#include "lazy/engine/tasks.h"

namespace lazyd::engine {

// What decides the drain's bytes in flight at one moment (Scheduler::drain_cap gathers it).
struct DrainMoment {
  uint64_t since_rstf_ns = 0;      // now - RSTF
  uint64_t since_fault_ns = UINT64_MAX;  // now - the last fault; UINT64_MAX: none yet
  bool tasks_waiting = false;      // a task waits for a page now
  bool priority_link = false;      // demand faults go on a connection of their own (docs/protocol.md §7.5)
  uint64_t estimate_window = 0;    // the link estimate's window, within the floor and the ceiling
};
// The drain's bytes in flight allowed at that moment.
uint64_t drain_window(const FaultEngineConfig& cfg, const DrainMoment& m);
constexpr uint64_t kRecentFaultQuiets = 20;  // 100 ms with the 5 ms quiet time

class Scheduler {
 public:
  Scheduler(EngineCore& core, TaskTable& tasks, RequestTable& requests, SourceLink& link)
      : core_(core), tasks_(tasks), requests_(requests), link_(link) {}
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // After the configuration is settled (page-aligned sizes).
  void start();
  // A fault on a page still to fetch: request it, and the window after it.
  void queue_fault(const Task& t, uint64_t page, uint64_t now);
  // A fault on a page already in flight: a recent fault; with a priority connection the page is asked for again
  // there unless a fault or fault-around request has it (a drain request's reply may be a window away).
  void fault_on_in_flight(const Task& t, uint64_t page, uint64_t now);
  // Submits what is due, in priority order.
  void schedule();
  // The drain of a synchronous (local) source has work left: the loop must not sleep.
  bool drain_pending() const;
  bool faults_queued() const { return !fault_queue_.empty() || !reask_queue_.empty(); }  // read, not asked for yet
  // ms until the drain's rate cap lets it send again (-1: not waiting for it).
  int next_wake_ms() const;

 private:
  struct Around {
    uint64_t task;
    uint64_t addr;
    uint64_t bytes;
  };
  Task* next_bg_task();
  // The drain's bytes in flight allowed now.
  uint64_t drain_cap(uint64_t now) const;

  EngineCore& core_;
  TaskTable& tasks_;
  RequestTable& requests_;
  SourceLink& link_;
  std::deque<std::pair<uint64_t, uint64_t>> fault_queue_;  // (task, page) to request
  std::deque<std::pair<uint64_t, uint64_t>> reask_queue_;  // (task, page) in flight in the drain, to ask again
  std::deque<Around> around_queue_;
  uint64_t bg_len_ = 0;     // the drain's next request size
  uint64_t bg_cursor_ = 0;  // the task the drain served last (round robin)
  uint64_t last_fault_ = 0;
  TokenBucket rate_;         // --drain-rate
  uint64_t rate_wake_ = 0;   // the drain waits for the rate cap until then (0: not waiting)
};

}  // namespace lazyd::engine
