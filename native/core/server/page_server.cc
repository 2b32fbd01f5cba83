#include "server/page_server.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <unordered_map>
#include <vector>

#include "staging/memfd_store.h"
#include "net/net.h"

namespace lazyd {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kListenToken = 0;
constexpr uint64_t kWakeToken = 1;
constexpr uint64_t kFirstSessionToken = 2;

// A stalled reply must move at least this many bytes per --stall-timeout to count as progress, so a peer that
// reads a byte now and then (slow-loris) is dropped like one that reads nothing.
constexpr uint64_t kStallProgressBytes = 64 * 1024;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

struct PageServer::Entry {
  uint64_t id;
  int fd = -1;                            // --tls: the socket while the handshake runs
  std::unique_ptr<TlsSession> tls;        // --tls: the handshake in progress
  std::unique_ptr<Transport> link;        // until routed (staging: the first command decides)
  uint8_t head[4];                        // --tls routing: the first command's bytes read so far
  size_t head_len = 0;
  std::unique_ptr<LazySession> session;   // lazy fetch
  std::unique_ptr<UploadSession> upload;  // image upload
  bool ack_posted = false;
  std::string peer;
  Clock::time_point started;
  uint32_t interest = 0;
  uint64_t bytes_at_last_check = 0;
  Clock::time_point last_progress;
  uint64_t input_at_last_check = 0;  // request/upload bytes received, for the idle timeout
  Clock::time_point last_input;
  uint64_t gets_reported = 0;
  uint64_t pages_reported = 0;
  uint64_t bytes_reported = 0;
  uint64_t bytes_in_reported = 0;
  uint64_t in_flight_reported = 0;
  ~Entry() {
    tls.reset();
    net::close_gently(fd);  // a refused TLS peer still gets our alert
  }
  int socket() const { return session ? session->fd() : upload ? upload->fd() : link ? link->fd() : fd; }
  bool handshaking() const { return tls != nullptr; }
};

struct PageServer::State : StagedLookup {
  std::unordered_map<uint64_t, std::unique_ptr<Entry>> sessions;
  // Staged checkpoints by id, and who owns each task pid: a staged checkpoint or an upload in progress
  // (both are named by the upload's session id).
  std::unordered_map<uint64_t, std::shared_ptr<StagedCheckpoint>> staged;
  std::unordered_map<uint64_t, uint64_t> pid_owner;
  std::unordered_map<uint64_t, uint64_t> restores;  // completed restores per staged checkpoint

  std::shared_ptr<const StagedCheckpoint> find_pid(uint64_t pid) const override {
    auto owner = pid_owner.find(pid);
    if (owner == pid_owner.end()) return nullptr;
    auto found = staged.find(owner->second);
    return found == staged.end() ? nullptr : found->second;
  }
  uint64_t next_id = kFirstSessionToken;
  bool accepted_once = false;
  bool draining = false;
  Clock::time_point drain_deadline;
};

PageServer::PageServer(PageServerConfig config, std::shared_ptr<const PageIndex> index, ServerEventSink sink)
    : config_(config),
      index_(std::move(index)),
      sink_(std::move(sink)),
      budget_(std::make_shared<MemoryBudget>(config.staging_max_bytes)),
      state_(std::make_unique<State>()) {}

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

void PageServer::ack_upload(uint64_t session, bool ok, const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(commands_mutex_);
    commands_.push_back(Command{true, session, ok, message});
  }
  uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!write(wake_fd_, &one, sizeof one);
}

void PageServer::release(uint64_t checkpoint, const std::string& reason) {
  {
    std::lock_guard<std::mutex> lock(commands_mutex_);
    commands_.push_back(Command{false, checkpoint, false, reason});
  }
  uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!write(wake_fd_, &one, sizeof one);
}

void PageServer::run_commands() {
  std::vector<Command> commands;
  {
    std::lock_guard<std::mutex> lock(commands_mutex_);
    commands.swap(commands_);
  }
  for (const Command& command : commands) {
    if (!command.ack) {
      retire(command.id, command.message);
      continue;
    }
    auto found = state_->sessions.find(command.id);
    if (found == state_->sessions.end() || !found->second->upload) continue;  // the dump is gone already
    Entry& entry = *found->second;
    UploadSession::Status status = entry.upload->ack_close(command.ok, command.message);
    if (status == UploadSession::Status::kOpen) {
      update_interest(entry);
    } else {
      end_session(entry.id, status == UploadSession::Status::kDone, entry.upload->error());
    }
  }
}

