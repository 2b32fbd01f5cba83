#include "lazy/engine/timers.h"

#include <algorithm>
#include <climits>

#include "util/clock.h"

namespace lazyd::engine {

int Timers::next_timeout_ms() const {
  const FaultEngineConfig& cfg = core_.cfg;
  const uint64_t now = now_ns();
  int64_t timeout = -1;
  auto until = [&](uint64_t since, int limit_ms) {
    if (limit_ms <= 0 || since == 0) return;
    const int64_t left = static_cast<int64_t>(since / 1000000 + static_cast<uint64_t>(limit_ms)) -
                         static_cast<int64_t>(now / 1000000);
    const int64_t ms = std::max<int64_t>(left, 0) + 1;
    if (timeout < 0 || ms < timeout) timeout = ms;
  };
  if (intake_.listening()) until(intake_.listen_since(), cfg.accept_timeout_ms);
  if (intake_.awaiting_handovers()) until(intake_.connected_since(), cfg.handover_timeout_ms);
  if (!core_.rstf && intake_.handed_over_since()) until(intake_.handed_over_since(), cfg.rstf_timeout_ms);
  const int link = link_.next_timeout_ms(now);
  if (link >= 0 && (timeout < 0 || link < timeout)) timeout = link;
  if (link_.ready() && link_.in_flight() > 0 && cfg.stall_timeout_ms > 0) {
    const int64_t check = std::max(cfg.stall_timeout_ms / 4, 1);
    if (timeout < 0 || check < timeout) timeout = check;
  }
  return timeout > INT32_MAX ? INT32_MAX : static_cast<int>(timeout);
}

void Timers::check() {
  const FaultEngineConfig& cfg = core_.cfg;
  const uint64_t now = now_ns();
  auto expired = [&](uint64_t since, int limit_ms) {
    return limit_ms > 0 && since != 0 && now - since > ms_to_ns(limit_ms);
  };
  if (intake_.listening() && expired(intake_.listen_since(), cfg.accept_timeout_ms)) {
    core_.fail("criu restore did not connect to " + intake_.socket_path() + " within " +
               std::to_string(cfg.accept_timeout_ms) + " ms");
  } else if (intake_.awaiting_handovers() && expired(intake_.connected_since(), cfg.handover_timeout_ms)) {
    core_.fail("restore handed over " + std::to_string(intake_.handovers()) + " of " + std::to_string(cfg.nr_tasks) +
               " tasks within " + std::to_string(cfg.handover_timeout_ms) + " ms");
  } else if (!core_.rstf && expired(intake_.handed_over_since(), cfg.rstf_timeout_ms)) {
    core_.fail("restore did not send RSTF within " + std::to_string(cfg.rstf_timeout_ms) + " ms of the last hand-over");
  } else if (link_.ready() && cfg.stall_timeout_ms > 0 && link_.stalled_ms() > cfg.stall_timeout_ms) {
    core_.fail("the page server stalled: no reply byte for " + std::to_string(link_.stalled_ms()) + " ms with " +
               std::to_string(link_.in_flight()) + " request(s) outstanding");
  }
  if (!core_.finished) link_.check_deadlines(now);
}

}  // namespace lazyd::engine
