#include "lazy/engine/scheduler.h"

#include <algorithm>

#include "util/clock.h"

namespace lazyd::engine {

void Scheduler::start() {
  const FaultEngineConfig& cfg = core_.cfg;
  bg_len_ = cfg.bg_min_bytes;
  // The burst: one largest drain request (tokens are spent per request, up front).
  rate_ = TokenBucket(cfg.bg_rate_bytes, cfg.bg_max_bytes, now_ns());
}

void Scheduler::queue_fault(const Task& t, uint64_t page, uint64_t now) {
  const FaultEngineConfig& cfg = core_.cfg;
  fault_queue_.emplace_back(t.id, page);
  if (cfg.fault_around_bytes > core_.ps) {
    around_queue_.push_back(Around{t.id, page + core_.ps, cfg.fault_around_bytes - core_.ps});
  }
  last_fault_ = now;
  bg_len_ = cfg.bg_min_bytes;  // as criu: a fault shrinks the drain's next request (docs/protocol.md §4.5)
}

void Scheduler::fault_on_in_flight(const Task& t, uint64_t page, uint64_t now) {
  last_fault_ = now;
  if (link_.priority_up()) reask_queue_.emplace_back(t.id, page);
}

bool Scheduler::drain_pending() const {
  return link_.synchronous() && core_.rstf && core_.cfg.background && core_.counters.pages_remaining.get() > 0 &&
         rate_wake_ == 0;
}

int Scheduler::next_wake_ms() const {
  if (rate_wake_ == 0) return -1;
  const uint64_t now = now_ns();
  return rate_wake_ <= now ? 0 : static_cast<int>((rate_wake_ - now + 999999) / 1000000);
}

uint64_t drain_window(const FaultEngineConfig& cfg, const DrainMoment& m) {
  const uint64_t quiet_ns = static_cast<uint64_t>(cfg.fault_quiet_ms) * 1000000ull;
  // Measured (bench slice E, hot set at 5 ms RTT): holding the faulting cap for two RTTs more after each fault
  // kept the drain at the cap for the whole hot phase, all present 2.5 s -> 11.6 s, for no better fault p99.
  // The restored tasks' first steps after RSTF are a chain of faults, one round trip apart (more than the quiet
  // time at 5 ms RTT): the window between them would open, and each next fault would queue behind it. That chain
  // is the end of the downtime, so on one FIFO connection the drain keeps the faulting window for --drain-start.
  const bool starting = m.since_rstf_ns < static_cast<uint64_t>(cfg.drain_start_ms) * 1000000ull;
  const bool faulting = m.tasks_waiting || m.since_fault_ns < quiet_ns;
  if (faulting || (starting && !m.priority_link)) return cfg.bg_in_flight_bytes_faulting;
  // With a priority connection that chain does not queue behind the drain's replies: the floor. Measured (idle,
  // 512 MiB, 5 ms RTT, 3 pairs): the faulting window for the first 0.2 s cost 1,316 against 1,197 ms to all present.
  if (starting) return cfg.bg_in_flight_bytes;
  // Faults lately (kRecentFaultQuiets quiet times): the floor, so the first fault of the next burst queues behind
  // no more than it did with a fixed window. Measured (slice E, hot set at 5 ms RTT, one FIFO link): with the
  // window open between bursts the daemon's fault p50/p99 were 9.7/46 ms against 6.9/16 with less ahead of them.
  if (m.since_fault_ns < kRecentFaultQuiets * quiet_ns) return cfg.bg_in_flight_bytes;
  return m.estimate_window;
}

uint64_t Scheduler::drain_cap(uint64_t now) const {
  const FaultEngineConfig& cfg = core_.cfg;
  DrainMoment m;
  m.since_rstf_ns = now - core_.rstf_ns;
  m.since_fault_ns = last_fault_ ? now - last_fault_ : UINT64_MAX;
  m.tasks_waiting = tasks_.waiting() > 0;
  m.priority_link = link_.priority_up();
  m.estimate_window = requests_.link_estimate().window(cfg.bg_in_flight_bytes, cfg.bg_in_flight_max_bytes);
  return drain_window(cfg, m);
}

void Scheduler::schedule() {
  if (!link_.ready() || core_.finished) return;
  const FaultEngineConfig& cfg = core_.cfg;
  const uint64_t ps = core_.ps;
  // 1. Demand faults: exactly the faulting page, never held back (sent with their fault-around, below).
  link_.hold();
  while (!fault_queue_.empty() && !core_.finished) {
    auto [id, page] = fault_queue_.front();
    fault_queue_.pop_front();
    Task* t = tasks_.by_id(id);
    if (!t || t->gone || !t->waiting.count(page)) continue;
    LazyRequest req = t->ranges.take(page, ps);
    if (req) requests_.submit(*t, req, ReqKind::kFault);
  }
  // 1b. Faults on pages a drain request holds: the same page once more, on the priority connection. Whichever
  // reply comes first is installed; the other finds the page claimed and is discarded (Installer::install).
  while (!reask_queue_.empty() && !core_.finished) {
    auto [id, page] = reask_queue_.front();
    reask_queue_.pop_front();
    Task* t = tasks_.by_id(id);
    if (!t || t->gone || !t->waiting.count(page) || !link_.priority_up()) continue;
    LazyRequest req = t->ranges.in_flight_page(page);
    if (!req || requests_.urgent_covers(t->id, req.img_start)) continue;
    core_.counters.faults_reasked.add();
    requests_.submit(*t, req, ReqKind::kFault);
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
  link_.release();
  // 3. Background drain, after RSTF only.
  if (!core_.rstf || !cfg.background) return;
  const uint64_t now = now_ns();
  const uint64_t cap = drain_cap(now);
  EngineCounters& c = core_.counters;
  c.bg_window_bytes.set(cap);
  c.link_rtt_us.set(requests_.link_estimate().rtt_ns() / 1000);
  c.link_bandwidth_bps.set(requests_.link_estimate().bandwidth_bps());
  rate_wake_ = 0;
  size_t idle_tasks = 0;
  while (requests_.bg_bytes() < cap && requests_.size() < cfg.max_requests_in_flight && !core_.finished &&
         idle_tasks < tasks_.all().size()) {
    Task* t = next_bg_task();
    if (!t) break;
    const uint64_t room = std::max((cap - requests_.bg_bytes()) & ~(ps - 1), ps);
    const uint64_t want = std::min(bg_len_, room);
    if (rate_.limited()) {
      const uint64_t wait = rate_.wait_ns(want, now);
      if (wait > 0) {
        rate_wake_ = now + wait;
        break;
      }
    }
    LazyRequest req = t->ranges.next_background(want);
    if (!req) {
      idle_tasks++;
      continue;
    }
    if (!requests_.submit(*t, req, ReqKind::kBackground)) break;
    rate_.spend(req.len);
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