void PageServer::retire(uint64_t checkpoint, const std::string& reason) {
  auto found = state_->staged.find(checkpoint);
  if (found == state_->staged.end()) return;
  for (PageKey key : found->second->store->keys()) {
    if (key_type(key) != wire::PS_TYPE_PID) continue;
    auto owner = state_->pid_owner.find(key_id(key));
    if (owner != state_->pid_owner.end() && owner->second == checkpoint) state_->pid_owner.erase(owner);
  }
  state_->staged.erase(found);  // sessions still bound to it hold the store until they end
  state_->restores.erase(checkpoint);
  ServerEvent event;
  event.kind = ServerEvent::Kind::kReleased;
  event.checkpoint = checkpoint;
  event.message = reason;
  event.memory_used = budget_->used();
  sink_(event);
}

std::string PageServer::admit(uint64_t session, PageKey key) {
  if (key_type(key) != wire::PS_TYPE_PID) return "";  // shmem ids are never fetched lazily
  const uint64_t pid = key_id(key);
  auto owner = state_->pid_owner.find(pid);
  if (owner != state_->pid_owner.end() && owner->second != session) {
    const bool staged = state_->staged.count(owner->second) != 0;
    return "pid " + std::to_string(pid) + " is already " +
           (staged ? "staged by checkpoint #" : "being uploaded by session #") + std::to_string(owner->second) +
           ": a lazy GET names only the pid, so two staged checkpoints cannot share one — release checkpoint #" +
           std::to_string(owner->second) + " first";
  }
  state_->pid_owner[pid] = session;
  return "";
}

// --tls: one step of the connection's handshake. Once it is done (peer verified) the connection gets its
// transport and is routed (staging) or becomes a lazy session.
void PageServer::handshake(Entry& entry) {
  const int rc = entry.tls->handshake();
  if (rc == -EAGAIN) {
    const uint32_t interest = entry.tls->handshake_wants_write() ? uint32_t{EPOLLOUT} : uint32_t{EPOLLIN};
    if (interest != entry.interest) {
      epoll_event event{interest | EPOLLRDHUP, {.u64 = entry.id}};
      epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, entry.fd, &event);
      entry.interest = interest;
    }
    return;
  }
  if (rc < 0) {
    counters_.tls_failures++;
    end_session(entry.id, false, "TLS: " + entry.tls->error() + "; session dropped");
    return;
  }
  entry.link = std::make_unique<Transport>(entry.fd, std::move(entry.tls));
  entry.fd = -1;
  if (!config_.accept_uploads) {
    entry.session = std::make_unique<LazySession>(std::move(entry.link), *index_, config_.session);
  }
}

