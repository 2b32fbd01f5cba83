// The page server's own thread: one epoll set over the listening socket, a wake-up eventfd and every session.
// Serves any number of lazy sessions at once from one PageIndex; a failing session ends alone.
//
// Staging (accept_uploads): one port for both kinds of session. A new connection is routed by its first
// command (peeked, not consumed): OPEN/OPEN2/PARENT/ADD/ADD_F/HOLE start an UploadSession into a fresh
// MemfdStore charged to the daemon-wide MemoryBudget; GET/CLOSE (and anything else) start a LazySession.
// An upload's CLOSE status is held back until the control plane has written the images (kUploadSealed ->
// ack_upload()); once the dump has read the status and hung up, the store is published as a staged
// checkpoint (kStaged) and GETs for its pids are served from it. A checkpoint goes when release() is called
// or after staging_restores completed restores; sessions already bound to it keep it alive until they end.
// Who owns what (pids, stores, the memory budget) is the StagingRegistry's (staging/staging_registry.h); this
// thread tells it what happened and reports the events.
//
// Both kinds of session are a Session (server/session.h): one read/write/TLS loop (service()) drives either.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "net/access_policy.h"
#include "net/tls_context.h"
#include "server/lazy_session.h"
#include "server/page_index.h"
#include "server/upload_session.h"
#include "staging/relay.h"
#include "staging/staging_registry.h"
#include "util/counter.h"

namespace lazyd {

// The flag-backed fields have no default here: lazyd's flags set them (defaults in src/config/flags.ts), and a
// caller (the binding, a test) sets every one.
struct PageServerConfig {
  SessionLimits session;
  bool single_session = false;  // criu's behaviour: accept one connection, stop when it ends
  size_t max_sessions = 0;      // --max-sessions: connections beyond this are closed at once, with a warning
  int stall_timeout_ms = 0;     // --stall-timeout: a peer that reads (almost) nothing of a pending reply for this long is dropped
  // --idle-timeout: a session that sends nothing and has no reply pending for this long is dropped (0: never).
  // Covers idle connections that never send a request and uploads that stop mid-entry while holding staging memory.
  int idle_timeout_ms = 0;
  bool accept_uploads = false;    // --staging: route upload connections to UploadSession
  uint64_t staging_max_bytes = 0; // --staging-max-bytes: the daemon-wide cap on staged + uploading page bytes
  uint64_t staging_restores = 0;  // --staging-restores: release a staged checkpoint after this many completed restores (0: never)
  // --link-resume-hold: a lazyd link session granted feature resume and cut without CLOSE keeps its checkpoint
  // reachable by its token this long (docs/protocol.md §7.6), released or not.
  int link_resume_hold_ms = 0;
  UploadLimits upload;            // format / max_entry_pages (hold_close_reply and admit_key are set by the server)
  // --tls (docs/protocol.md §1.9): every connection starts with a TLS handshake, driven by the epoll thread without blocking;
  // a peer that has not finished it within tls_handshake_timeout_ms (--tls-handshake-timeout) is dropped.
  // null: plain TCP.
  std::shared_ptr<const TlsContext> tls;
  int tls_handshake_timeout_ms = 0;
  // --allow-from & co (net/access_policy.h): a peer no list covers is refused at accept, before a byte is read;
  // a session whose first command asks for what its peer may not do is refused then. Empty: everyone.
  AccessPolicy access;
};

struct ServerEvent {
  enum class Kind {
    kSessionStart,
    kSessionEnd,
    kRefused,
    kStopped,
    kUploadSealed,  // CLOSE arrived: write the images of `store`, then call ack_upload(session, ...)
    kStaged,        // the upload committed (or a relay's pull started): checkpoint `session` is served
    kRestoreDone,   // a lazy session of checkpoint `checkpoint` completed (restores = count so far)
    kReleased,      // checkpoint `checkpoint` is no longer offered to new sessions (message: why)
    kRelayProgress, // relay staging: checkpoint `checkpoint` holds pages_held of pages_total
    kRelayDone,     // every lazy page held, the dump's CLOSE answered (ms: from start_relay to then)
    kRelayFailed,   // the pull ended early (message: why); the checkpoint is incomplete
  };
  Kind kind = Kind::kStopped;
  uint64_t session = 0;
  std::string peer;
  bool ok = true;
  std::string message;
  SessionStats stats;
  int format = 0;  // 24 or 32 once known
  double seconds = 0;
  bool upload = false;              // the session was an upload
  UploadStats upload_stats;
  uint64_t checkpoint = 0;          // kRestoreDone / kReleased / kSessionEnd of a lazy session bound to one
  uint64_t restores = 0;
  uint64_t memory_used = 0;         // budget in use after the event
  std::shared_ptr<const PageStore> store;  // kUploadSealed / kStaged
  std::string token;                // kUploadSealed: the checkpoint's link token, 32 hex digits (lazyd-link.json)
  uint64_t pages_held = 0;          // kRelay*: pages pulled so far, of pages_total
  uint64_t pages_total = 0;
  uint64_t bytes = 0;               // kRelay*: page bytes held
  uint64_t ms = 0;                  // kRelay*: since start_relay (kRelayDone: to the CLOSE answered)
  uint64_t demand_requests = 0;     // kRelay*: GETs sent for pages a restore waited for, ahead of the bulk
  uint64_t bulk_requests = 0;       // kRelay*: GETs of the bulk pull
  uint64_t short_replies = 0;       // kRelay*: replies the dump clamped at its page-pipe buffer end (re-asked)
  uint64_t bytes_copied = 0;        // kRelay*: page bytes copied into the memfd (the rest is held by reference)
};

using ServerEventSink = std::function<void(const ServerEvent&)>;

// A snapshot of the server's counters (stats(); the binding's PageServer.stats()).
struct ServerStats {
  uint64_t sessions_total = 0;
  uint64_t sessions_active = 0;
  uint64_t sessions_failed = 0;
  uint64_t gets_total = 0;
  uint64_t pages_total = 0;
  uint64_t bytes_total = 0;         // sent: lazy replies and CLOSE answers
  uint64_t bytes_received = 0;      // read: lazy requests and uploads (headers + page data)
  uint64_t requests_in_flight = 0;  // GETs read, replies not yet sent in full, over all sessions
  uint64_t tls_failures = 0;        // TLS handshakes that failed or timed out: peers refused, not TLS (--tls)
  uint64_t access_refused = 0;      // connections or sessions refused by --allow-from & co (address or certificate name),
                                    // and fetch sessions refused by the link binding (docs/protocol.md §7.3)
  uint64_t staging_bytes = 0;       // staged + uploading page bytes (the staging budget in use)
  uint64_t staging_max_bytes = 0;   // --staging-max-bytes
};

class PageServer {
 public:
  PageServer(PageServerConfig config, std::shared_ptr<const PageIndex> index, ServerEventSink sink);
  ~PageServer();
  PageServer(const PageServer&) = delete;
  PageServer& operator=(const PageServer&) = delete;

