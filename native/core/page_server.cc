#include "page_server.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <unordered_map>
#include <vector>

#include "net.h"

namespace lazyd {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kListenToken = 0;
constexpr uint64_t kWakeToken = 1;
constexpr uint64_t kFirstSessionToken = 2;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

struct PageServer::Entry {
  uint64_t id;
  std::unique_ptr<LazySession> session;
  std::string peer;
  Clock::time_point started;
  uint32_t interest = 0;
  uint64_t bytes_at_last_check = 0;
  Clock::time_point last_progress;
  uint64_t gets_reported = 0;
  uint64_t pages_reported = 0;
  uint64_t bytes_reported = 0;
};

struct PageServer::State {
  std::unordered_map<uint64_t, std::unique_ptr<Entry>> sessions;
  uint64_t next_id = kFirstSessionToken;
  bool accepted_once = false;
  bool draining = false;
  Clock::time_point drain_deadline;
};

PageServer::PageServer(PageServerConfig config, std::shared_ptr<const PageIndex> index, ServerEventSink sink)
    : config_(config), index_(std::move(index)), sink_(std::move(sink)), state_(std::make_unique<State>()) {}

PageServer::~PageServer() {
  if (thread_.joinable()) {
    request_stop(0);
    thread_.join();
  }
  if (listen_fd_ >= 0) close(listen_fd_);
  if (epoll_fd_ >= 0) close(epoll_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
}

int PageServer::listen(const std::string& address, uint16_t port, uint16_t* bound_port) {
  int fd = net::listen_tcp(address, port, 128, bound_port);
  if (fd < 0) return fd;
  listen_fd_ = fd;
  return 0;
}

int PageServer::start() {
  if (listen_fd_ < 0) return -ENOTCONN;
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epoll_fd_ < 0 || wake_fd_ < 0) return -errno;
  epoll_event listen_event{EPOLLIN, {.u64 = kListenToken}};
  epoll_event wake_event{EPOLLIN, {.u64 = kWakeToken}};
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &listen_event) < 0 ||
      epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &wake_event) < 0) {
    return -errno;
  }
  thread_ = std::thread([this] { run(); });
  return 0;
}

void PageServer::request_stop(int drain_ms) {
  drain_ms_.store(drain_ms < 0 ? 0 : drain_ms);
  uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!write(wake_fd_, &one, sizeof one);
}

void PageServer::join() {
  if (thread_.joinable()) thread_.join();
}

void PageServer::accept_all() {
  for (;;) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return;  // EAGAIN, or EMFILE & co: the listener stays armed and we retry on the next wake-up
    }
    ServerEvent event;
    event.peer = net::peer_name(fd);
    if (state_->sessions.size() >= config_.max_sessions || (config_.single_session && state_->accepted_once)) {
      close(fd);
      event.kind = ServerEvent::Kind::kRefused;
      event.message = "connection refused: " + std::to_string(state_->sessions.size()) +
                      " sessions already open (--max-sessions)";
      sink_(event);
      continue;
    }
    net::set_nodelay(fd);
    auto entry = std::make_unique<Entry>();
    entry->id = state_->next_id++;
    entry->session = std::make_unique<LazySession>(fd, *index_, config_.session);
    entry->peer = event.peer;
    entry->started = entry->last_progress = Clock::now();
    entry->interest = EPOLLIN;
    epoll_event session_event{EPOLLIN, {.u64 = entry->id}};
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &session_event);
    counters_.sessions_total++;
    counters_.sessions_active++;
    state_->accepted_once = true;
    event.kind = ServerEvent::Kind::kSessionStart;
    event.session = entry->id;
    sink_(event);
    state_->sessions.emplace(entry->id, std::move(entry));
    if (config_.single_session) {
      // criu closes its listener after the one accept (§1.1); so do we, so a second client is refused by TCP.
      epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
      close(listen_fd_);
      listen_fd_ = -1;
      return;
    }
  }
}

void PageServer::update_interest(Entry& entry) {
  const uint32_t interest = (entry.session->wants_read() ? uint32_t{EPOLLIN} : 0u) |
                            (entry.session->wants_write() ? uint32_t{EPOLLOUT} : 0u);
  if (interest == entry.interest) return;
  epoll_event event{interest | EPOLLRDHUP, {.u64 = entry.id}};
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, entry.session->fd(), &event);
  entry.interest = interest;
}

