#include "lazy/engine/scheduler.h"

#include <algorithm>

#include "util/clock.h"

namespace lazyd::engine {

void Scheduler::queue_fault(const Task& t, uint64_t page, uint64_t now) {
  const FaultEngineConfig& cfg = core_.cfg;
  fault_queue_.emplace_back(t.id, page);
  if (cfg.fault_around_bytes > core_.ps) {
    around_queue_.push_back(Around{t.id, page + core_.ps, cfg.fault_around_bytes - core_.ps});
  }
  last_fault_ = now;
  bg_len_ = cfg.bg_min_bytes;  // as criu: a fault shrinks the drain's next request (docs/protocol.md §4.5)
}

bool Scheduler::drain_pending() const {
  return link_.synchronous() && core_.rstf && core_.cfg.background && core_.counters.pages_remaining.get() > 0;
}

void Scheduler::schedule() {
  if (!link_.ready() || core_.finished) return;
  const FaultEngineConfig& cfg = core_.cfg;
  const uint64_t ps = core_.ps;
  // 1. Demand faults: exactly the faulting page, never held back.
  while (!fault_queue_.empty() && !core_.finished) {
    auto [id, page] = fault_queue_.front();
    fault_queue_.pop_front();
    Task* t = tasks_.by_id(id);
    if (!t || t->gone || !t->waiting.count(page)) continue;
    LazyRequest req = t->ranges.take(page, ps);
    if (req) requests_.submit(*t, req, ReqKind::kFault);
  }
  // 2. Fault-around: what follows recent faults.
  while (!around_queue_.empty() && requests_.size() < cfg.max_requests_in_flight && !core_.finished) {
    Around a = around_queue_.front();
    around_queue_.pop_front();
    Task* t = tasks_.by_id(a.task);
    if (!t || t->gone) continue;
    for (uint64_t addr = a.addr; addr < a.addr + a.bytes && !core_.finished;) {
      if (t->ranges.lookup(addr) != LazyRanges::Where::kRemaining) {
        addr += ps;
        continue;
      }
      LazyRequest req = t->ranges.take(addr, a.addr + a.bytes - addr);
      if (!req || !requests_.submit(*t, req, ReqKind::kAround)) break;
      addr += req.len;
    }
  }
  if (around_queue_.size() > 256) around_queue_.erase(around_queue_.begin(), around_queue_.end() - 256);
  // 3. Background drain, after RSTF only.
  if (!core_.rstf || !cfg.background) return;
  const bool faulting =
      tasks_.waiting() > 0 || now_ns() - last_fault_ < static_cast<uint64_t>(cfg.fault_quiet_ms) * 1000000ull;
  const uint64_t cap = faulting ? cfg.bg_in_flight_bytes_faulting : cfg.bg_in_flight_bytes;
  size_t idle_tasks = 0;
  while (requests_.bg_bytes() < cap && requests_.size() < cfg.max_requests_in_flight && !core_.finished &&
         idle_tasks < tasks_.all().size()) {
    Task* t = next_bg_task();
    if (!t) break;
    const uint64_t room = std::max((cap - requests_.bg_bytes()) & ~(ps - 1), ps);
    LazyRequest req = t->ranges.next_background(std::min(bg_len_, room));
    if (!req) {
      idle_tasks++;
      continue;
    }
    if (!requests_.submit(*t, req, ReqKind::kBackground)) break;
    bg_len_ = std::min(bg_len_ * 2, cfg.bg_max_bytes);
    if (link_.synchronous()) break;  // synchronous source: one chunk per loop pass
  }
}

// Round robin over tasks with something left to drain.
Task* Scheduler::next_bg_task() {
  auto& tasks = tasks_.all();
  if (tasks.empty()) return nullptr;
  auto it = tasks.upper_bound(bg_cursor_);
  for (size_t i = 0; i < tasks.size(); i++, ++it) {
    if (it == tasks.end()) it = tasks.begin();
    Task* t = it->second.get();
    if (!t->gone && !t->finished && t->ranges.pages_remaining() > 0) {
      bg_cursor_ = t->id;
      return t;
    }
  }
  return nullptr;
}

}  // namespace lazyd::engine
