// Fault service time at a resolution fine enough to compare with a round trip: the Prometheus histogram
// (kLatencyBoundsUs, four buckets per doubling) cannot tell 5.8 ms from 6.9 ms, which is the whole margin of a
// "RTT + 150 µs" bar at 5 ms. Written by the engine thread, read from any thread.
//
// Buckets: one per µs below 128 µs, then 64 per doubling (each at most 1/64 = 1.6 % of its values wide) up to
// 2^27 µs (134 s); slower samples share the last bucket. The exact maximum is kept beside.
#pragma once

#include <cstddef>
#include <cstdint>

#include "util/counter.h"

namespace lazyd::engine {

class LatencyQuantiles {
 public:
  static constexpr size_t kLinearBuckets = 128;  // 0..127 µs, one each
  static constexpr size_t kPerDoubling = 64;
  static constexpr size_t kDoublings = 20;  // 2^7 .. 2^27 µs
  static constexpr size_t kBuckets = kLinearBuckets + kPerDoubling * kDoublings;

  void record(uint64_t us, uint64_t samples = 1);

  // The upper bound (µs, inclusive) of the bucket holding the q-quantile (0 < q <= 1), 0 without samples;
  // q = 1 gives the exact maximum.
  uint64_t quantile_us(double q) const;
  uint64_t max_us() const { return max_us_.get(); }

  static size_t bucket_of(uint64_t us);
  static uint64_t upper_bound_us(size_t bucket);

 private:
  Counter counts_[kBuckets];
  Counter max_us_;
};

}  // namespace lazyd::engine
