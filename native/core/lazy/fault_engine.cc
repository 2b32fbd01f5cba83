#include "lazy/fault_engine.h"

#include "util/clock.h"
#include "util/text.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "lazy/lazy_ranges.h"
#include "lazy/page_client.h"
#include "lazy/restore_handshake.h"
#include "kernel/uffd.h"

namespace lazyd {

const uint64_t kLatencyBoundsUs[kLatencyBuckets] = {10,   25,    50,    100,   250,    500,       1000,
                                                    2500, 5000,  10000, 50000, 250000, UINT64_MAX};

const char* fault_result_name(FaultResult result) {
  switch (result) {
    case FaultResult::kCopied: return "copied";
    case FaultResult::kZeroPage: return "zeropage";
    case FaultResult::kExists: return "exists";
    case FaultResult::kDropped: return "dropped";
    case FaultResult::kRetried: return "retried";
    case FaultResult::kGone: return "gone";
  }
  return "?";
}

const char* engine_state_name(EngineState state) {
  switch (state) {
    case EngineState::kIdle: return "idle";
    case EngineState::kWaitingRestore: return "waiting-restore";
    case EngineState::kHandshake: return "handshake";
    case EngineState::kRunning: return "running";
    case EngineState::kClosing: return "closing";
    case EngineState::kDone: return "done";
    case EngineState::kFailed: return "failed";
  }
  return "?";
}

namespace {

// epoll tags: fixed ones below kTaskTagBase, tasks at kTaskTagBase + id.
constexpr uint64_t kTagStop = 1;
constexpr uint64_t kTagListen = 2;
constexpr uint64_t kTagRestore = 3;
constexpr uint64_t kTagSource = 4;
constexpr uint64_t kTaskTagBase = 16;

enum class ReqKind : uint8_t { kFault, kAround, kBackground };

// Page-aligned reply buffers, reused: a fresh mmap per request would pay a page fault per page on every reply.
class BufferPool {
 public:
  ~BufferPool() {
    for (auto& entry : free_) munmap(entry.second, entry.first);
    for (auto& entry : used_) munmap(entry.first, entry.second);
  }
  uint8_t* get(size_t len, size_t cls_small, size_t cls_large) {
    const size_t cap = len <= cls_small ? cls_small : len <= cls_large ? cls_large : len;
    auto it = free_.find(cap);
    uint8_t* buf;
    if (it != free_.end()) {
      buf = it->second;
      free_.erase(it);
    } else {
      void* p = mmap(nullptr, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return nullptr;
      buf = static_cast<uint8_t*>(p);
    }
    used_[buf] = cap;
    return buf;
  }
  void put(uint8_t* buf) {
    auto it = used_.find(buf);
    if (it == used_.end()) return;
    free_.emplace(it->second, buf);
    used_.erase(it);
  }

 private:
  std::multimap<size_t, uint8_t*> free_;
  std::unordered_map<uint8_t*, size_t> used_;
};

}  // namespace

struct FaultEngine::Impl {
  struct Task {
    uint64_t id = 0;
    int pid = 0;
    int host_pid = 0;  // 0: unknown (forked children, or no credentials)
    int uffd = -1;
    LazyRanges ranges;
    bool gone = false;
    bool finished = false;
    size_t requests = 0;                  // replies still to come for this task
    struct Waiter {
      uint64_t since = 0;   // when the page's first PAGEFAULT was read
      uint64_t faults = 0;  // PAGEFAULT messages waiting for it (threads of the task)
    };
    std::map<uint64_t, Waiter> waiting;  // faulting page -> its waiters
    uint64_t started_ns = 0;             // hand-over (or fork)
    EngineSummary summary;
    explicit Task(uint64_t page_size) : ranges(page_size) {}
  };
  struct Request {
    uint64_t task = 0;
    uint64_t img_start = 0;
    uint64_t len = 0;
    ReqKind kind = ReqKind::kFault;
    uint8_t* buf = nullptr;
  };
  struct PendingInstall {  // a reply whose UFFDIO_COPY hit EAGAIN: retried after the task's events are read
    uint64_t task = 0;
    uint64_t img_start = 0;
    uint64_t len = 0;
    ReqKind kind = ReqKind::kFault;
    uint8_t* buf = nullptr;
    int attempts = 0;
  };
  struct Around {
    uint64_t task;
    uint64_t addr;
    uint64_t bytes;
  };

  FaultEngineConfig cfg;
  EngineEventSink sink;
  uint64_t ps = 4096;

  // Shared with other threads.
  std::atomic<EngineState> state{EngineState::kIdle};
  mutable std::mutex error_mu;
  std::string error;
  std::atomic<uint64_t> c_faults{0}, c_fault{0}, c_around{0}, c_bg{0}, c_zero{0}, c_exist{0}, c_dropped{0},
      c_total{0}, c_bytes{0}, c_tasks_total{0}, c_tasks_active{0}, c_remaining{0}, c_in_flight{0}, c_waiting{0},
      c_requests{0}, c_req_in_flight{0}, c_bg_in_flight{0}, c_fork{0}, c_remap{0}, c_remove{0}, c_unmap{0},
      c_discarded{0}, c_bytes_sent{0}, c_tls_failures{0};
  // Metrics (relaxed: each is read alone, as a snapshot for a scrape).
  std::atomic<uint64_t> hist[kLatencyBuckets];
  std::atomic<uint64_t> hist_sum_us{0}, hist_count{0};
  std::atomic<uint64_t> results[kFaultResults];
  std::atomic<uint64_t> start_ns{0}, end_ns{0};

