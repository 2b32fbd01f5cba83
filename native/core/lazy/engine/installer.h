// Replies into the tasks' memory (docs/protocol.md §4.5): each reply's still-wanted pieces are claimed from the task's ranges and
// installed with one UFFDIO_COPY per contiguous run (DONTWAKE and one WAKE when a reply needs several). A COPY
// that hits EAGAIN (a non-cooperative event is pending) is retried after the task's events are read, so the
// event's remap or drop applies to the pieces first.
#pragma once

#include <cstdint>
#include <vector>

#include "lazy/engine/core.h"
#include "lazy/engine/requests.h"
#include "lazy/engine/source_link.h"
#include "lazy/engine/tasks.h"
#include "lazy/engine/uffd_events.h"

namespace lazyd::engine {

class Installer {
 public:
  Installer(EngineCore& core, TaskTable& tasks, RequestTable& requests, SourceLink& link, UffdEvents& events)
      : core_(core), tasks_(tasks), requests_(requests), link_(link), events_(events) {}
  Installer(const Installer&) = delete;
  Installer& operator=(const Installer&) = delete;

  // The page source's socket is ready.
  void on_source(uint32_t epoll_events);
  // Reads what the source has answered and installs it.
  void collect_replies();
  // The installs that hit EAGAIN, after their task's pending events are read.
  void retry();
  bool has_pending() const { return !pending_.empty(); }
  bool pending_for(uint64_t task) const;

 private:
  struct Install {  // a reply, or what is left of it
    uint64_t task = 0;
    uint64_t img_start = 0;
    uint64_t len = 0;
    ReqKind kind = ReqKind::kFault;
    uint8_t* buf = nullptr;
    int attempts = 0;
  };
  void on_reply(const PageReply& reply);
  // True when done with the buffer; false when a COPY hit EAGAIN (retry later).
  bool install(Task& t, const Install& p);
  void count_installed(Task& t, ReqKind kind, uint64_t pages);

  EngineCore& core_;
  TaskTable& tasks_;
  RequestTable& requests_;
  SourceLink& link_;
  UffdEvents& events_;
  std::vector<Install> pending_;
  bool warned_noent_ = false;
};

}  // namespace lazyd::engine
