// The fault engine's loop: one thread, one epoll set over the restore socket, every task's uffd and the page
// source; each event is handled to the end on this thread (no hand-off on the fault path). The units it drives
// are in engine/ (see engine/core.h).
#include "lazy/fault_engine.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "lazy/engine/completion.h"
#include "lazy/engine/core.h"
#include "lazy/engine/installer.h"
#include "lazy/engine/requests.h"
#include "lazy/engine/restore_intake.h"
#include "lazy/engine/scheduler.h"
#include "lazy/engine/source_link.h"
#include "lazy/engine/tasks.h"
#include "lazy/engine/timers.h"
#include "lazy/engine/uffd_events.h"
#include "util/clock.h"

namespace lazyd {

using namespace engine;

struct FaultEngine::Impl {
  EngineCore core;
  TaskTable tasks{core};
  SourceLink link{core};
  RequestTable requests{core, tasks, link};
  Scheduler scheduler{core, tasks, requests, link};
  UffdEvents uffd_events{core, tasks, scheduler};
  Installer installer{core, tasks, requests, link, uffd_events};
  RestoreIntake intake{core, tasks, link};
  Timers timers{core, intake, link};
  Completion completion{core, tasks, requests, installer, link, [this] { publish_gauges(); }};

  std::thread thread;
  bool started = false;
  int stop_fd = -1;
  bool stop_requested = false;

  // defer_tasks: set_tasks() hands the tasks over here and wakes the thread through tasks_fd.
  int tasks_fd = -1;
  std::mutex pending_mu;
  bool tasks_given = false;
  size_t pending_nr_tasks = 0;
  std::vector<FaultEngineConfig::Task> pending_tasks;
  wire::Format pending_format = wire::Format::V24;
  std::string pending_link_token;

  Impl(FaultEngineConfig config, EngineEventSink sink) : core(std::move(config), std::move(sink)) {}
  ~Impl() {
    if (stop_fd >= 0) close(stop_fd);
    if (tasks_fd >= 0) close(tasks_fd);
  }

  // ---- the loop ----

  void run() {
    begin();
    epoll_event events[64];
    while (!core.finished && !stop_requested) {
      const int n = epoll_wait(core.epoll_fd, events, 64, poll_timeout_ms());
      if (n < 0 && errno != EINTR) {
        core.fail(std::string("epoll_wait failed: ") + strerror(errno));
        break;
      }
      installer.new_pass();
      link.new_pass();
      // Faults first: the uffds and the priority connection, and the faults read asked for, before the main
      // connection's replies are read (a slice of them per pass: SourceLink::pump, Installer::new_pass).
      for (int i = 0; i < n && !core.finished && !stop_requested; i++) {
        if (events[i].data.u64 != kTagSource) dispatch(events[i].data.u64, events[i].events);
      }
      if (!core.finished && scheduler.faults_queued()) scheduler.schedule();
      for (int i = 0; i < n && !core.finished && !stop_requested; i++) {
        if (events[i].data.u64 == kTagSource) dispatch(events[i].data.u64, events[i].events);
      }
      if (core.finished || stop_requested) break;
      after_events();
    }
    end();
  }

  void dispatch(uint64_t tag, uint32_t events) {
    switch (tag) {
      case kTagStop: stop_requested = true; return;
      case kTagSetTasks: apply_tasks(); return;         // defer_tasks: the tasks are known now
      case kTagListen: intake.on_listen(); return;       // the restore connects
      case kTagRestore: intake.on_restore(); return;     // hand-overs, RSTF
      case kTagSource:                                   // the page source: connecting, its TLS handshake, or replies
      case kTagPriority:
        if (link.on_socket(tag)) installer.on_source(events);
        return;
      default:
        if (tag >= kPidfdTagBase) {                      // --no-drain: a task's process exited
          if (Task* t = tasks.by_id(tag - kPidfdTagBase)) {
            uffd_events.read(*t);                        // what it sent before it went
            if (!t->gone) tasks.gone(*t);
          }
          return;
        }
        if (Task* t = tasks.by_id(tag - kTaskTagBase)) uffd_events.read(*t);  // a task's uffd: faults and events
        return;
    }
  }

  void after_events() {
    uffd_events.retry_zero_pages();  // what hit EAGAIN, now that the pending events are read
    installer.retry();
    installer.resume();
    scheduler.schedule();            // faults, fault-around, the drain
    // A local source answers inside submit(): install right away. (Its drain issues one request per loop
    // pass, see schedule(), so a fault never waits behind more than one chunk of synchronous reads.)
    if (!core.finished && link.synchronous() && link.in_flight() > 0) installer.collect_replies();
    if (core.finished) return;
    timers.check();
    if (core.finished) return;
    completion.check();
    publish_gauges();
  }

  void apply_tasks() {
    uint64_t count = 0;
    if (read(tasks_fd, &count, sizeof count) < 0) return;  // EAGAIN: already applied
    core.epoll_del(tasks_fd);
    {
      std::lock_guard<std::mutex> lock(pending_mu);
      core.cfg.nr_tasks = pending_nr_tasks;
      core.cfg.tasks = std::move(pending_tasks);
      core.cfg.format = pending_format;
      core.cfg.link_token = std::move(pending_link_token);
    }
    intake.tasks_set(link.prepare_local());
  }

  int poll_timeout_ms() const {
    if (installer.has_pending() || uffd_events.has_retries()) return 0;
    if (scheduler.drain_pending()) return 0;  // a local source completes requests at once: keep draining
    const int timer = timers.next_timeout_ms(), rate = scheduler.next_wake_ms();
    return timer < 0 ? rate : rate < 0 ? timer : std::min(timer, rate);
  }

  // ---- start and end ----