void PageServer::route(Entry& entry, uint32_t events) {
  uint8_t head[4];
  ssize_t n;
  if (entry.link->tls()) {
    // TLS cannot peek: read the first command's bytes, then put them back for the session.
    n = entry.link->recv(entry.head + entry.head_len, sizeof entry.head - entry.head_len);
    if (n > 0) {
      entry.head_len += static_cast<size_t>(n);
      n = static_cast<ssize_t>(entry.head_len);
      memcpy(head, entry.head, entry.head_len);
    } else if (n == 0 && entry.head_len > 0) {
      n = -ECONNRESET;
    }
  } else {
    n = recv(entry.link->fd(), head, sizeof head, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0) n = -errno;
  }
  if (n < 0) {
    if (n == -EAGAIN || n == -EWOULDBLOCK || n == -EINTR) return;
    const std::string tls_error = entry.link->error();
    end_session(entry.id, false, tls_error.empty() ? std::string("receive failed: ") + strerror(static_cast<int>(-n))
                                                   : "TLS: " + tls_error);
    return;
  }
  if (n == 0) {
    end_session(entry.id, true, "");  // connected and hung up without a request
    return;
  }
  uint32_t cmd = 0;
  if (n < static_cast<ssize_t>(sizeof head)) {
    // The rest of cmd is still on its way. A plain unrouted socket is edge-triggered (its first bytes are only
    // peeked, so they would wake us in a loop), so a hangup is routed now: a lazy session reads the bytes and
    // reports the truncation. Under TLS the bytes were read, and a hangup is an error above.
    if (entry.link->tls() || !(events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) return;
  } else {
    memcpy(&cmd, head, sizeof cmd);
  }
  if (entry.link->tls()) entry.link->unread(entry.head, entry.head_len);
  switch (cmd & wire::PS_CMD_MASK) {
    case wire::PS_IOV_OPEN:
    case wire::PS_IOV_OPEN2:
    case wire::PS_IOV_PARENT:
    case wire::PS_IOV_ADD:
    case wire::PS_IOV_ADD_F:
    case wire::PS_IOV_HOLE: {
      MemfdStoreOptions options;
      options.limits.budget = budget_;
      options.limits.max_entry_pages = config_.upload.max_entry_pages;
      options.page_size = index_->page_size();
      auto store = std::make_unique<MemfdStore>(options);
      if (store->init_error()) {
        end_session(entry.id, false, std::string("cannot create the staging memfd: ") + strerror(-store->init_error()));
        return;
      }
      UploadLimits limits = config_.upload;
      limits.hold_close_reply = true;
      const uint64_t id = entry.id;
      limits.admit_key = [this, id](PageKey key) { return admit(id, key); };
      entry.upload = std::make_unique<UploadSession>(std::move(entry.link), std::move(store), limits);
      break;
    }
    default:
      entry.session = std::make_unique<LazySession>(std::move(entry.link), *index_, config_.session, state_.get());
      break;
  }
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
    if (config_.tls) {
      std::string error;
      entry->tls = TlsSession::create(config_.tls, fd, TlsSession::Role::kServer, &error);
      if (!entry->tls) {
        close(fd);
        counters_.tls_failures++;
        event.kind = ServerEvent::Kind::kRefused;
        event.message = error;
        sink_(event);
        continue;
      }
      entry->fd = fd;  // handshake first
    } else if (config_.accept_uploads) {
      entry->link = std::make_unique<Transport>(fd);  // routed by its first command
    } else {
      entry->session = std::make_unique<LazySession>(fd, *index_, config_.session);
    }
    entry->peer = event.peer;
    entry->started = entry->last_progress = entry->last_input = Clock::now();
    entry->interest = EPOLLIN;
    // Unrouted plain (staging) sockets have their first bytes only peeked: edge-triggered, or fewer than 4 bytes
    // would wake the thread in a loop until the rest arrives. (TLS reads them, so it stays level-triggered.)
    const bool peeked = config_.accept_uploads && !config_.tls;
    const uint32_t first = peeked ? uint32_t{EPOLLIN | EPOLLRDHUP | EPOLLET} : uint32_t{EPOLLIN};
    epoll_event session_event{first, {.u64 = entry->id}};
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
  bool want_read = true, want_write = false;
  if (entry.session) {
    want_read = entry.session->wants_read();
    want_write = entry.session->wants_write();
  } else if (entry.upload) {
    want_read = entry.upload->wants_read();
    want_write = entry.upload->wants_write();
  }
  const uint32_t interest = (want_read ? uint32_t{EPOLLIN} : 0u) | (want_write ? uint32_t{EPOLLOUT} : 0u);
  if (interest == entry.interest) return;
  epoll_event event{interest | EPOLLRDHUP, {.u64 = entry.id}};
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, entry.socket(), &event);
  entry.interest = interest;
}

