// The native core's one kind of metric. Both engines (the page server, the fault engine) keep theirs the same
// way: Counters written by the engine's own thread, read from any thread into a plain snapshot struct
// (ServerStats, EngineStats) that the binding turns into stats().
#pragma once

#include <atomic>
#include <cstdint>

namespace lazyd {

// Relaxed: each value is read alone, as a snapshot for a scrape; nothing else is ordered by it.
class Counter {
 public:
  void add(uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  void sub(uint64_t n = 1) { value_.fetch_sub(n, std::memory_order_relaxed); }
  void set(uint64_t n) { value_.store(n, std::memory_order_relaxed); }
  uint64_t get() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

}  // namespace lazyd
