// Unit tests of the fine fault-latency histogram (lazy/engine/latency_quantiles.h): every value falls in a bucket
// whose bounds hold it, no bucket is wider than 1/64 of its values past 128 µs, and the quantiles tell apart the
// figures a bar compares (a 5.87 ms round trip from its bar of 6.02 ms; 90 µs from 250 µs).
#include "lazy/engine/latency_quantiles.h"

#include <cstdint>
#include <cstdio>
#include <random>

#include "check.h"

using lazyd::engine::LatencyQuantiles;

static void test_buckets_hold_their_values() {
  // Every value below 2^16 µs, then a sample of larger ones up to past the last doubling.
  std::mt19937_64 rng(7);
  uint64_t prev_bucket = 0;
  for (uint64_t us = 0; us < (1u << 16); us++) {
    const size_t b = LatencyQuantiles::bucket_of(us);
    CHECK(b >= prev_bucket);  // monotonic
    prev_bucket = b;
    CHECK(us <= LatencyQuantiles::upper_bound_us(b));
    CHECK(b == 0 || us > LatencyQuantiles::upper_bound_us(b - 1));
  }
  for (int i = 0; i < 100000; i++) {
    const uint64_t us = 1 + rng() % (uint64_t{1} << 27);
    const size_t b = LatencyQuantiles::bucket_of(us);
    CHECK(b < LatencyQuantiles::kBuckets);
    CHECK(us <= LatencyQuantiles::upper_bound_us(b) && us > LatencyQuantiles::upper_bound_us(b - 1));
  }
  for (size_t b = LatencyQuantiles::kLinearBuckets; b < LatencyQuantiles::kBuckets; b++) {
    const uint64_t lo = LatencyQuantiles::upper_bound_us(b - 1) + 1, hi = LatencyQuantiles::upper_bound_us(b);
    CHECK((hi - lo + 1) * 64 <= lo);  // at most 1/64 of the bucket's smallest value
  }
  CHECK(LatencyQuantiles::bucket_of(uint64_t{1} << 40) == LatencyQuantiles::kBuckets - 1);  // clamped
}

static void test_quantiles() {
  LatencyQuantiles none;
  CHECK(none.quantile_us(0.5) == 0 && none.quantile_us(1) == 0 && none.max_us() == 0);

  LatencyQuantiles q;
  q.record(90, 60);    // 60 faults at 90 µs
  q.record(250, 39);   // 39 at 250 µs
  q.record(40000, 1);  // one at 40 ms
  CHECK(q.quantile_us(0.5) == 90);  // exact below 128 µs
  const uint64_t p99 = q.quantile_us(0.99);
  CHECK(p99 >= 250 && p99 <= 250 + 250 / 64);
  CHECK(q.quantile_us(1) == 40000 && q.max_us() == 40000);  // the max is exact

  // A round trip of 5,871 µs and faults 100 µs slower than it: p50 under the bar RTT + 150 µs (6,021). The
  // Prometheus histogram puts both in (5,793, 6,889].
  LatencyQuantiles rtt;
  for (uint64_t us = 5900; us < 6000; us++) rtt.record(us);
  const uint64_t p50 = rtt.quantile_us(0.5);
  CHECK(p50 >= 5949 && p50 < 6021);
  CHECK(rtt.quantile_us(0.99) <= rtt.max_us() && rtt.max_us() == 5999);

  // Samples of one value: every quantile is that value's bucket, never above the maximum.
  LatencyQuantiles one;
  one.record(6000, 5);
  CHECK(one.quantile_us(0.5) == 6000 && one.quantile_us(0.01) == 6000);
}

int main() {
  test_buckets_hold_their_values();
  test_quantiles();
  return check_report();
}