  int prepare() {
    FaultEngineConfig& cfg = core.cfg;
    const uint64_t ps = cfg.page_size ? cfg.page_size : static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    core.ps = ps;
    if (ps == 0 || (ps & (ps - 1)) != 0) return core.start_error(-EINVAL, "invalid page size");
    if (cfg.source == FaultEngineConfig::Source::kRemote && cfg.ps_socket < 0 &&
        (cfg.address.empty() || cfg.port == 0)) {
      return core.start_error(-EINVAL, "remote page source needs an address and a port");
    }
    if (!cfg.defer_tasks && cfg.source == FaultEngineConfig::Source::kRemote && cfg.format != wire::Format::V24 &&
        cfg.format != wire::Format::V32) {
      return core.start_error(-EINVAL, "remote page source needs a wire format (24 or 32 bytes)");
    }
    cfg.fault_around_bytes &= ~(ps - 1);
    cfg.bg_min_bytes = std::max(cfg.bg_min_bytes & ~(ps - 1), ps);
    cfg.bg_max_bytes = std::max(cfg.bg_max_bytes & ~(ps - 1), cfg.bg_min_bytes);
    cfg.bg_in_flight_bytes = std::max(cfg.bg_in_flight_bytes, ps);
    cfg.bg_in_flight_bytes_faulting = std::max(cfg.bg_in_flight_bytes_faulting, ps);
    cfg.bg_in_flight_max_bytes = std::max(cfg.bg_in_flight_max_bytes, cfg.bg_in_flight_bytes);
    if (cfg.max_requests_in_flight == 0) cfg.max_requests_in_flight = 1;
    scheduler.start();

    if (cfg.defer_tasks) {
      intake.defer();
    } else {
      int rc = intake.load_tasks(link.prepare_local());
      if (rc < 0) return rc;
    }
    core.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (core.epoll_fd < 0) return core.start_error(-errno, "epoll_create1 failed");
    stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (stop_fd < 0) return core.start_error(-errno, "eventfd failed");
    core.epoll_add(stop_fd, EPOLLIN, kTagStop);
    if (cfg.defer_tasks) {
      tasks_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      if (tasks_fd < 0) return core.start_error(-errno, "eventfd failed");
      core.epoll_add(tasks_fd, EPOLLIN, kTagSetTasks);
    }
    return intake.listen();
  }

  void begin() {
    const uint64_t now = now_ns();
    intake.started(now);
    core.counters.start_ns.set(now);
    core.state.store(EngineState::kWaitingRestore);
    EngineEvent e;
    e.kind = EngineEvent::Kind::kListening;
    e.message = intake.socket_path();
    core.emit(std::move(e));
  }

  void end() {
    if (stop_requested && !core.finished) {
      core.finished = true;
      core.counters.end_ns.set(now_ns());
      if (core.state.load() != EngineState::kDone) {
        std::lock_guard<std::mutex> lock(core.error_mu);
        if (core.error.empty()) core.error = "stopped";
        core.state.store(EngineState::kFailed);
      }
    }
    publish_gauges();
  }

  void publish_gauges() {
    EngineCounters& c = core.counters;
    const TaskTable::Totals totals = tasks.totals();
    c.pages_remaining.set(totals.pages_remaining);
    c.pages_in_flight.set(totals.pages_in_flight);
    c.tasks_active.set(totals.active);
    c.faults_waiting.set(tasks.waiting());
    c.requests_in_flight.set(requests.size());
    c.bg_bytes_in_flight.set(requests.bg_bytes());
    if (link.exists()) {
      c.bytes_received.set(link.bytes_received());
      c.bytes_sent.set(link.bytes_sent());
    }
  }
};

// ---- FaultEngine ----

FaultEngine::FaultEngine(FaultEngineConfig config, EngineEventSink sink)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(sink))) {}

FaultEngine::~FaultEngine() { stop(); }

int FaultEngine::start() {
  if (impl_->started) return -EALREADY;
  int rc = impl_->prepare();
  if (rc < 0) return rc;
  impl_->started = true;
  impl_->thread = std::thread([this] { impl_->run(); });
  return 0;
}

int FaultEngine::set_tasks(size_t nr_tasks, std::vector<FaultEngineConfig::Task> tasks, wire::Format format,
                           std::string link_token) {
  Impl& impl = *impl_;
  if (!impl.core.cfg.defer_tasks || impl.tasks_fd < 0) return -EINVAL;
  if (format != wire::Format::V24 && format != wire::Format::V32) return -EINVAL;
  {
    std::lock_guard<std::mutex> lock(impl.pending_mu);
    if (impl.tasks_given) return -EALREADY;
    impl.tasks_given = true;
    impl.pending_nr_tasks = nr_tasks;
    impl.pending_tasks = std::move(tasks);
    impl.pending_format = format;
    impl.pending_link_token = std::move(link_token);
  }
  uint64_t one = 1;
  if (write(impl.tasks_fd, &one, sizeof one) < 0) return -errno;
  return 0;
}

void FaultEngine::stop() {
  if (!impl_->thread.joinable()) return;
  uint64_t one = 1;
  if (write(impl_->stop_fd, &one, sizeof one) < 0) {
    // The eventfd cannot overflow from one write; nothing to do.
  }
  impl_->thread.join();
}

void FaultEngine::join() {
  if (impl_->thread.joinable()) impl_->thread.join();
}

EngineState FaultEngine::state() const { return impl_->core.state.load(); }

std::string FaultEngine::error() const {
  std::lock_guard<std::mutex> lock(impl_->core.error_mu);
  return impl_->core.error;
}

std::string FaultEngine::socket_path() const { return impl_->intake.socket_path(); }

EngineStats FaultEngine::stats() const { return impl_->core.counters.snapshot(impl_->core.state.load()); }

}  // namespace lazyd