  // Engine-thread state.
  std::thread thread;
  bool started = false;
  int epoll_fd = -1;
  int stop_fd = -1;
  int listen_fd = -1;
  std::string socket_path;
  std::unique_ptr<handshake::HandshakeReader> restore;
  std::unique_ptr<PageSource> source;
  bool source_ready = false;
  bool source_wants_write = false;
  bool rstf = false;
  bool stop_requested = false;
  bool finished = false;
  uint64_t t_listen = 0, t_connected = 0, t_handed_over = 0;
  std::unordered_map<int, std::vector<LazyRange>> images;  // pid -> initial ranges
  std::map<uint64_t, std::unique_ptr<Task>> tasks;
  uint64_t next_task = 1;
  std::unordered_map<uint64_t, Request> requests;
  uint64_t next_cookie = 1;
  std::deque<std::pair<uint64_t, uint64_t>> fault_queue;  // (task, page) to request
  std::deque<Around> around_queue;
  std::vector<PendingInstall> pending;
  std::vector<std::pair<uint64_t, uint64_t>> zero_retry;  // (task, page) whose ZEROPAGE hit EAGAIN
  BufferPool pool;
  uint64_t bg_len = 0;
  uint64_t bg_bytes = 0;
  uint64_t bg_cursor = 0;
  uint64_t last_fault = 0;
  uint64_t waiting_total = 0;
  bool warned_noent = false;

  Impl(FaultEngineConfig c, EngineEventSink s) : cfg(std::move(c)), sink(std::move(s)) {
    for (auto& h : hist) h.store(0);
    for (auto& r : results) r.store(0);
  }

  ~Impl() {
    for (auto& entry : tasks)
      if (entry.second->uffd >= 0) close(entry.second->uffd);
    restore.reset();
    source.reset();
    if (listen_fd >= 0) close(listen_fd);
    if (stop_fd >= 0) close(stop_fd);
    if (epoll_fd >= 0) close(epoll_fd);
  }

  // ---- small helpers ----

  void emit(EngineEvent event) {
    if (!sink) return;
    try {
      sink(event);
    } catch (...) {
      // An event sink must not throw; never let it take the engine down.
    }
  }
  void warn(std::string message) {
    EngineEvent e;
    e.kind = EngineEvent::Kind::kWarning;
    e.message = std::move(message);
    emit(std::move(e));
  }
  void fail(std::string message) {
    if (finished) return;
    {
      std::lock_guard<std::mutex> lock(error_mu);
      error = message;
    }
    finished = true;
    end_ns.store(now_ns());
    state.store(EngineState::kFailed);
    EngineEvent e;
    e.kind = EngineEvent::Kind::kFailed;
    e.message = std::move(message);
    e.summary = summary();
    emit(std::move(e));
  }
  int epoll_add(int fd, uint32_t events, uint64_t tag) {
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = tag;
    return epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
  }
  void epoll_del(int fd) { epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, nullptr); }

  Task* task_by_id(uint64_t id) {
    auto it = tasks.find(id);
    return it == tasks.end() ? nullptr : it->second.get();
  }

  EngineSummary summary() const {
    EngineSummary s;
    s.faults = c_faults.load();
    s.pages_fault = c_fault.load();
    s.pages_around = c_around.load();
    s.pages_background = c_bg.load();
    s.pages_zero = c_zero.load();
    s.pages_exist = c_exist.load();
    s.pages_dropped = c_dropped.load();
    s.pages_total = c_total.load();
    s.bytes_received = c_bytes.load();
    const uint64_t t0 = start_ns.load(), t1 = end_ns.load();
    s.seconds = t0 ? static_cast<double>((t1 ? t1 : now_ns()) - t0) / 1e9 : 0;
    return s;
  }

  void count_result(FaultResult result, uint64_t faults) {
    results[static_cast<size_t>(result)].fetch_add(faults, std::memory_order_relaxed);
  }

  // `faults` fault messages settled now, waiting since t0; only those that got their page are timed.
  void settle(FaultResult result, uint64_t t0, uint64_t faults = 1) {
    count_result(result, faults);
    if (result != FaultResult::kCopied && result != FaultResult::kZeroPage && result != FaultResult::kExists) return;
    const uint64_t us = (now_ns() - t0) / 1000;
    size_t i = 0;
    while (i + 1 < kLatencyBuckets && us > kLatencyBoundsUs[i]) i++;
    hist[i].fetch_add(faults, std::memory_order_relaxed);
    hist_sum_us.fetch_add(us * faults, std::memory_order_relaxed);
    hist_count.fetch_add(faults, std::memory_order_relaxed);
  }

  // Faults waiting in [start, end) are settled (installed, or their range went away).
  void settle_waiting(Task& t, uint64_t start, uint64_t end, FaultResult result) {
    for (auto it = t.waiting.lower_bound(start); it != t.waiting.end() && it->first < end;) {
      settle(result, it->second.since, it->second.faults);
      it = t.waiting.erase(it);
      waiting_total--;
    }
  }

  // ---- start-up ----

