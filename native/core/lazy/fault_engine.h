// The lazy-pages daemon's data path (docs/protocol.md §3, §4; README.md "Architecture"): ONE thread with one epoll set over
// the restore socket, every task's userfaultfd and the page source. A fault is read, requested, received and
// installed on that thread without any hand-off.
//
// Scheduling, in priority order:
//   1. demand faults: the faulting page alone (a fault on a page already in flight just waits for it);
//   2. fault-around: the rest of a window after each faulting page;
//   3. the background drain (after RSTF, as criu does: before it the restorer may not have registered the
//      VMAs yet) in growing requests, several in flight; while faults are waiting (or were seen in the last
//      few ms) the drain's bytes in flight are capped low so no fault queues behind megabytes of drain.
// Installs are one UFFDIO_COPY per contiguous run of a reply (DONTWAKE + one WAKE when a reply needs several).
//
// Usage: FaultEngine e(config, sink); e.start() (creates lazy-pages.socket, then spawns the thread; signal
// readiness to whoever waits after it returns); e.join() or e.stop(); e.stats() from any thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "net/tls_context.h"
#include "wire/wire.h"

namespace lazyd {

struct FaultEngineConfig {
  // One lazy run of a task: pages [img_start, img_start + nr_pages*page_size) at dump time, already split at
  // VMA ends by the caller (§4.3). fd/file_offset locate the bytes in a pages-*.img for the local source
  // (fd not owned: keep it open until the engine is destroyed); unused for a remote source.
  struct Run {
    uint64_t img_start = 0;
    uint64_t nr_pages = 0;
    int fd = -1;
    uint64_t file_offset = 0;
  };
  struct Task {
    int pid = 0;  // virtual pid as in pstree.img
    std::vector<Run> runs;
  };
  enum class Source { kLocal, kRemote };

  std::string work_dir = ".";  // where lazy-pages.socket is created (restore's -W/-D, §3.1)
  size_t nr_tasks = 0;         // hand-overs to expect: the number of pstree.img records, zombies included (§3.2)
  std::vector<Task> tasks;     // tasks without lazy memory may be left out
  // Start before the images exist: start() only listens; when the restore connects the engine emits
  // kRestoreConnected and leaves the hand-overs waiting in the socket until set_tasks() gives nr_tasks, tasks
  // and format (those fields are ignored here). The hand-over timeout starts at set_tasks().
  bool defer_tasks = false;

  Source source = Source::kLocal;
  std::string address;                         // page server host (name or literal), kRemote
  uint16_t port = 0;
  wire::Format format = wire::Format::V24;     // 24: criu <= 4.1, 32: criu >= 4.2 (§0)
  int ps_socket = -1;                          // an already-connected page-server socket (taken over) instead
  std::shared_ptr<const TlsContext> tls;       // --tls: the page-server connection runs TLS (§1.9); null: plain
  // The token of the images' lazyd-link.json (32 hex digits): the session opens with a lazyd HELLO (§7).
  // Empty (no file, or --link stock): only CRIU's own bytes are sent. With defer_tasks, given to set_tasks().
  std::string link_token;

  uint64_t page_size = 0;  // 0: sysconf(_SC_PAGESIZE)

  // Scheduling limits (bytes). The flag-backed ones have no default here: `lazyd lazy-pages`'s flags set them
  // (defaults in src/config/flags.ts), and a caller (the binding, a test) sets every one.
  uint64_t fault_around_bytes = 0;          // --fault-around-bytes: window starting at the faulting page; <= page_size: off
  uint64_t bg_min_bytes = 0;                // --drain-min-bytes: first background request, reset by every fault
  uint64_t bg_max_bytes = 0;                // --drain-max-bytes: the background request size doubles up to this
  uint64_t bg_in_flight_bytes = 0;          // --drain-inflight-bytes: drain bytes in flight, normally (the floor:
                                            // more when the link's measured bandwidth x RTT asks for it)
  uint64_t bg_in_flight_max_bytes = 0;      // --drain-inflight-max-bytes: the ceiling of that; 0: = the floor
  uint64_t bg_rate_bytes = 0;               // --drain-rate: the drain's bytes/s at most (faults not limited); 0: none
  uint64_t bg_in_flight_bytes_faulting = 0; // --drain-inflight-bytes-faulting: ... while faults wait or were seen lately
  int fault_quiet_ms = 5;                   // "lately"
  size_t max_requests_in_flight = 0;        // --max-requests-inflight; fault requests are never held back by this
  bool background = true;                   // --drain / --no-drain: drain everything after RSTF (off: faults only)
  int drain_start_ms = 0;                    // --drain-start: for this long after RSTF, the drain's window is the faulting
                                             // one (the floor on a priority link): drain_window(), engine/scheduler.h
  bool link_checksum = true;                // --link-checksum: a lazyd HELLO asks for feature checksum (§7.4)
  bool link_priority = true;                // --link-priority: a second connection for demand faults (§7.5)
  // --reconnect-timeout: a cut lazyd link (feature resume, §7.6) is made again within this; 0: off (a cut fails)
  int reconnect_timeout_ms = 0;

