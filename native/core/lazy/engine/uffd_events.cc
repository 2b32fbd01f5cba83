#include "lazy/engine/uffd_events.h"

#include <unistd.h>

#include <cstring>

#include "kernel/uffd.h"
#include "util/clock.h"
#include "util/text.h"

namespace lazyd::engine {

void UffdEvents::read(Task& t) {
  if (t.gone || t.uffd < 0) return;
  uffd_msg msgs[32];
  for (;;) {
    int n = uffd::read_events(t.uffd, msgs, 32);
    if (n < 0) {
      core_.warn("reading the uffd of pid " + std::to_string(t.pid) + " failed: " + strerror(-n));
      tasks_.gone(t);
      return;
    }
    for (int i = 0; i < n && !core_.finished && !t.gone; i++) handle(t, msgs[i]);
    if (n < 32 || core_.finished || t.gone) return;
  }
}

void UffdEvents::handle(Task& t, const uffd_msg& msg) {
  EngineCounters& counters = core_.counters;
  switch (msg.event) {
    case UFFD_EVENT_PAGEFAULT:
      on_fault(t, msg.arg.pagefault.address & ~(core_.ps - 1));
      break;
    case UFFD_EVENT_FORK:
      on_fork(t, static_cast<int>(msg.arg.fork.ufd));
      break;
    case UFFD_EVENT_REMAP: {
      counters.events_remap.add();
      const uint64_t from = msg.arg.remap.from, to = msg.arg.remap.to, len = msg.arg.remap.len;
      t.ranges.remap(from, to, len);
      // A thread blocked on a fault in the old place would be woken by an install at the new address only if
      // it faulted there: wake it, it retries against the new layout.
      tasks_.wake_waiting(t, from, from + len, FaultResult::kRetried);
      break;
    }
    case UFFD_EVENT_REMOVE: {
      counters.events_remove.add();
      const uint64_t start = msg.arg.remove.start, end = msg.arg.remove.end;
      // madvise(DONTNEED/REMOVE): the VMA stays, so unregister first: later touches must be plain zero-fill,
      // never old data from a reply still on its way (docs/protocol.md §4.4, §6.2). Unregister also wakes waiters.
      int rc = uffd::unregister_range(t.uffd, start, end - start);
      if (rc < 0) {
        auto cls = uffd::classify(rc, true);
        if (cls == uffd::ErrorClass::kGone) {
          tasks_.gone(t);
          return;
        }
        core_.warn("UFFDIO_UNREGISTER " + hex(start) + "-" + hex(end) + " of pid " + std::to_string(t.pid) +
                   " failed: " + strerror(-rc));
      }
      drop(t, start, end);
      break;
    }
    case UFFD_EVENT_UNMAP: {
      counters.events_unmap.add();
      drop(t, msg.arg.remove.start, msg.arg.remove.end);
      tasks_.wake_waiting(t, msg.arg.remove.start, msg.arg.remove.end, FaultResult::kDropped);
      break;
    }
    default:
      core_.warn("unexpected uffd event " + std::to_string(msg.event) + " from pid " + std::to_string(t.pid));
      break;
  }
}

void UffdEvents::drop(Task& t, uint64_t start, uint64_t end) {
  const uint64_t pages = t.ranges.drop(start, end);
  t.summary.pages_dropped += pages;
  core_.counters.pages_dropped.add(pages);
  tasks_.settle_waiting(t, start & ~(core_.ps - 1), end, FaultResult::kDropped);
}

void UffdEvents::on_fault(Task& t, uint64_t page) {
  core_.counters.faults.add();
  t.summary.faults++;
  const uint64_t now = now_ns();
  switch (t.ranges.lookup(page)) {
    case LazyRanges::Where::kRemaining:
      tasks_.add_waiter(t, page, now);
      scheduler_.queue_fault(t, page, now);
      break;
    case LazyRanges::Where::kInFlight:
      // Already requested (by a fault, fault-around or the drain): its install wakes this thread.
      tasks_.add_waiter(t, page, now);
      scheduler_.fault_on_in_flight(t, page, now);
      break;
    case LazyRanges::Where::kNone:
      // Not a lazy page: never dumped (or dropped), so it is a zero page (§4.4).
      zero_fault(t, page, now);
      break;
  }
}

void UffdEvents::zero_fault(Task& t, uint64_t page, uint64_t t0) {
  EngineCounters& counters = core_.counters;
  uffd::CopyResult r = uffd::zeropage(t.uffd, page, core_.ps, false);
  if (r.err == 0) {
    counters.pages_zero.add();
    t.summary.pages_zero++;
    counters.settle(FaultResult::kZeroPage, t0);
    return;
  }
  switch (uffd::classify(r.err)) {
    case uffd::ErrorClass::kExists:
    case uffd::ErrorClass::kNoEnt:
      // Already populated, or no longer registered (a REMOVE unregistered it): waking is enough.
      uffd::wake(t.uffd, page, core_.ps);
      counters.settle(uffd::classify(r.err) == uffd::ErrorClass::kExists ? FaultResult::kExists : FaultResult::kDropped,
                      t0);
      return;
    case uffd::ErrorClass::kRetry:
      zero_retry_.emplace_back(t.id, page);
      return;
    case uffd::ErrorClass::kGone:
      counters.count_result(FaultResult::kGone, 1);
      tasks_.gone(t);
      return;
    default:
      core_.fail("UFFDIO_ZEROPAGE at " + hex(page) + " of pid " + std::to_string(t.pid) + " failed: " +
                 strerror(-r.err));
      return;
  }
}

void UffdEvents::retry_zero_pages() {
  if (zero_retry_.empty()) return;
  auto list = std::move(zero_retry_);
  zero_retry_.clear();
  for (auto [id, page] : list) {
    Task* t = tasks_.by_id(id);
    if (!t || t->gone) {
      core_.counters.count_result(FaultResult::kGone, 1);
      continue;
    }
    read(*t);  // read the pending event first
    if (t->gone || core_.finished) {
      core_.counters.count_result(FaultResult::kGone, 1);
      continue;
    }
    if (t->ranges.lookup(page) == LazyRanges::Where::kNone) {
      zero_fault(*t, page, now_ns());
    } else {
      core_.counters.count_result(FaultResult::kRetried, 1);  // the event made it lazy again (a remap): it faults anew
    }
  }
}

void UffdEvents::on_fork(Task& parent, int child_fd) {
  core_.counters.events_fork.add();
  // The child's uffd is already an fd of ours (the kernel installs it when the event is read). It is served
  // from the parent's image pid; it lacks what the parent lacks, in-flight pages included (§4.4, §6.1).
  std::unique_ptr<Task> child = tasks_.make();
  child->pid = parent.pid;
  child->uffd = child_fd;
  child->ranges = parent.ranges.fork_copy();
  int err = 0;
  Task* added = tasks_.add(std::move(child), &err);
  if (!added) {
    core_.fail("cannot watch the uffd of a child of pid " + std::to_string(parent.pid) + ": " + strerror(-err));
    return;
  }
  EngineEvent e;
  e.kind = EngineEvent::Kind::kFork;
  e.pid = parent.pid;
  e.task = added->id;
  e.parent_task = parent.id;
  core_.emit(std::move(e));
}

}  // namespace lazyd::engine
