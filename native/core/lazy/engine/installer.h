// Replies into the tasks' memory (docs/protocol.md §4.5): each reply's still-wanted pieces are claimed from the task's ranges and
// installed with one UFFDIO_COPY per contiguous run (DONTWAKE and one WAKE when a reply needs several). A COPY
// that hits EAGAIN (a non-cooperative event is pending) is retried after the task's events are read, so the
// event's remap or drop applies to the pieces first.
#pragma once

#include <cstdint>
#include <deque>
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
  // A loop pass begins: the drain may install kSliceBytes again. Its replies' parts beyond that wait for the
  // passes after, so a fault read (or a priority reply come) meanwhile waits behind one slice, not a whole window.
  void new_pass() { slice_left_ = kSliceBytes; }
  // The drain's parts left over by earlier passes, as far as this pass's slice goes.
  void resume();
  bool has_pending() const { return !pending_.empty() || !rest_.empty(); }
  bool pending_for(uint64_t task) const;
  static constexpr uint64_t kSliceBytes = 128 * 1024;

 private:
  // done's replies installed; rc is what the pump that read them returned (< 0: the link failed for good).
  void install_replies(const std::vector<PageReply>& done, int rc);
  struct Install {  // a reply, or what is left of it
    uint64_t task = 0;
    uint64_t img_start = 0;
    uint64_t len = 0;
    ReqKind kind = ReqKind::kFault;
    uint8_t* buf = nullptr;   // its first byte
    int attempts = 0;
    uint8_t* base = nullptr;  // the reply's buffer, recycled once the last part is done
  };
  void on_reply(const PageReply& reply);
  // Installs p, or of a drain reply what the slice allows (the rest goes to rest_); an EAGAIN to pending_.
  void place(Task& t, Install p);
  // True when done with the buffer; false when a COPY hit EAGAIN (retry later).
  bool install(Task& t, const Install& p);
  void count_installed(Task& t, ReqKind kind, uint64_t pages);

  EngineCore& core_;
  TaskTable& tasks_;
  RequestTable& requests_;
  SourceLink& link_;
  UffdEvents& events_;
  std::vector<Install> pending_;
  std::deque<Install> rest_;  // drain replies' parts beyond the slices so far, in order
  uint64_t slice_left_ = kSliceBytes;
  bool warned_noent_ = false;
};

}  // namespace lazyd::engine