void PageServer::service(Entry& entry, uint32_t events) {
  LazySession& session = *entry.session;
  LazySession::Status status = LazySession::Status::kOpen;
  if (events & EPOLLOUT) status = session.on_writable();
  if (status == LazySession::Status::kOpen && (events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP))) {
    status = session.wants_read() ? session.on_readable() : session.on_writable();
  }
  if (status == LazySession::Status::kOpen && state_->draining) status = session.stop_reading();

  const SessionStats& stats = session.stats();
  counters_.gets_total += stats.gets - entry.gets_reported;
  counters_.pages_total += stats.pages - entry.pages_reported;
  counters_.bytes_total += stats.bytes_out - entry.bytes_reported;
  entry.gets_reported = stats.gets;
  entry.pages_reported = stats.pages;
  entry.bytes_reported = stats.bytes_out;

  if (status == LazySession::Status::kOpen) {
    update_interest(entry);
  } else {
    end_session(entry.id, status == LazySession::Status::kDone, session.error());
  }
}

void PageServer::end_session(uint64_t id, bool ok, const std::string& message) {
  auto found = state_->sessions.find(id);
  if (found == state_->sessions.end()) return;
  Entry& entry = *found->second;
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, entry.session->fd(), nullptr);
  ServerEvent event;
  event.kind = ServerEvent::Kind::kSessionEnd;
  event.session = id;
  event.peer = entry.peer;
  event.ok = ok;
  event.message = message;
  event.stats = entry.session->stats();
  event.format = static_cast<int>(entry.session->format());
  event.seconds = seconds_since(entry.started);
  counters_.sessions_active--;
  if (!ok) counters_.sessions_failed++;
  state_->sessions.erase(found);  // closes the socket
  sink_(event);
}

void PageServer::check_stalls() {
  const auto now = Clock::now();
  std::vector<uint64_t> stalled;
  for (auto& [id, entry] : state_->sessions) {
    const uint64_t bytes = entry->session->stats().bytes_out;
    if (bytes != entry->bytes_at_last_check || !entry->session->has_unsent_replies()) {
      entry->bytes_at_last_check = bytes;
      entry->last_progress = now;
    } else if (now - entry->last_progress > std::chrono::milliseconds(config_.stall_timeout_ms)) {
      stalled.push_back(id);
    }
  }
  for (uint64_t id : stalled) {
    end_session(id, false,
                "the peer read nothing for " + std::to_string(config_.stall_timeout_ms / 1000) +
                    " s while a reply was pending; session dropped (--stall-timeout)");
  }
}

void PageServer::run() {
  epoll_event events[64];
  bool running = true;
  while (running) {
    int n = epoll_wait(epoll_fd_, events, 64, 250);
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < n; i++) {
      const uint64_t token = events[i].data.u64;
      if (token == kListenToken) {
        if (listen_fd_ >= 0 && !state_->draining) accept_all();
      } else if (token == kWakeToken) {
        uint64_t count;
        (void)!read(wake_fd_, &count, sizeof count);
        if (!state_->draining) {
          state_->draining = true;
          state_->drain_deadline = Clock::now() + std::chrono::milliseconds(drain_ms_.load());
          if (listen_fd_ >= 0) {
            epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
            close(listen_fd_);
            listen_fd_ = -1;
          }
          std::vector<uint64_t> ids;
          for (auto& item : state_->sessions) ids.push_back(item.first);
          for (uint64_t id : ids) {
            auto found = state_->sessions.find(id);
            if (found != state_->sessions.end()) service(*found->second, 0);
          }
        }
      } else {
        auto found = state_->sessions.find(token);
        if (found != state_->sessions.end()) service(*found->second, events[i].events);
      }
    }
    check_stalls();
    if (state_->draining) {
      if (state_->sessions.empty()) running = false;
      else if (Clock::now() >= state_->drain_deadline) {
        std::vector<uint64_t> ids;
        for (auto& item : state_->sessions) ids.push_back(item.first);
        for (uint64_t id : ids) end_session(id, false, "cut by shutdown: replies still unsent after the drain time");
        running = false;
      }
    }
    if (config_.single_session && state_->accepted_once && state_->sessions.empty()) running = false;
  }
  ServerEvent stopped;
  stopped.kind = ServerEvent::Kind::kStopped;
  stopped.ok = counters_.sessions_failed.load() == 0;
  sink_(stopped);
}

}  // namespace lazyd
