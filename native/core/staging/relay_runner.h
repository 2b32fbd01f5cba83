// A Relay (staging/relay.h) driven on a thread of its own, so that the pull from the dump never waits behind the
// page server's sessions, nor they behind it. On these two-core machines the dump's page server splices each
// requested megabyte for about 0.5 ms; a pull sharing the page server's thread sent its next GET only once the
// thread was free again, and pulled 512 MiB in ~520 ms during a restore against ~280 ms alone (docs/benchmarks.md).
//
// The page server's thread talks to it only through this class: demand(), release() and stop() are queued to the
// runner's thread (an eventfd wakes it), and status(), held() and the relay's counters are atomics. notify() (given
// at construction, called on the runner's thread) tells the page server to look: pages arrived while a session
// waits (want_wake()), the relay holds every page, it ended, or progress is due.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "staging/relay.h"

namespace lazyd {

class RelayRunner {
 public:
  RelayRunner(std::unique_ptr<Relay> relay, std::function<void()> notify);
  // Stops the relay (a reset unless it ended) and joins the thread.
  ~RelayRunner();
  RelayRunner(const RelayRunner&) = delete;
  RelayRunner& operator=(const RelayRunner&) = delete;

  // Starts the thread; 0 or -errno (no eventfd, epoll or thread: the relay is not running, stop() ends it).
  int start();

  // ---- From any thread ----
  // A restore waits for these pages: ask for them ahead of the bulk (Relay::demand).
  void demand(uint64_t pid, uint64_t vaddr, uint64_t nr_pages);
  // hold_close: the CLOSE may go (Relay::release).
  void release();
  // A session waits for pages: notify() once more of them arrive. Then look at the store again: pages that came in
  // just before are not announced.
  void want_wake();
  // Ends the relay as failed with message unless it ended, and waits for the thread: after it, the relay is
  // finished and its fields are stable.
  void stop(const std::string& message);

  Relay::Status status() const { return relay_->status(); }
  // The relay for reading: its atomics at any time, everything once status() has left kPulling and stop() (or
  // join()) returned.
  const Relay& relay() const { return *relay_; }
  // After status() left kPulling: waits for the thread's last steps.
  void join();

 private:
  struct Command {
    enum class Kind { kDemand, kRelease, kStop };
    explicit Command(Kind k) : kind(k) {}
    Kind kind;
    uint64_t pid = 0, vaddr = 0, nr_pages = 0;
    std::string message;
  };
  void post(Command command);
  void run();
  // Runs the queued commands; true if one was a stop.
  bool take_commands();
  void interest();

  std::unique_ptr<Relay> relay_;
  std::function<void()> notify_;
  std::thread thread_;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  uint32_t interest_ = 0;  // the relay socket's epoll events (runner's thread)
  std::mutex mutex_;
  std::deque<Command> commands_;
  std::atomic<bool> waiting_{false};
};

}  // namespace lazyd
