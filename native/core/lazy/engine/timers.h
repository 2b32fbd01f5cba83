// The fault engine's deadlines (FaultEngineConfig's *_timeout_ms; <= 0: none): the restore must connect, hand
// over every task and send RSTF in time; the page server must, with requests outstanding, keep sending (the
// link's own deadlines, connecting and reconnecting, are the SourceLink's). next_timeout_ms() is how long the loop may sleep; check() fails the engine when a
// deadline has passed.
#pragma once

#include "lazy/engine/core.h"
#include "lazy/engine/restore_intake.h"
#include "lazy/engine/source_link.h"

namespace lazyd::engine {

class Timers {
 public:
  Timers(EngineCore& core, const RestoreIntake& intake, SourceLink& link) : core_(core), intake_(intake), link_(link) {}

  // ms until the next deadline (+1, so the check after the wake-up finds it passed), or -1 for none.
  int next_timeout_ms() const;
  void check();

 private:
  EngineCore& core_;
  const RestoreIntake& intake_;
  SourceLink& link_;
};

}  // namespace lazyd::engine
