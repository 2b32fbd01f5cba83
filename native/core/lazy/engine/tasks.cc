#include "lazy/engine/tasks.h"

#include <sys/epoll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kernel/uffd.h"
#include "util/clock.h"

namespace lazyd::engine {

TaskTable::~TaskTable() {
  for (auto& entry : tasks_) {
    if (entry.second->uffd >= 0) close(entry.second->uffd);
    if (entry.second->pidfd >= 0) close(entry.second->pidfd);
  }
}

Task* TaskTable::add(std::unique_ptr<Task> task, int* err) {
  task->id = next_id_++;
  task->summary.pages_total = task->ranges.pages_remaining();
  task->started_ns = now_ns();
  core_.counters.pages_total.add(task->summary.pages_total);
  core_.counters.tasks_total.add();
  const int rc = core_.epoll_add(task->uffd, EPOLLIN | EPOLLRDHUP, kTaskTagBase + task->id);
  if (rc < 0) {
    close(task->uffd);
    *err = rc;
    return nullptr;
  }
  if (!core_.cfg.background && task->host_pid > 0) {
    // Best effort: without it (no pidfd_open, pid unknown) the daemon ends only once every page was touched.
    const int fd = static_cast<int>(syscall(SYS_pidfd_open, task->host_pid, 0));
    if (fd >= 0 && core_.epoll_add(fd, EPOLLIN, kPidfdTagBase + task->id) == 0) task->pidfd = fd;
    else if (fd >= 0) close(fd);
  }
  Task* added = task.get();
  tasks_.emplace(added->id, std::move(task));
  return added;
}

Task* TaskTable::by_id(uint64_t id) {
  auto it = tasks_.find(id);
  return it == tasks_.end() ? nullptr : it->second.get();
}

void TaskTable::add_waiter(Task& t, uint64_t page, uint64_t now) {
  auto [it, fresh] = t.waiting.emplace(page, Task::Waiter{now, 0});
  it->second.faults++;
  if (fresh) waiting_total_++;
}

void TaskTable::settle_waiting(Task& t, uint64_t start, uint64_t end, FaultResult result) {
  for (auto it = t.waiting.lower_bound(start); it != t.waiting.end() && it->first < end;) {
    core_.counters.settle(result, it->second.since, it->second.faults);
    it = t.waiting.erase(it);
    waiting_total_--;
  }
}

void TaskTable::wake_waiting(Task& t, uint64_t start, uint64_t end, FaultResult result) {
  for (auto it = t.waiting.lower_bound(start & ~(core_.ps - 1)); it != t.waiting.end() && it->first < end;) {
    uffd::wake(t.uffd, it->first, core_.ps);
    core_.counters.settle(result, it->second.since, it->second.faults);
    it = t.waiting.erase(it);
    waiting_total_--;
  }
}

void TaskTable::gone(Task& t) {
  if (t.gone) return;
  t.gone = true;
  const uint64_t lost = t.ranges.pages_remaining() + t.ranges.pages_in_flight();
  t.summary.pages_dropped += lost;
  core_.counters.pages_dropped.add(lost);
  t.ranges = LazyRanges(core_.ps);
  for (const auto& entry : t.waiting) core_.counters.count_result(FaultResult::kGone, entry.second.faults);
  waiting_total_ -= t.waiting.size();
  t.waiting.clear();
  end(t, EngineEvent::Kind::kTaskExited);
}

void TaskTable::end(Task& t, EngineEvent::Kind kind) {
  if (t.uffd >= 0) {
    core_.epoll_del(t.uffd);
    close(t.uffd);
    t.uffd = -1;
  }
  if (t.pidfd >= 0) {
    core_.epoll_del(t.pidfd);
    close(t.pidfd);
    t.pidfd = -1;
  }
  EngineEvent e;
  e.kind = kind;
  e.pid = t.pid;
  e.task = t.id;
  t.summary.seconds = static_cast<double>(now_ns() - t.started_ns) / 1e9;
  e.summary = t.summary;
  core_.emit(std::move(e));
}

TaskTable::Totals TaskTable::totals() const {
  Totals totals;
  for (auto& entry : tasks_) {
    totals.pages_remaining += entry.second->ranges.pages_remaining();
    totals.pages_in_flight += entry.second->ranges.pages_in_flight();
    totals.active += !entry.second->finished;
  }
  return totals;
}

}  // namespace lazyd::engine
