#include "lazy/engine/completion.h"

#include "util/clock.h"

namespace lazyd::engine {

void Completion::check() {
  if (!core_.rstf || link_.connecting()) return;  // (--tls: the session is CLOSEd once it is up)
  bool all = true;
  for (auto& entry : tasks_.all()) {
    Task& t = *entry.second;
    if (t.finished) continue;
    const bool has_pending = installer_.pending_for(t.id);
    if (t.gone) {
      if (t.requests == 0) t.finished = true;
    } else if (t.ranges.done() && t.requests == 0 && !has_pending) {
      t.finished = true;
      tasks_.end(t, EngineEvent::Kind::kTaskDone);
    }
    all &= t.finished;
  }
  if (!all || requests_.size() != 0 || installer_.has_pending()) return;
  core_.state.store(EngineState::kClosing);
  int32_t status = 0;
  int rc = link_.ready() ? link_.close(&status) : 0;
  if (link_.exists()) core_.counters.bytes_received.set(link_.bytes_received());
  if (rc < 0) {
    core_.fail("closing the page server session failed: " + link_.error());
    return;
  }
  if (status != 0) core_.warn("the page server answered CLOSE with status " + std::to_string(status));
  core_.finished = true;
  core_.counters.end_ns.set(now_ns());
  core_.state.store(EngineState::kDone);
  publish_gauges_();
  EngineEvent e;
  e.kind = EngineEvent::Kind::kDone;
  e.summary = core_.counters.summary();
  core_.emit(std::move(e));
}

}  // namespace lazyd::engine
