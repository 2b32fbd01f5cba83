// The page server's own thread: one epoll set over the listening socket, a wake-up eventfd and every session.
// Serves any number of lazy sessions at once from one PageIndex; a failing session ends alone.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "lazy_session.h"
#include "page_index.h"

namespace lazyd {

struct PageServerConfig {
  SessionLimits session;
  bool single_session = false;  // criu's behaviour: accept one connection, stop when it ends
  size_t max_sessions = 1024;   // connections beyond this are closed at once, with a warning
  int stall_timeout_ms = 30000; // a peer that reads nothing of a pending reply for this long is dropped
};

struct ServerEvent {
  enum class Kind { kSessionStart, kSessionEnd, kRefused, kStopped };
  Kind kind = Kind::kStopped;
  uint64_t session = 0;
  std::string peer;
  bool ok = true;
  std::string message;
  SessionStats stats;
  int format = 0;  // 24 or 32 once known
  double seconds = 0;
};

using ServerEventSink = std::function<void(const ServerEvent&)>;

struct ServerCounters {
  std::atomic<uint64_t> sessions_total{0};
  std::atomic<uint64_t> sessions_active{0};
  std::atomic<uint64_t> sessions_failed{0};
  std::atomic<uint64_t> gets_total{0};
  std::atomic<uint64_t> pages_total{0};
  std::atomic<uint64_t> bytes_total{0};
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

  const ServerCounters& counters() const { return counters_; }

 private:
  struct Entry;
  void run();
  void accept_all();
  void service(Entry& entry, uint32_t events);
  void update_interest(Entry& entry);
  void end_session(uint64_t id, bool ok, const std::string& message);
  void check_stalls();

  PageServerConfig config_;
  std::shared_ptr<const PageIndex> index_;
  ServerEventSink sink_;
  ServerCounters counters_;
  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  std::atomic<int> drain_ms_{-1};
  std::thread thread_;
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace lazyd