  // Timeouts in ms; <= 0 means no limit.
  int accept_timeout_ms = 0;         // restore must connect within this
  int handover_timeout_ms = 60000;   // all nr_tasks hand-overs within this after the connection
  int rstf_timeout_ms = 0;           // --rstf-timeout: RSTF within this after the last hand-over
  int connect_timeout_ms = 10000;    // TCP connect to the page server
  int stall_timeout_ms = 0;          // --stall-timeout: no reply byte for this long with requests outstanding: fatal
  int close_timeout_ms = 10000;      // CLOSE answer
};

// Totals reported with kDone, kTaskDone and kTaskExited.
struct EngineSummary {
  uint64_t faults = 0;             // PAGEFAULT messages
  uint64_t pages_fault = 0;        // installed for the faulting page itself
  uint64_t pages_around = 0;       // installed by fault-around
  uint64_t pages_background = 0;   // installed by the drain
  uint64_t pages_zero = 0;         // UFFDIO_ZEROPAGE outside any lazy range (never dumped)
  uint64_t pages_exist = 0;        // EEXIST: already there, counted as done
  uint64_t pages_dropped = 0;      // forgotten after REMOVE/UNMAP/exit, or ENOENT
  uint64_t pages_total = 0;        // lazy pages at the start (plus those copied to forked children)
  uint64_t bytes_received = 0;     // engine: every byte read from the page source; task: its reply page bytes
  uint64_t copy_bytes = 0;         // bytes UFFDIO_COPY placed
  uint64_t copy_ns = 0;            // time spent inside UFFDIO_COPY: the install's own cost (a page the kernel, or
                                   // a VM's host, must first back costs more than the copy itself)
  double seconds = 0;              // engine: since listening; task: from its hand-over (or fork) to done/exit
};

struct EngineEvent {
  enum class Kind {
    kListening,        // message = socket path
    kRestoreConnected,
    kTask,             // a task handed over its uffd: pid, task, host_pid (and message "host pid N")
    kZombie,           // pid
    kRestoreFinished,  // RSTF
    kSourceConnected,  // message = "page-server host:port" or "local"
    kFork,             // pid (image pid of parent and child), task = child, parent_task
    kTaskExited,       // the process went away (ESRCH/ENOSPC/ENOMEM): task, summary
    kTaskDone,         // every lazy page installed or dropped: task, summary; its uffd is closed
    kWarning,          // message
    kDone,             // summary; the page source got CLOSE
    kFailed,           // message; the uffds stay open until the engine is destroyed (closing them would make
                       // the kernel zero-fill every missing page: silent corruption, §4.6). Until then the
                       // restored tasks block on faults and on munmap/mremap/madvise of lazy memory (the kernel
                       // waits for those events to be read): kill them, or destroy the engine, to move on.
  };
  Kind kind = Kind::kWarning;
  int pid = 0;
  // kTask: the pid of the task's process in the daemon's pid namespace (from the hand-over's SCM_CREDENTIALS),
  // 0 if unknown. The same value is in message as "host pid <n>" for consumers that only see the message.
  int host_pid = 0;
  uint64_t task = 0;
  uint64_t parent_task = 0;
  std::string message;
  EngineSummary summary;
};

// Called on the engine thread; must not block (the binding posts to a queue).
using EngineEventSink = std::function<void(const EngineEvent&)>;

enum class EngineState { kIdle, kWaitingRestore, kHandshake, kRunning, kClosing, kDone, kFailed };
const char* engine_state_name(EngineState state);

// Fault service time: from reading a page's first PAGEFAULT message to its install or zero page (µs upper
// bounds; the last is +inf). Every fault message settled that way is one sample (sum and count kept beside).
// Four buckets per doubling: bound k is 8 * 2^(k/4) µs rounded (8, 10, 11, 13, 16, 19, ...), k = 0..68, the
// last finite one 1,048,576 µs (just over 1 s); then +inf.
constexpr size_t kLatencyBuckets = 70;
extern const uint64_t kLatencyBoundsUs[kLatencyBuckets];

// How each PAGEFAULT message ended (every fault message is counted once, when its page settles).
enum class FaultResult : uint8_t {
  kCopied,    // its page was installed by UFFDIO_COPY (on demand, fault-around or the drain)
  kZeroPage,  // not a lazy page: UFFDIO_ZEROPAGE
  kExists,    // EEXIST: the page was already there
  kDropped,   // its range was unmapped, removed (MADV_DONTNEED) or unregistered: woken without data
  kRetried,   // its range was moved (mremap): woken to fault again at the new address
  kGone,      // the task exited (ESRCH) before its page came
};
constexpr size_t kFaultResults = 6;
const char* fault_result_name(FaultResult result);  // "copied", "zeropage", "exists", "dropped", "retried", "gone"

struct EngineStats {
  EngineState state = EngineState::kIdle;
  EngineSummary summary;
  uint64_t tasks_total = 0;
  uint64_t tasks_active = 0;
  uint64_t pages_remaining = 0;
  uint64_t pages_in_flight = 0;
  uint64_t faults_waiting = 0;
  uint64_t requests = 0;
  uint64_t requests_in_flight = 0;
  uint64_t bg_bytes_in_flight = 0;
  uint64_t bg_window_bytes = 0;     // the drain's bytes in flight allowed now (the link estimate, or the faulting cap)
  uint64_t link_rtt_us = 0;         // the page link's round trip as measured (0: not yet)
  uint64_t link_bandwidth_bps = 0;  // its delivery rate as measured, bytes/s (0: not yet)
  uint64_t bytes_background = 0;    // bytes the drain requested (rate cap: at most rate x time + burst)
  uint64_t events_fork = 0, events_remap = 0, events_remove = 0, events_unmap = 0;
  uint64_t pages_discarded = 0;    // reply pages thrown away because their range was dropped meanwhile
  uint64_t latency_us[kLatencyBuckets] = {};  // per bucket, not cumulative
  uint64_t latency_sum_us = 0;
  uint64_t latency_count = 0;
  // From the fine histogram (engine/latency_quantiles.h): bucket upper bounds within 1.6 %, the max exact; 0: none.
  uint64_t latency_p50_us = 0, latency_p99_us = 0, latency_max_us = 0;
  uint64_t faults_by_result[kFaultResults] = {};
  uint64_t bytes_sent = 0;                    // requests written to the page source (0 for a local one)
  uint64_t tls_failures = 0;                  // --tls: the handshake with the page server failed (0 or 1)
  uint64_t checksum_mismatches = 0;           // pages that failed their link checksum (docs/protocol.md §7.4)
  uint64_t reconnects = 0;                    // lazyd link: cuts that began a reconnect (§7.6)
  uint64_t install_slices = 0;                // drain reply parts left to a later loop pass (faults first)
  uint64_t faults_reasked = 0;                // faults on a page a drain request held, asked again on the priority connection
};

class FaultEngine {
 public:
  explicit FaultEngine(FaultEngineConfig config, EngineEventSink sink = nullptr);
  ~FaultEngine();  // stop(), then closes every fd
  FaultEngine(const FaultEngine&) = delete;
  FaultEngine& operator=(const FaultEngine&) = delete;

  // Validates the config, creates <work_dir>/lazy-pages.socket and spawns the thread. 0 or -errno (error()).
  int start();
  // defer_tasks: thread-safe, once, after start(): the tasks and the header format; the engine thread loads the
  // ranges and reads the waiting hand-overs (a bad range fails the engine: kFailed). 0, -EINVAL (not deferred,
  // bad format) or -EALREADY.
  int set_tasks(size_t nr_tasks, std::vector<FaultEngineConfig::Task> tasks, wire::Format format,
                std::string link_token = {});
  // Thread-safe: asks the thread to end now and joins it. Does not send CLOSE.
  void stop();
  // Waits for the thread to end by itself (done or failed).
  void join();

  EngineStats stats() const;
  EngineState state() const;
  // The failure reason once state() is kFailed (or start() failed). Read it after join()/stop().
  std::string error() const;
  std::string socket_path() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace lazyd