void PageServer::service(Entry& entry, uint32_t events) {
  const uint64_t id = entry.id;
  if (entry.handshaking()) {
    if (state_->draining) {
      end_session(id, true, "");
      return;
    }
    handshake(entry);
    if (state_->sessions.count(id) == 0 || entry.handshaking()) return;  // failed, or waiting for the peer
    events |= EPOLLIN;  // the first request may have come with the handshake's last flight
  }
  if (!entry.session && !entry.upload) {
    if (state_->draining) {
      end_session(id, true, "");
      return;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP))) return;
    route(entry, events);
    if (state_->sessions.count(id) == 0) return;  // ended
    if (!entry.session && !entry.upload) {        // not routed yet
      if (entry.interest != EPOLLIN) {
        epoll_event event{EPOLLIN | EPOLLRDHUP, {.u64 = id}};
        epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, entry.socket(), &event);
        entry.interest = EPOLLIN;
      }
      return;
    }
    entry.interest = 0;  // routed: update_interest() below re-arms the socket level-triggered
  }
  if (entry.upload) {
    UploadSession& upload = *entry.upload;
    UploadSession::Status status = UploadSession::Status::kOpen;
    if (events & EPOLLOUT) status = upload.on_writable();
    if (status == UploadSession::Status::kOpen && (events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP))) {
      status = upload.on_readable();
    }
    // TLS: bytes decrypted earlier wait inside the session, where epoll cannot see them.
    for (int round = 0; round < 64 && status == UploadSession::Status::kOpen && upload.wants_read() &&
                        upload.has_buffered_input();
         round++) {
      status = upload.on_readable();
    }
    account(entry);
    if (status == UploadSession::Status::kOpen && state_->draining) {
      end_session(entry.id, false, "lazyd is shutting down: the upload is dropped; the dump fails and CRIU resumes the tasks");
      return;
    }
    if (status == UploadSession::Status::kOpen) {
      if (upload.awaiting_ack() && !entry.ack_posted) {
        entry.ack_posted = true;
        ServerEvent event;
        event.kind = ServerEvent::Kind::kUploadSealed;
        event.session = entry.id;
        event.peer = entry.peer;
        event.upload = true;
        event.upload_stats = upload.stats();
        event.format = static_cast<int>(upload.format());
        event.store = upload.shared_store();
        event.memory_used = budget_->used();
        sink_(event);
      }
      update_interest(entry);
    } else {
      end_session(entry.id, status == UploadSession::Status::kDone, upload.error());
    }
    return;
  }
  LazySession& session = *entry.session;
  LazySession::Status status = LazySession::Status::kOpen;
  if (events & EPOLLOUT) status = session.on_writable();
  if (status == LazySession::Status::kOpen && (events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP))) {
    status = session.wants_read() ? session.on_readable() : session.on_writable();
  }
  // TLS: requests decrypted earlier wait inside the session, where epoll cannot see them.
  for (int round = 0; round < 64 && status == LazySession::Status::kOpen && session.wants_read() &&
                      session.has_buffered_input();
       round++) {
    status = session.on_readable();
  }
  if (status == LazySession::Status::kOpen && state_->draining) status = session.stop_reading();

  account(entry);

  if (status == LazySession::Status::kOpen) {
    update_interest(entry);
  } else {
    end_session(entry.id, status == LazySession::Status::kDone, session.error());
  }
}

// Adds what a session moved since the last call to the daemon-wide counters.
void PageServer::account(Entry& entry) {
  if (entry.upload) {
    const uint64_t in = entry.upload->stats().bytes_in;
    counters_.bytes_received += in - entry.bytes_in_reported;
    entry.bytes_in_reported = in;
  }
  if (!entry.session) return;
  const SessionStats& stats = entry.session->stats();
  counters_.gets_total += stats.gets - entry.gets_reported;
  counters_.pages_total += stats.pages - entry.pages_reported;
  counters_.bytes_total += stats.bytes_out - entry.bytes_reported;
  counters_.bytes_received += stats.bytes_in - entry.bytes_in_reported;
  entry.gets_reported = stats.gets;
  entry.pages_reported = stats.pages;
  entry.bytes_reported = stats.bytes_out;
  entry.bytes_in_reported = stats.bytes_in;
  const uint64_t in_flight = entry.session->queued_replies();
  counters_.requests_in_flight += in_flight - entry.in_flight_reported;  // modular: may go down
  entry.in_flight_reported = in_flight;
}