  int prepare() {
    ps = cfg.page_size ? cfg.page_size : static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    if (ps == 0 || (ps & (ps - 1)) != 0) return set_start_error(-EINVAL, "invalid page size");
    if (cfg.source == FaultEngineConfig::Source::kRemote && cfg.ps_socket < 0 &&
        (cfg.address.empty() || cfg.port == 0)) {
      return set_start_error(-EINVAL, "remote page source needs an address and a port");
    }
    if (cfg.source == FaultEngineConfig::Source::kRemote && cfg.format != wire::Format::V24 &&
        cfg.format != wire::Format::V32) {
      return set_start_error(-EINVAL, "remote page source needs a wire format (24 or 32 bytes)");
    }
    cfg.fault_around_bytes &= ~(ps - 1);
    cfg.bg_min_bytes = std::max(cfg.bg_min_bytes & ~(ps - 1), ps);
    cfg.bg_max_bytes = std::max(cfg.bg_max_bytes & ~(ps - 1), cfg.bg_min_bytes);
    cfg.bg_in_flight_bytes = std::max(cfg.bg_in_flight_bytes, ps);
    cfg.bg_in_flight_bytes_faulting = std::max(cfg.bg_in_flight_bytes_faulting, ps);
    if (cfg.max_requests_in_flight == 0) cfg.max_requests_in_flight = 1;
    bg_len = cfg.bg_min_bytes;

    std::unique_ptr<LocalPageSource> local;
    if (cfg.source == FaultEngineConfig::Source::kLocal) local = std::make_unique<LocalPageSource>(ps);
    for (const auto& task : cfg.tasks) {
      if (images.count(task.pid)) return set_start_error(-EINVAL, "pid " + std::to_string(task.pid) + " given twice");
      std::vector<LazyRange> ranges;
      for (const auto& run : task.runs) {
        if (run.nr_pages == 0) continue;
        ranges.push_back(LazyRange{run.img_start, run.img_start + run.nr_pages * ps, run.img_start, 0});
        if (local) {
          int rc = local->add_run(static_cast<uint64_t>(task.pid), run.img_start, run.nr_pages, run.fd, run.file_offset);
          if (rc < 0) {
            return set_start_error(rc, "invalid local run for pid " + std::to_string(task.pid) + " at " +
                                           hex(run.img_start));
          }
        }
      }
      LazyRanges check(ps);
      if (check.build(ranges) < 0) {
        return set_start_error(-EINVAL, "lazy ranges of pid " + std::to_string(task.pid) +
                                            " are unaligned or overlap");
      }
      images[task.pid] = std::move(ranges);
    }
    if (local) source = std::move(local);

    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd < 0) return set_start_error(-errno, "epoll_create1 failed");
    stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (stop_fd < 0) return set_start_error(-errno, "eventfd failed");
    epoll_add(stop_fd, EPOLLIN, kTagStop);
    listen_fd = handshake::listen_socket(cfg.work_dir, &socket_path);
    if (listen_fd < 0) {
      int rc = listen_fd;
      listen_fd = -1;
      return set_start_error(rc, "cannot listen on " + socket_path + ": " + strerror(-rc));
    }
    epoll_add(listen_fd, EPOLLIN, kTagListen);
    return 0;
  }

  int set_start_error(int rc, std::string message) {
    std::lock_guard<std::mutex> lock(error_mu);
    error = std::move(message);
    state.store(EngineState::kFailed);
    return rc;
  }

  // ---- the loop ----

