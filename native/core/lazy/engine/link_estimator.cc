#include "lazy/engine/link_estimator.h"

#include <algorithm>
#include <cmath>

namespace lazyd::engine {

void LinkEstimator::Windowed::add(uint64_t v, uint64_t now, uint64_t period, bool keep_min) {
  if (!has_cur || now - period_start >= period) {
    // A new period: the current one becomes the previous (or, after a silence of two periods, nothing is kept).
    has_prev = has_cur && now - period_start < 2 * period;
    prev = cur;
    has_cur = false;
    period_start = now;
  }
  if (!has_cur || (keep_min ? v < cur : v > cur)) cur = v;
  has_cur = true;
}

bool LinkEstimator::Windowed::get(uint64_t* v, bool keep_min) const {
  if (!has_cur) return false;
  *v = cur;
  if (has_prev) *v = keep_min ? std::min(cur, prev) : std::max(cur, prev);
  return true;
}

void LinkEstimator::on_reply(const Sent& sent, uint64_t bytes, uint64_t now) {
  delivered_ += bytes;
  const uint64_t prev_reply = last_reply_ns_;
  last_reply_ns_ = now;
  if (now <= sent.at_ns) return;
  const uint64_t elapsed = now - sent.at_ns;
  // The round trip, from replies that did not queue: on one FIFO link a reply ends either one transfer time
  // after the reply before it (it queued behind it) or later (it did not: its time is RTT + its transfer).
  // So only a reply that ends clearly more than its own transfer time after the previous one, or the first,
  // is a sample; a queued reply would count the queue as RTT and the window would grow with its own queue.
  uint64_t bw = 0;
  uint64_t transfer = 0;
  const bool have_bw = bw_.get(&bw, false) && bw > 0;
  if (have_bw) transfer = static_cast<uint64_t>(static_cast<double>(bytes) * 1e9 / bw);
  if (prev_reply == 0 || (have_bw && now - prev_reply > transfer + transfer / 4 + kGapSlackNs)) {
    // Its own transfer stays in: while the window limits the drain the rate seen is below the link's, and
    // taking its bytes out at that rate would understate the RTT and keep the window small. So the estimate
    // is high by at most one request's transfer, and the window by gain x that request.
    rtt_.add(elapsed, now, kRttWindowNs, true);
  }
  const uint64_t rate = static_cast<uint64_t>(static_cast<double>(delivered_ - sent.delivered) * 1e9 / elapsed);
  bw_.add(rate, now, kBandwidthWindowNs, false);
}

uint64_t LinkEstimator::rtt_ns() const {
  uint64_t v = 0;
  return rtt_.get(&v, true) ? v : 0;
}

uint64_t LinkEstimator::bandwidth_bps() const {
  uint64_t v = 0;
  return bw_.get(&v, false) ? v : 0;
}

uint64_t LinkEstimator::window(uint64_t floor, uint64_t ceiling) const {
  const double bdp = static_cast<double>(bandwidth_bps()) * static_cast<double>(rtt_ns()) / 1e9 * kGain;
  const uint64_t want = bdp >= static_cast<double>(UINT64_MAX) ? UINT64_MAX : static_cast<uint64_t>(bdp);
  return std::max(floor, std::min(want, std::max(ceiling, floor)));
}

uint64_t TokenBucket::available(uint64_t now) {
  if (!rate_) return UINT64_MAX;
  if (now > at_) {
    tokens_ = std::min(static_cast<double>(burst_), tokens_ + static_cast<double>(now - at_) * rate_ / 1e9);
    at_ = now;
  }
  return static_cast<uint64_t>(tokens_);
}

uint64_t TokenBucket::wait_ns(uint64_t bytes, uint64_t now) {
  const uint64_t have = available(now);
  bytes = std::min(bytes, burst_);
  if (!rate_ || have >= bytes) return 0;
  return static_cast<uint64_t>(std::ceil(static_cast<double>(bytes - have) * 1e9 / rate_));
}

}  // namespace lazyd::engine
