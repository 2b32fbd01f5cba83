// The fault engine's task table: every restored task (and every child forked since), its lazy ranges, the
// faults waiting for each page, and a task's end (done, or exited).
#pragma once

#include <cstdint>
#include <map>
#include <memory>

#include "lazy/engine/core.h"
#include "lazy/lazy_ranges.h"

namespace lazyd::engine {

struct Task {
  uint64_t id = 0;
  int pid = 0;
  int host_pid = 0;  // 0: unknown (forked children, or no credentials)
  int uffd = -1;
  // --no-drain: a pidfd of host_pid, readable once the process exited. Nothing else tells: the kernel gives a
  // uffd no event when its process exits, and without a drain no UFFDIO_COPY fails with ESRCH to show it.
  int pidfd = -1;
  LazyRanges ranges;
  bool gone = false;
  bool finished = false;
  size_t requests = 0;  // replies still to come for this task
  struct Waiter {
    uint64_t since = 0;   // when the page's first PAGEFAULT was read
    uint64_t faults = 0;  // PAGEFAULT messages waiting for it (threads of the task)
  };
  std::map<uint64_t, Waiter> waiting;  // faulting page -> its waiters
  uint64_t started_ns = 0;             // hand-over (or fork)
  EngineSummary summary;
  explicit Task(uint64_t page_size) : ranges(page_size) {}
};

class TaskTable {
 public:
  explicit TaskTable(EngineCore& core) : core_(core) {}
  ~TaskTable();  // closes the uffds still open
  TaskTable(const TaskTable&) = delete;
  TaskTable& operator=(const TaskTable&) = delete;

  std::unique_ptr<Task> make() const { return std::make_unique<Task>(core_.ps); }
  // Takes a new task (pid, uffd, host pid and ranges set): gives it the next id, counts its pages and watches its
  // uffd. Null when the uffd cannot be watched: the uffd is closed, *err is -errno, the caller fails the engine.
  Task* add(std::unique_ptr<Task> task, int* err);
  Task* by_id(uint64_t id);
  std::map<uint64_t, std::unique_ptr<Task>>& all() { return tasks_; }

  // ---- faults waiting for their page ----
  void add_waiter(Task& t, uint64_t page, uint64_t now);
  // Faults waiting in [start, end) are settled (installed, or their range went away).
  void settle_waiting(Task& t, uint64_t start, uint64_t end, FaultResult result);
  // The same, and their threads are woken (to fault again, or to find the range gone).
  void wake_waiting(Task& t, uint64_t start, uint64_t end, FaultResult result);
  uint64_t waiting() const { return waiting_total_; }

  // ---- a task's end ----
  // The process exited (docs/protocol.md §6.4): forget its ranges, keep the record until its replies are read and discarded.
  void gone(Task& t);
  // Done, or exited with pages lost: its uffd closed — which unregisters what is left, so never-dumped pages
  // then fault as normal zero pages — and its summary, with its own time, reported.
  void end(Task& t, EngineEvent::Kind kind);

  struct Totals {
    uint64_t pages_remaining = 0;
    uint64_t pages_in_flight = 0;
    uint64_t active = 0;
  };
  Totals totals() const;

 private:
  EngineCore& core_;
  std::map<uint64_t, std::unique_ptr<Task>> tasks_;
  uint64_t next_id_ = 1;
  uint64_t waiting_total_ = 0;
};

}  // namespace lazyd::engine
