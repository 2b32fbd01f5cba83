// The end of a lazy restore (docs/protocol.md §4.6): after RSTF, a task whose every lazy page is installed or dropped (nothing in
// flight, nothing waiting to be retried) is done and its uffd closed; once every task is done or gone and no
// request is outstanding, the page source gets CLOSE and the engine is done.
#pragma once

#include <functional>

#include "lazy/engine/core.h"
#include "lazy/engine/installer.h"
#include "lazy/engine/requests.h"
#include "lazy/engine/source_link.h"
#include "lazy/engine/tasks.h"

namespace lazyd::engine {

class Completion {
 public:
  Completion(EngineCore& core, TaskTable& tasks, const RequestTable& requests, const Installer& installer,
             SourceLink& link, std::function<void()> publish_gauges)
      : core_(core),
        tasks_(tasks),
        requests_(requests),
        installer_(installer),
        link_(link),
        publish_gauges_(std::move(publish_gauges)) {}

  void check();

 private:
  EngineCore& core_;
  TaskTable& tasks_;
  const RequestTable& requests_;
  const Installer& installer_;
  SourceLink& link_;
  std::function<void()> publish_gauges_;
};

}  // namespace lazyd::engine