void PageServer::end_session(uint64_t id, bool ok, const std::string& message) {
  auto found = state_->sessions.find(id);
  if (found == state_->sessions.end()) return;
  Entry& entry = *found->second;
  account(entry);
  counters_.requests_in_flight -= entry.in_flight_reported;  // an ended session answers nothing more
  entry.in_flight_reported = 0;
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, entry.socket(), nullptr);
  ServerEvent event;
  event.kind = ServerEvent::Kind::kSessionEnd;
  event.session = id;
  event.peer = entry.peer;
  event.ok = ok;
  event.message = message;
  event.seconds = seconds_since(entry.started);
  std::shared_ptr<StagedCheckpoint> published;
  std::shared_ptr<const StagedCheckpoint> bound;
  if (entry.session) {
    event.stats = entry.session->stats();
    event.format = static_cast<int>(entry.session->format());
    bound = entry.session->bound();
  } else if (entry.upload) {
    event.upload = true;
    event.upload_stats = entry.upload->stats();
    event.format = static_cast<int>(entry.upload->format());
    if (ok && entry.upload->committed()) {
      event.message = entry.upload->note();
      published = std::make_shared<StagedCheckpoint>();
      published->id = id;
      published->store = entry.upload->take_store();
    } else {
      // Nothing of a failed upload is served: give back its pids (its store goes with the session).
      for (auto it = state_->pid_owner.begin(); it != state_->pid_owner.end();) {
        if (it->second == id) it = state_->pid_owner.erase(it);
        else ++it;
      }
    }
  }
  counters_.sessions_active--;
  if (!ok) counters_.sessions_failed++;
  state_->sessions.erase(found);  // closes the socket
  event.memory_used = budget_->used();
  if (bound) event.checkpoint = bound->id;
  sink_(event);
  if (published) {
    state_->staged[id] = published;  // its pids are already owned by this id (admit)
    state_->restores[id] = 0;
    ServerEvent staged;
    staged.kind = ServerEvent::Kind::kStaged;
    staged.session = id;
    staged.checkpoint = id;
    staged.peer = event.peer;
    staged.store = published->store;
    staged.memory_used = budget_->used();
    sink_(staged);
  }
  if (bound && ok && event.stats.closed_by_request) {
    // A completed restore: the client sent CLOSE and hung up cleanly. A client that died mid-transfer (EOF
    // without CLOSE, or an error) does not use the checkpoint up.
    auto counted = state_->restores.find(bound->id);
    if (counted != state_->restores.end()) {
      const uint64_t restores = ++counted->second;
      ServerEvent done;
      done.kind = ServerEvent::Kind::kRestoreDone;
      done.session = id;
      done.checkpoint = bound->id;
      done.restores = restores;
      sink_(done);
      if (config_.staging_restores != 0 && restores >= config_.staging_restores) {
        retire(bound->id, "after " + std::to_string(restores) + " completed restores (--staging-restores)");
      }
    }
  }
}

void PageServer::check_stalls() {
  const auto now = Clock::now();
  const auto stall_limit = std::chrono::milliseconds(config_.stall_timeout_ms);
  const auto idle_limit = std::chrono::milliseconds(config_.idle_timeout_ms);
  std::vector<uint64_t> slow_handshakes;
  std::vector<std::pair<uint64_t, std::string>> dropped;
  for (auto& [id, entry] : state_->sessions) {
    if (entry->handshaking()) {
      if (now - entry->started > std::chrono::milliseconds(config_.tls_handshake_timeout_ms)) slow_handshakes.push_back(id);
      continue;
    }
    // Idle: nothing received and nothing of ours pending. An upload waiting for our CLOSE ack is our wait.
    uint64_t input = 0;
    bool waiting_on_us = false;
    if (entry->session) {
      input = entry->session->stats().bytes_in;
      waiting_on_us = entry->session->has_unsent_replies();
    } else if (entry->upload) {
      input = entry->upload->stats().bytes_in;
      waiting_on_us = entry->upload->awaiting_ack() || entry->upload->wants_write();
    }
    if (input != entry->input_at_last_check || waiting_on_us) {
      entry->input_at_last_check = input;
      entry->last_input = now;
    } else if (config_.idle_timeout_ms > 0 && now - entry->last_input > idle_limit) {
      dropped.emplace_back(id, "idle for " + std::to_string(config_.idle_timeout_ms / 1000) + " s: the peer sent " +
                                   (input ? "nothing more" : "no request") + " and no reply was pending; session dropped (--idle-timeout)");
      continue;
    }
    if (!entry->session) continue;  // uploads wait on the dump, which pushes; routing waits for one header
    // Stall: a reply is pending and the peer reads (almost) nothing of it.
    const uint64_t bytes = entry->session->stats().bytes_out;
    if (!entry->session->has_unsent_replies() || bytes - entry->bytes_at_last_check >= kStallProgressBytes) {
      entry->bytes_at_last_check = bytes;
      entry->last_progress = now;
    } else if (now - entry->last_progress > stall_limit) {
      dropped.emplace_back(id, "the peer read only " + std::to_string(bytes - entry->bytes_at_last_check) + " bytes in " +
                                   std::to_string(config_.stall_timeout_ms / 1000) +
                                   " s while a reply was pending; session dropped (--stall-timeout)");
    }
  }
  for (uint64_t id : slow_handshakes) {
    counters_.tls_failures++;
    end_session(id, false,
                "TLS: the peer did not complete the handshake within " +
                    std::to_string(config_.tls_handshake_timeout_ms / 1000) + " s; session dropped");
  }
  for (const auto& [id, message] : dropped) end_session(id, false, message);
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
        run_commands();
        if (!state_->draining && drain_ms_.load() >= 0) {
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
