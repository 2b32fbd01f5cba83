#include "lazy/engine/latency_quantiles.h"

#include <algorithm>
#include <cmath>

namespace lazyd::engine {

size_t LatencyQuantiles::bucket_of(uint64_t us) {
  if (us < kLinearBuckets) return static_cast<size_t>(us);
  const unsigned exp = 63 - static_cast<unsigned>(__builtin_clzll(us));  // us in [2^exp, 2^(exp+1)), exp >= 7
  const size_t doubling = exp - 7;
  if (doubling >= kDoublings) return kBuckets - 1;
  const size_t sub = static_cast<size_t>(us >> (exp - 6)) & (kPerDoubling - 1);  // the 6 bits after the top one
  return kLinearBuckets + doubling * kPerDoubling + sub;
}

uint64_t LatencyQuantiles::upper_bound_us(size_t bucket) {
  if (bucket < kLinearBuckets) return bucket;
  const size_t doubling = (bucket - kLinearBuckets) / kPerDoubling, sub = (bucket - kLinearBuckets) % kPerDoubling;
  const unsigned shift = static_cast<unsigned>(doubling) + 1;  // bucket width 2^(exp - 6), exp = doubling + 7
  return ((kPerDoubling + sub + 1) << shift) - 1;
}

void LatencyQuantiles::record(uint64_t us, uint64_t samples) {
  counts_[bucket_of(us)].add(samples);
  if (us > max_us_.get()) max_us_.set(us);  // one writer: the engine thread
}

uint64_t LatencyQuantiles::quantile_us(double q) const {
  uint64_t total = 0;
  for (const Counter& c : counts_) total += c.get();
  if (total == 0) return 0;
  const uint64_t max = max_us_.get();
  if (q >= 1) return max;
  const uint64_t rank = std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(q * static_cast<double>(total))));
  uint64_t seen = 0;
  for (size_t i = 0; i < kBuckets; i++) {
    seen += counts_[i].get();
    if (seen >= rank) return std::min(upper_bound_us(i), max);  // never above the slowest sample
  }
  return max;
}

}  // namespace lazyd::engine