  // Returns 0 or -errno (-EADDRINUSE, -EACCES, -EINVAL for an address that is not numeric).
  int listen(const std::string& address, uint16_t port, uint16_t* bound_port);
  // Starts the thread. Returns 0 or -errno.
  int start();
  // Thread-safe. Stops accepting, lets sessions finish the replies already queued, then ends the thread;
  // sessions still busy after drain_ms are cut.
  void request_stop(int drain_ms);
  void join();

  // Thread-safe.
  ServerStats stats() const;
  // Thread-safe: answer a kUploadSealed (ok: send the CLOSE status; otherwise fail the upload with message).
  void ack_upload(uint64_t session, bool ok, const std::string& message);
  // Thread-safe: stop offering a staged checkpoint to new sessions.
  void release(uint64_t checkpoint, const std::string& reason);
  // Thread-safe, waits for the server's thread: relay staging (staging/relay.h). The thread registers the relay's
  // checkpoint as a staged checkpoint from the start of the pull (its pids unique across staged checkpoints) and
  // drives its socket; sessions that need a page not pulled yet wait for it. Returns the checkpoint id (>= 2),
  // or 0 with *error one line (the relay is dropped: its connection is reset, the dump resumes the tasks).
  // *token (when given): the checkpoint's link token, 32 hex digits, for its lazyd-link.json ("" if none could be
  // drawn: restores then speak plain CRIU).
  uint64_t start_relay(std::unique_ptr<Relay> relay, std::string* error, std::string* token = nullptr);
  // Thread-safe: a relay started with hold_close may send its CLOSE (Relay::release); a relay that ended already
  // is left alone. Its end comes as kRelayDone / kRelayFailed.
  void release_relay(uint64_t checkpoint);
  // The staging registry; from other threads only its thread-safe parts (sealed(), the budget).
  const StagingRegistry& staging() const { return staging_; }

 private:
  struct Entry;
  struct Counters {
    Counter sessions_total, sessions_active, sessions_failed, gets_total, pages_total, bytes_total, bytes_received,
        requests_in_flight, tls_failures, access_refused;
  };
  void run();
  void accept_all();
  bool admit_connection(int fd, const PeerAddress& peer);
  bool permit(Entry& entry, Permission permission);
  void service(Entry& entry, uint32_t events);
  void update_interest(Entry& entry);
  void end_session(uint64_t id, bool ok, const std::string& message);
  void account(Entry& entry);
  void check_stalls();
  void route(Entry& entry, uint32_t events);
  void handshake(Entry& entry);
  void post_sealed(Entry& entry);
  void run_commands();
  void retire(uint64_t checkpoint, const std::string& reason);
  void wake();
  // Relay staging (start_relay), on the server's thread.
  struct RelayEntry;
  struct PendingRelay;
  void adopt_relays();
  void service_relay(uint64_t id);
  void relay_interest(uint64_t id, RelayEntry& entry);
  void relay_progress(uint64_t id, RelayEntry& entry, bool force);
  void relay_wait(Entry& entry);
  void wake_waiters(RelayEntry& entry, bool all);
  void end_relay(uint64_t id);
  void check_relays();
  void abort_relay(uint64_t id, const std::string& why);
  void stop_relays(const std::string& why);

  PageServerConfig config_;
  std::shared_ptr<const PageIndex> index_;
  ServerEventSink sink_;
  Counters counters_;
  StagingRegistry staging_;
  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  std::atomic<int> drain_ms_{-1};
  struct Command {
    bool ack = false;  // else release
    uint64_t id = 0;
    bool ok = false;
    std::string message;
    bool let_close = false;  // release_relay
  };
  std::mutex commands_mutex_;
  std::vector<Command> commands_;
  std::vector<std::shared_ptr<PendingRelay>> relay_commands_;  // under commands_mutex_
  bool thread_done_ = false;                                   // under commands_mutex_
  std::thread thread_;
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace lazyd
