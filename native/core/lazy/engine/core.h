// What every unit of the fault engine shares (lazy/fault_engine.h): the configuration, the counters, the
// engine's life cycle (state, error, finished, RSTF) and its epoll set. The units, each in its own file:
//   restore_intake  the restore's hand-over: lazy-pages.socket, the tasks and their uffds, RSTF
//   source_link     the page source: local images or a page server (TCP, TLS driven from the loop)
//   tasks           the task table: lazy ranges, faults waiting per page, a task's end
//   uffd_events     reading each uffd: PAGEFAULT, FORK, REMAP, REMOVE, UNMAP; zero pages
//   scheduler       what to request next: faults, fault-around, the background drain
//   requests        requests in flight and their reply buffers
//   installer       replies -> UFFDIO_COPY, and the copies that must wait for an event first
//   timers          the restore's and the page server's deadlines
//   completion      every page installed: CLOSE the source, done
// Everything runs on the engine's one thread; other threads read only state, error (under error_mu) and the
// counters.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>

#include "lazy/engine/counters.h"
#include "lazy/fault_engine.h"

namespace lazyd::engine {

// epoll tags: fixed ones below kTaskTagBase, tasks at kTaskTagBase + id.
constexpr uint64_t kTagStop = 1;
constexpr uint64_t kTagListen = 2;
constexpr uint64_t kTagRestore = 3;
constexpr uint64_t kTagSource = 4;
constexpr uint64_t kTagSetTasks = 5;  // defer_tasks: set_tasks() was called
constexpr uint64_t kTagPriority = 6;  // the lazyd link's priority connection (source_link.h)
constexpr uint64_t kTaskTagBase = 16;
constexpr uint64_t kPidfdTagBase = uint64_t{1} << 40;  // a task's pidfd (--no-drain): kPidfdTagBase + id

// Why a range was requested (its installed pages are counted by kind).
enum class ReqKind : uint8_t { kFault, kAround, kBackground };

struct EngineCore {
  EngineCore(FaultEngineConfig config, EngineEventSink event_sink);
  ~EngineCore();
  EngineCore(const EngineCore&) = delete;
  EngineCore& operator=(const EngineCore&) = delete;

  FaultEngineConfig cfg;
  EngineEventSink sink;
  uint64_t ps = 4096;  // page size
  EngineCounters counters;

  std::atomic<EngineState> state{EngineState::kIdle};
  mutable std::mutex error_mu;
  std::string error;
  bool finished = false;  // done or failed: the loop ends
  bool rstf = false;      // the restore sent RSTF: the drain may start, completion is checked
  uint64_t rstf_ns = 0;   // when

  int epoll_fd = -1;
  int epoll_add(int fd, uint32_t events, uint64_t tag);  // 0 or -errno
  void epoll_mod(int fd, uint32_t events, uint64_t tag);
  void epoll_del(int fd);

  // Events go to the sink, which must not block (or throw: a throw is swallowed).
  void emit(EngineEvent event);
  void warn(std::string message);
  // The engine failed: kFailed with the message, the loop ends (the uffds stay open, see kFailed).
  void fail(std::string message);
  // start() failed: the error, state kFailed, rc returned.
  int start_error(int rc, std::string message);
};

}  // namespace lazyd::engine
