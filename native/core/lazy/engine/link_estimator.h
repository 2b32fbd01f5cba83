// What the page link can carry, measured from the replies (BBR's two estimates, simplified): the round trip as
// the smallest time of a reply that did not queue (see on_reply), over the last 10 s of such replies, and the delivery rate as the
// largest bytes-delivered-per-time of any reply over the last 2 s. Their product is the bytes the link holds;
// the drain keeps that much (times a gain, between a floor and a ceiling) in flight, so it fills the link at
// any RTT. Times in ns; pure arithmetic on the times given, no clock of its own (native/tests tests it).
#pragma once

#include <cstdint>

namespace lazyd::engine {

class LinkEstimator {
 public:
  // What a request records when it is sent.
  struct Sent {
    uint64_t at_ns = 0;
    uint64_t delivered = 0;  // bytes delivered before it was sent
  };
  Sent on_send(uint64_t now) const { return Sent{now, delivered_}; }
  // The reply of `bytes` to a request sent at `sent`, complete at now.
  void on_reply(const Sent& sent, uint64_t bytes, uint64_t now);

  uint64_t delivered() const { return delivered_; }
  uint64_t rtt_ns() const;             // 0: no sample yet
  uint64_t bandwidth_bps() const;      // bytes/s; 0: no sample yet
  // gain × bandwidth × RTT, clamped to [floor, ceiling] (floor without samples). The gain above 1 lets an
  // app-limited window grow by a quarter each round trip until the link, not the window, limits the rate.
  uint64_t window(uint64_t floor, uint64_t ceiling) const;

  static constexpr uint64_t kRttWindowNs = 10'000'000'000ull;
  static constexpr uint64_t kBandwidthWindowNs = 2'000'000'000ull;
  static constexpr double kGain = 1.25;
  static constexpr uint64_t kGapSlackNs = 20'000;  // loop and scheduling noise between two replies' ends

 private:
  // A windowed min or max: the best of the current period and the one before it (a sample ages out after one
  // to two periods).
  struct Windowed {
    uint64_t cur = 0, prev = 0, period_start = 0;
    bool has_cur = false, has_prev = false;
    void add(uint64_t v, uint64_t now, uint64_t period, bool keep_min);
    bool get(uint64_t* v, bool keep_min) const;
  };
  uint64_t delivered_ = 0;
  uint64_t last_reply_ns_ = 0;
  Windowed rtt_, bw_;
};

// A token bucket for the drain's rate (--drain-rate): `rate` bytes/s, holding at most `burst` bytes; full at
// the start. rate 0: no limit.
class TokenBucket {
 public:
  TokenBucket() = default;
  TokenBucket(uint64_t rate, uint64_t burst, uint64_t now) : rate_(rate), burst_(burst), tokens_(burst), at_(now) {}
  bool limited() const { return rate_ != 0; }
  // Bytes that may be spent now.
  uint64_t available(uint64_t now);
  void spend(uint64_t bytes) { tokens_ = bytes > tokens_ ? 0 : tokens_ - bytes; }
  // ns until `bytes` (at most burst) are available; 0: now.
  uint64_t wait_ns(uint64_t bytes, uint64_t now);

 private:
  uint64_t rate_ = 0, burst_ = 0;
  double tokens_ = 0;
  uint64_t at_ = 0;
};

}  // namespace lazyd::engine
