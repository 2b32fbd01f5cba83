#include "staging/relay_runner.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/clock.h"

namespace lazyd {
namespace {

constexpr uint64_t kWakeToken = 0;
constexpr uint64_t kSocketToken = 1;
// The stall and TLS handshake timeouts are checked at least this often.
constexpr int kTickMs = 100;
// Pages arriving while nobody waits are announced at most this often (the page server's progress events).
constexpr uint64_t kProgressIntervalNs = 100ull * 1000 * 1000;

}  // namespace

RelayRunner::RelayRunner(std::unique_ptr<Relay> relay, std::function<void()> notify)
    : relay_(std::move(relay)), notify_(std::move(notify)) {}

RelayRunner::~RelayRunner() {
  stop("the relay was dropped");
  if (epoll_fd_ >= 0) close(epoll_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
}

int RelayRunner::start() {
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (wake_fd_ < 0 || epoll_fd_ < 0) return -errno;
  epoll_event wake{EPOLLIN, {.u64 = kWakeToken}};
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &wake) < 0) return -errno;
  if (relay_->fd() >= 0) {
    interest_ = EPOLLIN;
    epoll_event socket{interest_, {.u64 = kSocketToken}};
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, relay_->fd(), &socket) < 0) return -errno;
  }
  try {
    thread_ = std::thread([this] { run(); });
  } catch (const std::system_error& e) {
    return -e.code().value();
  }
  return 0;
}

void RelayRunner::post(Command command) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    commands_.push_back(std::move(command));
  }
  const uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!write(wake_fd_, &one, sizeof one);
}

void RelayRunner::demand(uint64_t pid, uint64_t vaddr, uint64_t nr_pages) {
  Command command(Command::Kind::kDemand);
  command.pid = pid;
  command.vaddr = vaddr;
  command.nr_pages = nr_pages;
  post(std::move(command));
}

void RelayRunner::release() { post(Command(Command::Kind::kRelease)); }

void RelayRunner::want_wake() {
  waiting_.store(true);
  // Pairs with the fence in run(): either the runner sees waiting_, or the caller's next look at the store sees
  // the pages the runner marked before it looked.
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

void RelayRunner::stop(const std::string& message) {
  if (!thread_.joinable()) {
    relay_->abort(message);  // never started (or joined already: then it ended, and abort does nothing)
    return;
  }
  Command command(Command::Kind::kStop);
  command.message = message;
  post(std::move(command));
  thread_.join();
}

void RelayRunner::join() {
  if (thread_.joinable()) thread_.join();
}

bool RelayRunner::take_commands() {
  std::deque<Command> commands;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    commands.swap(commands_);
  }
  bool stop = false;
  for (const Command& command : commands) {
    switch (command.kind) {
      case Command::Kind::kDemand: relay_->demand(command.pid, command.vaddr, command.nr_pages); break;
      case Command::Kind::kRelease: relay_->release(); break;
      case Command::Kind::kStop:
        relay_->abort(command.message);
        stop = true;
        break;
    }
  }
  return stop;
}

void RelayRunner::interest() {
  if (relay_->fd() < 0) return;
  const uint32_t want = EPOLLIN | (relay_->wants_write() ? uint32_t{EPOLLOUT} : 0u);
  if (want == interest_) return;
  epoll_event event{want, {.u64 = kSocketToken}};
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, relay_->fd(), &event);
  interest_ = want;
}

// The pull's loop: the dump's socket, the commands, the timeouts; then an announcement when something the page
// server waits for happened.
void RelayRunner::run() {
  uint64_t announced = relay_->pages_held();
  uint64_t announced_ns = now_ns();
  bool held = relay_->held();
  relay_->on_ready();  // the first GETs go out now (a dump with no lazy page ends here)
  while (relay_->status() == Relay::Status::kPulling) {
    interest();
    epoll_event events[2];
    const int n = epoll_wait(epoll_fd_, events, 2, kTickMs);
    if (n < 0 && errno != EINTR) {
      relay_->abort(std::string("the relay's epoll_wait failed: ") + strerror(errno));
      break;
    }
    bool socket = false;
    for (int i = 0; i < n; i++) {
      if (events[i].data.u64 != kWakeToken) {
        socket = true;
        continue;
      }
      uint64_t count;
      (void)!read(wake_fd_, &count, sizeof count);
      if (take_commands()) break;
    }
    if (relay_->status() != Relay::Status::kPulling) break;
    if (socket) relay_->on_ready();
    relay_->check_timeouts();

    const uint64_t pages = relay_->pages_held();
    bool tell = relay_->held() != held;
    held = relay_->held();
    if (pages != announced) {
      std::atomic_thread_fence(std::memory_order_seq_cst);  // pairs with want_wake()
      const uint64_t now = now_ns();
      if (waiting_.exchange(false) || now - announced_ns >= kProgressIntervalNs) {
        tell = true;
        announced = pages;
        announced_ns = now;
      }
    }
    if (tell) notify_();
  }
  notify_();  // ended: the page server collects it (join) and tells the sessions
}

}  // namespace lazyd