  void run() {
    t_listen = now_ns();
    start_ns.store(t_listen);
    state.store(EngineState::kWaitingRestore);
    {
      EngineEvent e;
      e.kind = EngineEvent::Kind::kListening;
      e.message = socket_path;
      emit(std::move(e));
    }
    epoll_event events[64];
    while (!finished && !stop_requested) {
      const int n = epoll_wait(epoll_fd, events, 64, compute_timeout());
      if (n < 0 && errno != EINTR) {
        fail(std::string("epoll_wait failed: ") + strerror(errno));
        break;
      }
      for (int i = 0; i < n && !finished && !stop_requested; i++) dispatch(events[i].data.u64, events[i].events);
      if (finished || stop_requested) break;
      after_batch();
    }
    if (stop_requested && !finished) {
      finished = true;
      end_ns.store(now_ns());
      if (state.load() != EngineState::kDone) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (error.empty()) error = "stopped";
        state.store(EngineState::kFailed);
      }
    }
    publish_gauges();
  }

  int compute_timeout() {
    if (!pending.empty() || !zero_retry.empty()) return 0;
    // A local source completes requests at once: keep draining without sleeping.
    if (source_ready && source->fd() < 0 && rstf && cfg.background && c_remaining.load() > 0) return 0;
    const uint64_t now = now_ns();
    int64_t timeout = -1;
    auto until = [&](uint64_t since, int limit_ms) {
      if (limit_ms <= 0 || since == 0) return;
      const int64_t left = static_cast<int64_t>(since / 1000000 + static_cast<uint64_t>(limit_ms)) -
                           static_cast<int64_t>(now / 1000000);
      const int64_t ms = std::max<int64_t>(left, 0) + 1;
      if (timeout < 0 || ms < timeout) timeout = ms;
    };
    if (listen_fd >= 0) until(t_listen, cfg.accept_timeout_ms);
    if (restore && !restore->all_handed_over()) until(t_connected, cfg.handover_timeout_ms);
    if (!rstf && t_handed_over) until(t_handed_over, cfg.rstf_timeout_ms);
    if (source_ready && source->in_flight() > 0 && cfg.stall_timeout_ms > 0) {
      const int64_t check = std::max(cfg.stall_timeout_ms / 4, 1);
      if (timeout < 0 || check < timeout) timeout = check;
    }
    return timeout > INT32_MAX ? INT32_MAX : static_cast<int>(timeout);
  }

  void dispatch(uint64_t tag, uint32_t ev) {
    switch (tag) {
      case kTagStop:
        stop_requested = true;
        return;
      case kTagListen:
        on_listen();
        return;
      case kTagRestore:
        on_restore();
        return;
      case kTagSource:
        on_source(ev);
        return;
      default:
        if (Task* t = task_by_id(tag - kTaskTagBase)) on_uffd(*t);
        return;
    }
  }

  void after_batch() {
    retry_pending();
    schedule();
    // A local source answers inside submit(): install right away. (Its drain issues one request per loop
    // pass, see schedule(), so a fault never waits behind more than one chunk of synchronous reads.)
    if (!finished && source_ready && source->fd() < 0 && source->in_flight() > 0) collect_replies();
    if (finished) return;
    check_timers();
    if (finished) return;
    check_completion();
    publish_gauges();
  }

  void publish_gauges() {
    uint64_t remaining = 0, in_flight = 0, active = 0;
    for (auto& entry : tasks) {
      remaining += entry.second->ranges.pages_remaining();
      in_flight += entry.second->ranges.pages_in_flight();
      active += !entry.second->finished;
    }
    c_remaining.store(remaining);
    c_in_flight.store(in_flight);
    c_tasks_active.store(active);
    c_waiting.store(waiting_total);
    c_req_in_flight.store(requests.size());
    c_bg_in_flight.store(bg_bytes);
    if (source) {
      c_bytes.store(source->bytes_received());
      c_bytes_sent.store(source->bytes_sent());
    }
  }

  void check_timers() {
    const uint64_t now = now_ns();
    auto expired = [&](uint64_t since, int limit_ms) {
      return limit_ms > 0 && since != 0 && now - since > static_cast<uint64_t>(limit_ms) * 1000000ull;
    };
    if (listen_fd >= 0 && expired(t_listen, cfg.accept_timeout_ms)) {
      fail("criu restore did not connect to " + socket_path + " within " + std::to_string(cfg.accept_timeout_ms) +
           " ms");
    } else if (restore && !restore->all_handed_over() && expired(t_connected, cfg.handover_timeout_ms)) {
      fail("restore handed over " + std::to_string(restore->handovers()) + " of " + std::to_string(cfg.nr_tasks) +
           " tasks within " + std::to_string(cfg.handover_timeout_ms) + " ms");
    } else if (!rstf && expired(t_handed_over, cfg.rstf_timeout_ms)) {
      fail("restore did not send RSTF within " + std::to_string(cfg.rstf_timeout_ms) + " ms of the last hand-over");
    } else if (source_ready && cfg.stall_timeout_ms > 0 && source->stalled_ms() > cfg.stall_timeout_ms) {
      fail("the page server stalled: no reply byte for " + std::to_string(source->stalled_ms()) + " ms with " +
           std::to_string(source->in_flight()) + " request(s) outstanding");
    }
  }

  // ---- restore handshake (§3) ----

  void on_listen() {
    int fd = handshake::accept_now(listen_fd);
    if (fd == -EAGAIN) return;
    if (fd < 0) {
      fail(std::string("accepting the restore connection failed: ") + strerror(-fd));
      return;
    }
    // criu restore connects once; the listener is not needed any more (§3.1).
    epoll_del(listen_fd);
    close(listen_fd);
    listen_fd = -1;
    restore = std::make_unique<handshake::HandshakeReader>(fd, cfg.nr_tasks);
    t_connected = now_ns();
    state.store(EngineState::kHandshake);
    epoll_add(fd, EPOLLIN | EPOLLRDHUP, kTagRestore);
    EngineEvent e;
    e.kind = EngineEvent::Kind::kRestoreConnected;
    emit(std::move(e));
    if (cfg.nr_tasks == 0) handed_over();
    on_restore();
  }

  void on_restore() {
    if (!restore) return;
    std::vector<handshake::Handover> items;
    const bool all_before = restore->all_handed_over();
    auto status = restore->on_readable(&items);
    for (const auto& item : items) {
      if (item.kind == handshake::Handover::Kind::kZombie) {
        EngineEvent e;
        e.kind = EngineEvent::Kind::kZombie;
        e.pid = item.pid;
        emit(std::move(e));
      } else {
        add_task(item.pid, item.fd, item.host_pid);
      }
    }
    if (finished) return;
    if (!all_before && restore->all_handed_over()) handed_over();
    if (finished) return;
    if (status == handshake::HandshakeReader::Status::kError) {
      fail(restore->error());
      return;
    }
    if (status == handshake::HandshakeReader::Status::kFinished) {
      rstf = true;
      epoll_del(restore->fd());
      restore.reset();  // restore closes its end after RSTF (§3.2)
      EngineEvent e;
      e.kind = EngineEvent::Kind::kRestoreFinished;
      emit(std::move(e));
    }
  }

  void add_task(int pid, int uffd, int host_pid) {
    auto task = std::make_unique<Task>(ps);
    task->id = next_task++;
    task->pid = pid;
    task->host_pid = host_pid;
    task->uffd = uffd;
    auto it = images.find(pid);
    if (it != images.end()) task->ranges.build(it->second);
    task->summary.pages_total = task->ranges.pages_remaining();
    task->started_ns = now_ns();
    c_total.fetch_add(task->summary.pages_total);
    c_tasks_total.fetch_add(1);
    int rc = epoll_add(uffd, EPOLLIN | EPOLLRDHUP, kTaskTagBase + task->id);
    if (rc < 0) {
      close(uffd);
      fail("cannot watch the uffd of pid " + std::to_string(pid) + ": " + strerror(-rc));
      return;
    }
    EngineEvent e;
    e.kind = EngineEvent::Kind::kTask;
    e.pid = pid;
    e.host_pid = host_pid;
    if (host_pid > 0) e.message = "host pid " + std::to_string(host_pid);
    e.task = task->id;
    tasks.emplace(task->id, std::move(task));
    emit(std::move(e));
  }

  // All hand-overs are in: now connect to the page server, as criu does (§4.2). Connecting only after a good
  // handshake also matters for `criu dump --lazy-pages`: once a client came and went it kills the source tasks.
  void handed_over() {
    t_handed_over = now_ns();
    state.store(EngineState::kRunning);
    if (source_ready) return;
    std::string where = "local";
    if (cfg.source == FaultEngineConfig::Source::kRemote) {
      auto client = std::make_unique<PageClient>(cfg.format, ps);
      int rc = cfg.ps_socket >= 0 ? client->adopt(cfg.ps_socket) : client->connect(cfg.address, cfg.port,
                                                                                     cfg.connect_timeout_ms);
      if (cfg.ps_socket >= 0) cfg.ps_socket = -1;
      if (rc == 0 && cfg.tls) {
        rc = client->start_tls(cfg.tls, cfg.address + ":" + std::to_string(cfg.port), cfg.connect_timeout_ms);
        if (rc < 0) c_tls_failures.fetch_add(1);
      }
      if (rc < 0) {
        fail(client->error().empty() ? std::string("cannot use the page server socket: ") + strerror(-rc)
                                     : client->error());
        return;
      }
      where = "page-server " + cfg.address + ":" + std::to_string(cfg.port);
      if (cfg.tls) where += " over " + client->tls_description();
      source = std::move(client);
      epoll_add(source->fd(), EPOLLIN | EPOLLRDHUP, kTagSource);
    }
    source_ready = true;
    EngineEvent e;
    e.kind = EngineEvent::Kind::kSourceConnected;
    e.message = where;
    emit(std::move(e));
  }

  // ---- uffd events (§4.4) ----

  void on_uffd(Task& t) {
    if (t.gone || t.uffd < 0) return;
    uffd_msg msgs[32];
    for (;;) {
      int n = uffd::read_events(t.uffd, msgs, 32);
      if (n < 0) {
        warn("reading the uffd of pid " + std::to_string(t.pid) + " failed: " + strerror(-n));
        task_gone(t);
        return;
      }
      for (int i = 0; i < n && !finished && !t.gone; i++) handle_msg(t, msgs[i]);
      if (n < 32 || finished || t.gone) return;
    }
  }

  void handle_msg(Task& t, const uffd_msg& msg) {
    switch (msg.event) {
      case UFFD_EVENT_PAGEFAULT:
        on_fault(t, msg.arg.pagefault.address & ~(ps - 1));
        break;
      case UFFD_EVENT_FORK:
        on_fork(t, static_cast<int>(msg.arg.fork.ufd));
        break;
      case UFFD_EVENT_REMAP: {
        c_remap.fetch_add(1);
        const uint64_t from = msg.arg.remap.from, to = msg.arg.remap.to, len = msg.arg.remap.len;
        t.ranges.remap(from, to, len);
        // A thread blocked on a fault in the old place would be woken by an install at the new address only if
        // it faulted there: wake it, it retries against the new layout.
        wake_waiting(t, from, from + len, FaultResult::kRetried);
        break;
      }
      case UFFD_EVENT_REMOVE: {
        c_remove.fetch_add(1);
        const uint64_t start = msg.arg.remove.start, end = msg.arg.remove.end;
        // madvise(DONTNEED/REMOVE): the VMA stays, so unregister first: later touches must be plain zero-fill,
        // never old data from a reply still on its way (§4.4, §6.2). Unregister also wakes waiters.
        int rc = uffd::unregister_range(t.uffd, start, end - start);
        if (rc < 0) {
          auto cls = uffd::classify(rc, true);
          if (cls == uffd::ErrorClass::kGone) {
            task_gone(t);
            return;
          }
          warn("UFFDIO_UNREGISTER " + hex(start) + "-" + hex(end) + " of pid " + std::to_string(t.pid) +
               " failed: " + strerror(-rc));
        }
        drop(t, start, end);
        break;
      }
      case UFFD_EVENT_UNMAP: {
        c_unmap.fetch_add(1);
        drop(t, msg.arg.remove.start, msg.arg.remove.end);
        wake_waiting(t, msg.arg.remove.start, msg.arg.remove.end, FaultResult::kDropped);
        break;
      }
      default:
        warn("unexpected uffd event " + std::to_string(msg.event) + " from pid " + std::to_string(t.pid));
        break;
    }
  }

  void drop(Task& t, uint64_t start, uint64_t end) {
    const uint64_t pages = t.ranges.drop(start, end);
    t.summary.pages_dropped += pages;
    c_dropped.fetch_add(pages);
    settle_waiting(t, start & ~(ps - 1), end, FaultResult::kDropped);
  }

  void wake_waiting(Task& t, uint64_t start, uint64_t end, FaultResult result) {
    for (auto it = t.waiting.lower_bound(start & ~(ps - 1)); it != t.waiting.end() && it->first < end;) {
      uffd::wake(t.uffd, it->first, ps);
      settle(result, it->second.since, it->second.faults);
      it = t.waiting.erase(it);
      waiting_total--;
    }
  }

  void on_fault(Task& t, uint64_t page) {
    c_faults.fetch_add(1);
    t.summary.faults++;
    const uint64_t now = now_ns();
    switch (t.ranges.lookup(page)) {
      case LazyRanges::Where::kRemaining:
        add_waiter(t, page, now);
        fault_queue.emplace_back(t.id, page);
        if (cfg.fault_around_bytes > ps) around_queue.push_back(Around{t.id, page + ps, cfg.fault_around_bytes - ps});
        last_fault = now;
        bg_len = cfg.bg_min_bytes;  // as criu: a fault shrinks the drain's next request (§4.5)
        break;
      case LazyRanges::Where::kInFlight:
        // Already requested (by a fault, fault-around or the drain): its install wakes this thread.
        add_waiter(t, page, now);
        last_fault = now;
        break;
      case LazyRanges::Where::kNone:
        // Not a lazy page: never dumped (or dropped), so it is a zero page (§4.4).
        zero_fault(t, page, now);
        break;
    }
  }

  void add_waiter(Task& t, uint64_t page, uint64_t now) {
    auto [it, fresh] = t.waiting.emplace(page, Task::Waiter{now, 0});
    it->second.faults++;
    if (fresh) waiting_total++;
  }

  void zero_fault(Task& t, uint64_t page, uint64_t t0) {
    uffd::CopyResult r = uffd::zeropage(t.uffd, page, ps, false);
    if (r.err == 0) {
      c_zero.fetch_add(1);
      t.summary.pages_zero++;
      settle(FaultResult::kZeroPage, t0);
      return;
    }
    switch (uffd::classify(r.err)) {
      case uffd::ErrorClass::kExists:
      case uffd::ErrorClass::kNoEnt:
        // Already populated, or no longer registered (a REMOVE unregistered it): waking is enough.
        uffd::wake(t.uffd, page, ps);
        settle(uffd::classify(r.err) == uffd::ErrorClass::kExists ? FaultResult::kExists : FaultResult::kDropped, t0);
        return;
      case uffd::ErrorClass::kRetry:
        zero_retry.emplace_back(t.id, page);
        return;
      case uffd::ErrorClass::kGone:
        count_result(FaultResult::kGone, 1);
        task_gone(t);
        return;
      default:
        fail("UFFDIO_ZEROPAGE at " + hex(page) + " of pid " + std::to_string(t.pid) + " failed: " +
             strerror(-r.err));
        return;
    }
  }

  void on_fork(Task& parent, int child_fd) {
    c_fork.fetch_add(1);
    // The child's uffd is already an fd of ours (the kernel installs it when the event is read). It is served
    // from the parent's image pid; it lacks what the parent lacks, in-flight pages included (§4.4, §6.1).
    auto child = std::make_unique<Task>(ps);
    child->id = next_task++;
    child->pid = parent.pid;
    child->uffd = child_fd;
    child->ranges = parent.ranges.fork_copy();
    child->summary.pages_total = child->ranges.pages_remaining();
    child->started_ns = now_ns();
    c_total.fetch_add(child->summary.pages_total);
    c_tasks_total.fetch_add(1);
    int rc = epoll_add(child_fd, EPOLLIN | EPOLLRDHUP, kTaskTagBase + child->id);
    if (rc < 0) {
      close(child_fd);
      fail("cannot watch the uffd of a child of pid " + std::to_string(parent.pid) + ": " + strerror(-rc));
      return;
    }
    EngineEvent e;
    e.kind = EngineEvent::Kind::kFork;
    e.pid = parent.pid;
    e.task = child->id;
    e.parent_task = parent.id;
    tasks.emplace(child->id, std::move(child));
    emit(std::move(e));
  }

  // The process exited (§6.4): forget its ranges, keep the record until its replies are read and discarded.
  void task_gone(Task& t) {
    if (t.gone) return;
    t.gone = true;
    const uint64_t lost = t.ranges.pages_remaining() + t.ranges.pages_in_flight();
    t.summary.pages_dropped += lost;
    c_dropped.fetch_add(lost);
    t.ranges = LazyRanges(ps);
    for (const auto& entry : t.waiting) count_result(FaultResult::kGone, entry.second.faults);
    waiting_total -= t.waiting.size();
    t.waiting.clear();
    end_task(t, EngineEvent::Kind::kTaskExited);
  }

  // A task's end (done, or exited with pages lost): its uffd closed — which unregisters what is left, so
  // never-dumped pages then fault as normal zero pages — and its summary, with its own time, reported.
  void end_task(Task& t, EngineEvent::Kind kind) {
    if (t.uffd >= 0) {
      epoll_del(t.uffd);
      close(t.uffd);
      t.uffd = -1;
    }
    EngineEvent e;
    e.kind = kind;
    e.pid = t.pid;
    e.task = t.id;
    t.summary.seconds = static_cast<double>(now_ns() - t.started_ns) / 1e9;
    e.summary = t.summary;
    emit(std::move(e));
  }

  // ---- requests ----

  bool submit(Task& t, const LazyRequest& req, ReqKind kind) {
    uint8_t* buf = pool.get(req.len, std::max<uint64_t>(cfg.fault_around_bytes, ps), cfg.bg_max_bytes);
    if (!buf) {
      t.ranges.release(req.img_start, req.len);
      fail("out of memory for a reply buffer");
      return false;
    }
    const uint64_t cookie = next_cookie++;
    requests[cookie] = Request{t.id, req.img_start, req.len, kind, buf};
    t.requests++;
    if (kind == ReqKind::kBackground) bg_bytes += req.len;
    c_requests.fetch_add(1);
    PageRequest pr;
    pr.cookie = cookie;
    pr.pid = static_cast<uint64_t>(t.pid);
    pr.img_vaddr = req.img_start;
    pr.nr_pages = req.len / ps;
    pr.buf = buf;
    int rc = source->submit(pr);
    if (rc < 0) {
      fail("page request failed: " + source->error());
      return false;
    }
    update_source_interest();
    return true;
  }

  void update_source_interest() {
    if (!source || source->fd() < 0) return;
    const bool want = source->wants_write();
    if (want == source_wants_write) return;
    source_wants_write = want;
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0u);
    ev.data.u64 = kTagSource;
    epoll_ctl(epoll_fd, EPOLL_CTL_MOD, source->fd(), &ev);
  }

  void schedule() {
    if (!source_ready || finished) return;
    // 1. Demand faults: exactly the faulting page, never held back.
    while (!fault_queue.empty() && !finished) {
      auto [id, page] = fault_queue.front();
      fault_queue.pop_front();
      Task* t = task_by_id(id);
      if (!t || t->gone || !t->waiting.count(page)) continue;
      LazyRequest req = t->ranges.take(page, ps);
      if (req) submit(*t, req, ReqKind::kFault);
    }
    // 2. Fault-around: what follows recent faults.
    while (!around_queue.empty() && requests.size() < cfg.max_requests_in_flight && !finished) {
      Around a = around_queue.front();
      around_queue.pop_front();
      Task* t = task_by_id(a.task);
      if (!t || t->gone) continue;
      for (uint64_t addr = a.addr; addr < a.addr + a.bytes && !finished;) {
        if (t->ranges.lookup(addr) != LazyRanges::Where::kRemaining) {
          addr += ps;
          continue;
        }
        LazyRequest req = t->ranges.take(addr, a.addr + a.bytes - addr);
        if (!req || !submit(*t, req, ReqKind::kAround)) break;
        addr += req.len;
      }
    }
    if (around_queue.size() > 256) around_queue.erase(around_queue.begin(), around_queue.end() - 256);
    // 3. Background drain, after RSTF only.
    if (!rstf || !cfg.background) return;
    const bool faulting = waiting_total > 0 || now_ns() - last_fault < static_cast<uint64_t>(cfg.fault_quiet_ms) * 1000000ull;
    const uint64_t cap = faulting ? cfg.bg_in_flight_bytes_faulting : cfg.bg_in_flight_bytes;
    size_t idle_tasks = 0;
    while (bg_bytes < cap && requests.size() < cfg.max_requests_in_flight && !finished && idle_tasks < tasks.size()) {
      Task* t = next_bg_task();
      if (!t) break;
      const uint64_t room = std::max((cap - bg_bytes) & ~(ps - 1), ps);
      LazyRequest req = t->ranges.next_background(std::min(bg_len, room));
      if (!req) {
        idle_tasks++;
        continue;
      }
      if (!submit(*t, req, ReqKind::kBackground)) break;
      bg_len = std::min(bg_len * 2, cfg.bg_max_bytes);
      if (source->fd() < 0) break;  // synchronous source: one chunk per loop pass
    }
  }

  // Round robin over tasks with something left to drain.
  Task* next_bg_task() {
    if (tasks.empty()) return nullptr;
    auto it = tasks.upper_bound(bg_cursor);
    for (size_t i = 0; i < tasks.size(); i++, ++it) {
      if (it == tasks.end()) it = tasks.begin();
      Task* t = it->second.get();
      if (!t->gone && !t->finished && t->ranges.pages_remaining() > 0) {
        bg_cursor = t->id;
        return t;
      }
    }
    return nullptr;
  }

  // ---- replies and installs (§4.5) ----

  void on_source(uint32_t ev) {
    if (!source_ready) return;
    collect_replies();
    if (!finished && (ev & (EPOLLERR | EPOLLHUP)) && source->in_flight() == 0) {
      // Nothing outstanding and the peer is gone: only fatal if we still need it.
      std::vector<PageReply> none;
      int rc = source->pump(&none);
      if (rc < 0) fail("page server: " + source->error());
    }
  }

  void collect_replies() {
    std::vector<PageReply> done;
    int rc = source->pump(&done);
    for (const PageReply& reply : done) {
      if (finished) break;
      on_reply(reply);
    }
    if (rc < 0 && !finished) fail("page server: " + source->error());
    update_source_interest();
  }

  void on_reply(const PageReply& reply) {
    auto it = requests.find(reply.cookie);
    if (it == requests.end()) return;
    Request req = it->second;
    requests.erase(it);
    if (req.kind == ReqKind::kBackground) bg_bytes -= req.len;
    Task* t = task_by_id(req.task);
    if (t) t->requests--;
    if (!t || t->gone) {
      c_discarded.fetch_add(reply.nr_pages);
      pool.put(req.buf);
      return;
    }
    const uint64_t got = reply.nr_pages * ps;
    t->summary.bytes_received += got;
    // A short reply (the server clamps at its iovec end): the rest goes back to remaining.
    if (got < req.len) t->ranges.release(req.img_start + got, req.len - got);
    PendingInstall p{t->id, req.img_start, got, req.kind, req.buf, 0};
    if (install(*t, p)) {
      pool.put(req.buf);
    } else if (!finished && !t->gone) {
      pending.push_back(p);
    } else {
      pool.put(req.buf);
    }
  }

  // Installs what is still wanted of a reply. Returns true when done with the buffer, false when a COPY hit
  // EAGAIN (a non-cooperative event is pending: read it first, then retry; the unfinished parts were put back
  // in flight so the event's remap/drop applies to them).
  bool install(Task& t, const PendingInstall& p) {
    std::vector<LazyRange> pieces = t.ranges.claim(p.img_start, p.len);
    uint64_t claimed = 0;
    for (const LazyRange& piece : pieces) claimed += piece.len();
    c_discarded.fetch_add((p.len - claimed) / ps);
    if (pieces.empty()) return true;
    const bool dontwake = pieces.size() > 1;
    bool need_wake = dontwake;
    uint64_t lo = UINT64_MAX, hi = 0;
    bool retry = false;
    for (size_t i = 0; i < pieces.size(); i++) {
      const LazyRange& piece = pieces[i];
      if (retry || finished || t.gone) {
        if (retry) t.ranges.unclaim(piece);
        continue;
      }
      const uint8_t* src = p.buf + (piece.img_start - p.img_start);
      uint64_t off = 0;
      while (off < piece.len()) {
        uffd::CopyResult r = uffd::copy(t.uffd, piece.start + off, src + off, piece.len() - off, dontwake);
        if (r.copied) {
          count_installed(t, p.kind, r.copied / ps);
          settle_waiting(t, piece.start + off, piece.start + off + r.copied, FaultResult::kCopied);
          lo = std::min(lo, piece.start + off);
          hi = std::max(hi, piece.start + off + r.copied);
          off += r.copied;
        }
        if (r.err == 0) break;
        const uffd::ErrorClass cls = uffd::classify(r.err);
        if (cls == uffd::ErrorClass::kExists) {
          // Already there: done, page by page (§4.5); its waiters need a wake of their own.
          c_exist.fetch_add(1);
          t.summary.pages_exist++;
          settle_waiting(t, piece.start + off, piece.start + off + ps, FaultResult::kExists);
          lo = std::min(lo, piece.start + off);
          hi = std::max(hi, piece.start + off + ps);
          need_wake = true;
          off += ps;
          continue;
        }
        if (cls == uffd::ErrorClass::kRetry) {
          LazyRange rest = piece;
          rest.start += off;
          rest.img_start += off;
          t.ranges.unclaim(rest);
          retry = true;
          break;
        }
        if (cls == uffd::ErrorClass::kNoEnt) {
          // Not registered any more (an UNMAP/REMOVE we have not read yet, or a VMA change): nothing to fill.
          if (!warned_noent) {
            warned_noent = true;
            warn("UFFDIO_COPY at " + hex(piece.start + off) + " of pid " + std::to_string(t.pid) +
                 ": range no longer registered, dropping it");
          }
          const uint64_t pages = (piece.len() - off) / ps;
          t.summary.pages_dropped += pages;
          c_dropped.fetch_add(pages);
          settle_waiting(t, piece.start + off, piece.end, FaultResult::kDropped);
          break;
        }
        if (cls == uffd::ErrorClass::kGone) {
          // The claimed parts are in neither set any more: count what was not installed as dropped here.
          uint64_t lost = piece.len() - off;
          for (size_t k = i + 1; k < pieces.size(); k++) lost += pieces[k].len();
          t.summary.pages_dropped += lost / ps;
          c_dropped.fetch_add(lost / ps);
          task_gone(t);
          break;
        }
        fail("UFFDIO_COPY at " + hex(piece.start + off) + " of pid " + std::to_string(t.pid) + " failed: " +
             strerror(-r.err));
        break;
      }
    }
    if (need_wake && hi > lo && !t.gone && t.uffd >= 0) uffd::wake(t.uffd, lo, hi - lo);
    return !retry;
  }

  void count_installed(Task& t, ReqKind kind, uint64_t pages) {
    switch (kind) {
      case ReqKind::kFault: c_fault.fetch_add(pages); t.summary.pages_fault += pages; break;
      case ReqKind::kAround: c_around.fetch_add(pages); t.summary.pages_around += pages; break;
      case ReqKind::kBackground: c_bg.fetch_add(pages); t.summary.pages_background += pages; break;
    }
  }

  void retry_pending() {
    if (!zero_retry.empty()) {
      auto list = std::move(zero_retry);
      zero_retry.clear();
      for (auto [id, page] : list) {
        Task* t = task_by_id(id);
        if (!t || t->gone) {
          count_result(FaultResult::kGone, 1);
          continue;
        }
        on_uffd(*t);  // read the pending event first
        if (t->gone || finished) {
          count_result(FaultResult::kGone, 1);
          continue;
        }
        if (t->ranges.lookup(page) == LazyRanges::Where::kNone) {
          zero_fault(*t, page, now_ns());
        } else {
          count_result(FaultResult::kRetried, 1);  // the event made it lazy again (a remap): it faults anew
        }
      }
    }
    if (pending.empty()) return;
    auto list = std::move(pending);
    pending.clear();
    for (PendingInstall& p : list) {
      Task* t = task_by_id(p.task);
      if (!t || t->gone || finished) {
        pool.put(p.buf);
        continue;
      }
      on_uffd(*t);
      if (t->gone || finished) {
        pool.put(p.buf);
        continue;
      }
      p.attempts++;
      if (install(*t, p)) {
        pool.put(p.buf);
      } else if (p.attempts > 100000) {
        fail("UFFDIO_COPY for pid " + std::to_string(t->pid) + " keeps failing with EAGAIN");
        pool.put(p.buf);
      } else {
        pending.push_back(p);
      }
    }
  }

  // ---- completion (§4.6) ----

  void check_completion() {
    if (!rstf) return;
    bool all = true;
    for (auto& entry : tasks) {
      Task& t = *entry.second;
      if (t.finished) continue;
      bool has_pending = false;
      for (const auto& p : pending) has_pending |= p.task == t.id;
      if (t.gone) {
        if (t.requests == 0) t.finished = true;
      } else if (t.ranges.done() && t.requests == 0 && !has_pending) {
        t.finished = true;
        end_task(t, EngineEvent::Kind::kTaskDone);
      }
      all &= t.finished;
    }
    if (!all || !requests.empty() || !pending.empty()) return;
    state.store(EngineState::kClosing);
    int32_t status = 0;
    int rc = source_ready ? source->close(cfg.close_timeout_ms, &status) : 0;
    if (source) c_bytes.store(source->bytes_received());
    if (rc < 0) {
      fail("closing the page server session failed: " + source->error());
      return;
    }
    if (status != 0) warn("the page server answered CLOSE with status " + std::to_string(status));
    finished = true;
    end_ns.store(now_ns());
    state.store(EngineState::kDone);
    publish_gauges();
    EngineEvent e;
    e.kind = EngineEvent::Kind::kDone;
    e.summary = summary();
    emit(std::move(e));
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

EngineState FaultEngine::state() const { return impl_->state.load(); }

std::string FaultEngine::error() const {
  std::lock_guard<std::mutex> lock(impl_->error_mu);
  return impl_->error;
}

std::string FaultEngine::socket_path() const { return impl_->socket_path; }

EngineStats FaultEngine::stats() const {
  const Impl& m = *impl_;
  EngineStats s;
  s.state = m.state.load();
  s.summary = m.summary();
  s.tasks_total = m.c_tasks_total.load();
  s.tasks_active = m.c_tasks_active.load();
  s.pages_remaining = m.c_remaining.load();
  s.pages_in_flight = m.c_in_flight.load();
  s.faults_waiting = m.c_waiting.load();
  s.requests = m.c_requests.load();
  s.requests_in_flight = m.c_req_in_flight.load();
  s.bg_bytes_in_flight = m.c_bg_in_flight.load();
  s.events_fork = m.c_fork.load();
  s.events_remap = m.c_remap.load();
  s.events_remove = m.c_remove.load();
  s.events_unmap = m.c_unmap.load();
  s.pages_discarded = m.c_discarded.load();
  s.tls_failures = m.c_tls_failures.load();
  for (size_t i = 0; i < kLatencyBuckets; i++) s.latency_us[i] = m.hist[i].load(std::memory_order_relaxed);
  s.latency_sum_us = m.hist_sum_us.load(std::memory_order_relaxed);
  s.latency_count = m.hist_count.load(std::memory_order_relaxed);
  for (size_t i = 0; i < kFaultResults; i++) s.faults_by_result[i] = m.results[i].load(std::memory_order_relaxed);
  s.bytes_sent = m.c_bytes_sent.load();
  return s;
}

}  // namespace lazyd
