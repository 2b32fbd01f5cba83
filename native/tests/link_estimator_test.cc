// Unit tests of the drain's link estimate and rate cap (lazy/engine/link_estimator.h), and of the window the
// scheduler allows from it (drain_window, lazy/engine/scheduler.h), on a modelled link: a
// request reaches the server after half the RTT, the server sends replies one after another at the link's
// bandwidth, a reply is complete half an RTT after its last byte left. The drain keeps window() bytes of requests
// of up to 1 MiB in flight, as the scheduler does. Pure arithmetic on simulated time: no clock, no sleep.
#include "lazy/engine/link_estimator.h"
#include "lazy/engine/scheduler.h"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <queue>
#include <string>
#include <vector>

#include "check.h"

using lazyd::engine::LinkEstimator;
using lazyd::engine::TokenBucket;

constexpr uint64_t MiB = 1024 * 1024;
constexpr uint64_t kFloor = 2 * MiB, kCeiling = 64 * MiB, kRequest = 1 * MiB;

struct Result {
  double throughput;  // bytes/s over the second half
  uint64_t window;    // at the end
  uint64_t rtt_ns, bandwidth;
};

// Drains for `seconds` over a link of `bw` bytes/s and `rtt_ns`, with the window the estimator gives.
static Result drain(uint64_t bw, uint64_t rtt_ns, double seconds, uint64_t ceiling = kCeiling) {
  LinkEstimator est;
  struct Reply {
    uint64_t done;
    uint64_t bytes;
    LinkEstimator::Sent sent;
    bool operator>(const Reply& o) const { return done > o.done; }
  };
  std::priority_queue<Reply, std::vector<Reply>, std::greater<Reply>> replies;
  uint64_t now = 1'000'000, link_free = 0, in_flight = 0;
  const uint64_t end = now + static_cast<uint64_t>(seconds * 1e9), half = now + (end - now) / 2;
  uint64_t delivered_at_half = 0;
  bool half_seen = false;
  auto fill = [&] {
    // As Scheduler::schedule(): requests of up to kRequest, the last one what room is left (pages).
    for (uint64_t w = est.window(kFloor, ceiling); in_flight + 4096 <= w;) {
      const uint64_t len = std::min(kRequest, (w - in_flight) & ~uint64_t{4095});
      const uint64_t start = std::max(now + rtt_ns / 2, link_free);
      link_free = start + len * 1'000'000'000ull / bw;
      replies.push(Reply{link_free + rtt_ns / 2, len, est.on_send(now)});
      in_flight += len;
    }
  };
  fill();
  while (!replies.empty() && replies.top().done < end) {
    Reply r = replies.top();
    replies.pop();
    now = r.done;
    if (!half_seen && now >= half) {
      half_seen = true;
      delivered_at_half = est.delivered();
    }
    est.on_reply(r.sent, r.bytes, now);
    in_flight -= r.bytes;
    fill();
  }
  const double tp = static_cast<double>(est.delivered() - delivered_at_half) / ((end - half) / 1e9);
  return Result{tp, est.window(kFloor, ceiling), est.rtt_ns(), est.bandwidth_bps()};
}

// No samples: the floor. Samples: gain x bandwidth x RTT within [floor, ceiling].
static void test_window_bounds() {
  LinkEstimator est;
  CHECK(est.window(kFloor, kCeiling) == kFloor);
  CHECK(est.rtt_ns() == 0 && est.bandwidth_bps() == 0);
  // One 1 MiB reply 10 ms after its request: 100 MB/s, its time all counted as RTT; 1.3 MB < the floor.
  LinkEstimator::Sent s = est.on_send(1000);
  est.on_reply(s, MiB, 1000 + 10'000'000);
  CHECK(est.bandwidth_bps() > 100 * 1000 * 1000);
  CHECK(est.rtt_ns() == 10'000'000);  // the first reply: no rate known yet to take its transfer out
  CHECK(est.window(kFloor, kCeiling) == kFloor);
  // A ceiling under the floor: the floor (a fixed window).
  CHECK(est.window(kFloor, MiB) == kFloor);
}

