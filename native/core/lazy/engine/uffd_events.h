// Reading the tasks' userfaultfds (docs/protocol.md §4.4): PAGEFAULT (a page to fetch, one already on its way, or a zero page),
// FORK (a child task sharing the parent's image pid), REMAP (mremap: the ranges move), REMOVE (madvise
// DONTNEED/REMOVE: unregistered, then dropped) and UNMAP (dropped). A ZEROPAGE that hits EAGAIN (an event is
// pending first) is retried after the task's events are read.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <linux/userfaultfd.h>

#include "lazy/engine/core.h"
#include "lazy/engine/scheduler.h"
#include "lazy/engine/tasks.h"

namespace lazyd::engine {

class UffdEvents {
 public:
  UffdEvents(EngineCore& core, TaskTable& tasks, Scheduler& scheduler)
      : core_(core), tasks_(tasks), scheduler_(scheduler) {}
  UffdEvents(const UffdEvents&) = delete;
  UffdEvents& operator=(const UffdEvents&) = delete;

  // Reads and handles every message waiting on t's uffd.
  void read(Task& t);
  // The zero pages that hit EAGAIN, after their task's pending event is read.
  void retry_zero_pages();
  bool has_retries() const { return !zero_retry_.empty(); }

 private:
  void handle(Task& t, const uffd_msg& msg);
  void on_fault(Task& t, uint64_t page);
  void zero_fault(Task& t, uint64_t page, uint64_t t0);
  void on_fork(Task& parent, int child_fd);
  void drop(Task& t, uint64_t start, uint64_t end);

  EngineCore& core_;
  TaskTable& tasks_;
  Scheduler& scheduler_;
  std::vector<std::pair<uint64_t, uint64_t>> zero_retry_;  // (task, page) whose ZEROPAGE hit EAGAIN
};

}  // namespace lazyd::engine
