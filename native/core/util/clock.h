// The native core's one clock: CLOCK_MONOTONIC in nanoseconds, for every timeout and latency of both engines.
#pragma once

#include <cstdint>
#include <ctime>

namespace lazyd {

inline uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// A timeout in ms (the unit of every *_timeout_ms setting) as a span of the clock.
constexpr uint64_t ms_to_ns(int64_t ms) { return ms <= 0 ? 0 : static_cast<uint64_t>(ms) * 1000000ull; }

inline double seconds_since(uint64_t start_ns) { return static_cast<double>(now_ns() - start_ns) / 1e9; }

}  // namespace lazyd