// A link of 544 MB/s (the suite's loopback one-stream figure) at 0, 0.5, 5 and 20 ms: the drain gets >= 90 %
// of it; at 0 ms the window stays at the floor (no more bytes ahead of a fault than today).
static void test_fills_link_at_any_rtt() {
  const uint64_t bw = 544'000'000;
  for (uint64_t rtt_us : {0, 500, 5000, 20000}) {
    const Result r = drain(bw, rtt_us * 1000, 4.0);
    std::printf("rtt %5lu us: %.0f MB/s (%.0f %%), window %.1f MiB, rtt est %lu us, bw est %.0f MB/s\n",
                (unsigned long)rtt_us, r.throughput / 1e6, 100 * r.throughput / bw, (double)r.window / MiB,
                (unsigned long)(r.rtt_ns / 1000), r.bandwidth / 1e6);
    CHECK(r.throughput >= 0.9 * bw);
    // Never below the true RTT; above it by at most a request's transfer (on_reply).
    CHECK(r.rtt_ns >= rtt_us * 1000 && r.rtt_ns <= rtt_us * 1000 * 11 / 10 + kRequest * 1'000'000'000ull / bw + 1000);
    CHECK(r.bandwidth >= bw * 95 / 100 && r.bandwidth <= bw * 105 / 100);
    if (rtt_us == 0) CHECK(r.window == kFloor);
    // Not far beyond what the link holds: the window is what keeps faults short on a FIFO link.
    CHECK(r.window <= std::max<uint64_t>(kFloor, static_cast<uint64_t>(1.25 * (bw * (rtt_us / 1e6) + kRequest)) + kRequest));
  }
  // Today's fixed 2 MiB at 5 ms: well under the link (measured: 41 %, ISSUE 12; here 56 %).
  const Result fixed = drain(bw, 5'000'000, 4.0, kFloor);
  CHECK(fixed.throughput < 0.6 * bw);
  CHECK(fixed.window == kFloor);
}

// The ceiling holds however long the link.
static void test_ceiling() {
  const Result r = drain(1'000'000'000, 200'000'000, 6.0, 16 * MiB);
  CHECK(r.window == 16 * MiB);
}

// Old samples age out: after a slower period the bandwidth estimate follows it.
static void test_bandwidth_ages_out() {
  LinkEstimator est;
  uint64_t now = 1;
  for (int i = 0; i < 100; i++) {  // 1 GB/s: 1 MiB per ~1 ms
    LinkEstimator::Sent s = est.on_send(now);
    now += 1'048'576;
    est.on_reply(s, MiB, now);
  }
  CHECK(est.bandwidth_bps() > 900'000'000);
  for (int i = 0; i < 100; i++) {  // then 100 MB/s for 5 s
    LinkEstimator::Sent s = est.on_send(now);
    now += 50'000'000;
    est.on_reply(s, 5 * MiB, now);
  }
  CHECK(est.bandwidth_bps() < 120'000'000);
}

// The rate cap: over 10 s of a drain that spends whatever it may in 256 KiB..1 MiB requests, the bytes spent
// never exceed rate x elapsed + burst, and reach at least 95 % of rate x elapsed.
static void test_token_bucket() {
  const uint64_t rate = 50 * MiB, burst = MiB;
  TokenBucket tb(rate, burst, 0);
  CHECK(tb.limited());
  CHECK(!TokenBucket().limited());
  CHECK(TokenBucket().wait_ns(MiB, 0) == 0);
  uint64_t now = 0, spent = 0;
  const uint64_t sizes[] = {256 * 1024, MiB, 512 * 1024, 4096};
  for (int i = 0; now < 10'000'000'000ull; i++) {
    const uint64_t want = sizes[i % 4];
    const uint64_t wait = tb.wait_ns(want, now);
    if (wait) {
      now += wait;  // the scheduler's wake-up (next_wake_ms), here exact
      continue;
    }
    CHECK(tb.available(now) >= want);
    tb.spend(want);
    spent += want;
    CHECK(static_cast<double>(spent) <= rate * (now / 1e9) + burst + 1);
  }
  CHECK(static_cast<double>(spent) >= 0.95 * rate * (now / 1e9));
  // A request above the burst waits only until the bucket is full.
  TokenBucket small(MiB, 64 * 1024, 0);
  small.spend(64 * 1024);
  CHECK(small.wait_ns(MiB, 0) <= 62'600'000 && small.wait_ns(MiB, 0) >= 62'400'000);
}

// The window by moment: the faulting cap while faults wait or were just seen, and during --drain-start on one FIFO
// connection; the floor during --drain-start on a priority link and for kRecentFaultQuiets quiet times after a
// fault; the estimate otherwise.
static void test_drain_window() {
  using lazyd::engine::DrainMoment;
  using lazyd::engine::drain_window;
  lazyd::FaultEngineConfig cfg;
  cfg.bg_in_flight_bytes_faulting = 256 * 1024;
  cfg.bg_in_flight_bytes = kFloor;
  cfg.fault_quiet_ms = 5;
  cfg.drain_start_ms = 200;
  const uint64_t ms = 1000000, none = UINT64_MAX, estimate = 24 * MiB;
  struct Row {
    uint64_t since_rstf_ms;
    uint64_t since_fault_ns;
    bool waiting, priority;
    uint64_t want;
  } rows[] = {
      {50, none, false, false, cfg.bg_in_flight_bytes_faulting},    // starting, FIFO
      {50, none, false, true, kFloor},                              // starting, priority link
      {50, 1 * ms, false, true, cfg.bg_in_flight_bytes_faulting},   // a fault just now, priority link
      {50, none, true, true, cfg.bg_in_flight_bytes_faulting},      // a task waits
      {500, 1 * ms, false, false, cfg.bg_in_flight_bytes_faulting}, // past the start, a fault just now
      {500, 50 * ms, false, false, kFloor},                         // faults lately
      {500, 50 * ms, false, true, kFloor},
      {500, 150 * ms, false, false, estimate},                      // quiet: the estimate
      {500, none, false, true, estimate},
  };
  for (const Row& r : rows) {
    DrainMoment m;
    m.since_rstf_ns = r.since_rstf_ms * ms;
    m.since_fault_ns = r.since_fault_ns;
    m.tasks_waiting = r.waiting;
    m.priority_link = r.priority;
    m.estimate_window = estimate;
    const uint64_t got = drain_window(cfg, m);
    std::printf("drain window %lu ms after RSTF, last fault %s, %s, %s link: %lu bytes\n", (unsigned long)r.since_rstf_ms,
                r.since_fault_ns == none ? "never" : (std::to_string(r.since_fault_ns / ms) + " ms ago").c_str(),
                r.waiting ? "a task waiting" : "none waiting", r.priority ? "priority" : "FIFO", (unsigned long)got);
    CHECK(got == r.want);
  }
}

int main() {
  alarm(60);
  test_drain_window();
  test_window_bounds();
  test_fills_link_at_any_rtt();
  test_ceiling();
  test_bandwidth_ages_out();
  test_token_bucket();
  return check_report();
}
