// The native core's one clock: CLOCK_MONOTONIC in nanoseconds, for timeouts and latencies.
#pragma once

#include <cstdint>
#include <ctime>

namespace lazyd {

inline uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

}  // namespace lazyd
