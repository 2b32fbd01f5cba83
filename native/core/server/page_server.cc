#include "server/page_server.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <future>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <unordered_map>
#include <vector>

#include "net/net.h"
#include "staging/memfd_store.h"
#include "util/clock.h"

namespace lazyd {
namespace {

constexpr uint64_t kListenToken = 0;
constexpr uint64_t kWakeToken = 1;
constexpr uint64_t kFirstSessionToken = 2;

// A stalled reply must move at least this many bytes per --stall-timeout to count as progress, so a peer that
// reads a byte now and then (slow-loris) is dropped like one that reads nothing.
constexpr uint64_t kStallProgressBytes = 64 * 1024;

// Relay staging: progress events at most this often.
constexpr uint64_t kRelayProgressIntervalNs = 100ull * 1000 * 1000;
// A host refused by --allow-from & co is logged at most once per this interval (its other refusals are counted).
constexpr uint64_t kRefusalLogIntervalNs = 60ull * 1000 * 1000 * 1000;

std::string join_names(const std::vector<std::string>& items) {
  std::string text;
  for (const std::string& item : items) text += (text.empty() ? "" : ", ") + item;
  return text;
}

}  // namespace

struct PageServer::Entry {
  uint64_t id;
  int fd = -1;                            // --tls: the socket while the handshake runs
  std::unique_ptr<TlsSession> tls;        // --tls: the handshake in progress
  std::unique_ptr<Transport> link;        // until routed (staging: the first command decides)
  uint8_t head[4];                        // --tls routing: the first command's bytes read so far
  size_t head_len = 0;
  std::unique_ptr<Session> session;       // once routed: the lazy fetch or the upload
  LazySession* lazy = nullptr;            // session, when it is a lazy fetch
  UploadSession* upload = nullptr;        // session, when it is an image upload
  bool ack_posted = false;
  std::string peer;
  PeerAddress address;                    // the peer's address, for --allow-from & co
  uint64_t started_ns = 0;
  uint32_t interest = 0;
  bool hup_masked = false;                // relay staging: a waiting GET's idle socket, EPOLLRDHUP off
  uint64_t bytes_at_last_check = 0;
  uint64_t last_progress_ns = 0;
  uint64_t input_at_last_check = 0;  // request/upload bytes received, for the idle timeout
  uint64_t last_input_ns = 0;
  bool pinned = false;               // a resumable lazyd link session: its checkpoint is pinned (StagingRegistry::pin)
  SessionTotals reported;            // what account() has added to the daemon-wide counters
  ~Entry() {
    tls.reset();
    net::close_gently(fd);  // a refused TLS peer still gets our alert
  }
  int socket() const { return session ? session->fd() : link ? link->fd() : fd; }
  bool handshaking() const { return tls != nullptr; }
  void start_lazy(std::unique_ptr<LazySession> fetch) {
    lazy = fetch.get();
    session = std::move(fetch);
  }
  void start_upload(std::unique_ptr<UploadSession> incoming) {
    upload = incoming.get();
    session = std::move(incoming);
  }
};

// A relay in progress (relay staging): its engine, its socket's epoll interest, the sessions waiting for its pages.
struct PageServer::RelayEntry {
  std::unique_ptr<Relay> relay;
  uint32_t interest = 0;
  std::vector<uint64_t> waiters;  // session ids (some may have ended)
  uint64_t last_progress_ns = 0;
  uint64_t last_progress_pages = UINT64_MAX;
};

struct PageServer::PendingRelay {
  struct Result {
    uint64_t id = 0;    // the checkpoint, or 0
    std::string error;  // id 0: why not
    std::string token;  // its link token in hex, or ""
  };
  std::unique_ptr<Relay> relay;
  std::promise<Result> result;
};

struct PageServer::State {
  std::unordered_map<uint64_t, std::unique_ptr<Entry>> sessions;
  std::unordered_map<uint64_t, RelayEntry> relays;  // by checkpoint id
  uint64_t next_id = kFirstSessionToken;
  bool accepted_once = false;
  bool draining = false;
  uint64_t drain_deadline_ns = 0;
  RefusalLog refusals{kRefusalLogIntervalNs};
};

PageServer::PageServer(PageServerConfig config, std::shared_ptr<const PageIndex> index, ServerEventSink sink)
    : config_(config),
      index_(std::move(index)),
      sink_(std::move(sink)),
      staging_(config.staging_max_bytes, config.staging_restores),
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

void PageServer::wake() {
  uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!write(wake_fd_, &one, sizeof one);
}

void PageServer::request_stop(int drain_ms) {
  drain_ms_.store(drain_ms < 0 ? 0 : drain_ms);
  wake();
}

void PageServer::ack_upload(uint64_t session, bool ok, const std::string& message) {
  staging_.drop_sealed(session);  // answered: the control plane is done with the store
  {
    std::lock_guard<std::mutex> lock(commands_mutex_);
    commands_.push_back(Command{true, session, ok, message});
  }
  wake();
}

void PageServer::release(uint64_t checkpoint, const std::string& reason) {
  {
    std::lock_guard<std::mutex> lock(commands_mutex_);
    commands_.push_back(Command{false, checkpoint, false, reason});
  }
  wake();
}

void PageServer::release_relay(uint64_t checkpoint) {
  {
    std::lock_guard<std::mutex> lock(commands_mutex_);
    Command command{false, checkpoint, false, ""};
    command.let_close = true;
    commands_.push_back(command);
  }
  wake();
}

ServerStats PageServer::stats() const {
  ServerStats s;
  s.sessions_total = counters_.sessions_total.get();
  s.sessions_active = counters_.sessions_active.get();
  s.sessions_failed = counters_.sessions_failed.get();
  s.gets_total = counters_.gets_total.get();
  s.pages_total = counters_.pages_total.get();
  s.bytes_total = counters_.bytes_total.get();
  s.bytes_received = counters_.bytes_received.get();
  s.requests_in_flight = counters_.requests_in_flight.get();
  s.tls_failures = counters_.tls_failures.get();
  s.access_refused = counters_.access_refused.get();
  s.staging_bytes = staging_.budget()->used();
  s.staging_max_bytes = staging_.budget()->limit();
  return s;
}

void PageServer::run_commands() {
  std::vector<Command> commands;
  {
    std::lock_guard<std::mutex> lock(commands_mutex_);
    commands.swap(commands_);
  }
  for (const Command& command : commands) {
    if (command.let_close) {
      auto relay = state_->relays.find(command.id);
      if (relay == state_->relays.end()) continue;  // ended already (its event said how)
      if (relay->second.relay->release() != Relay::Status::kPulling) end_relay(command.id);
      else relay_interest(command.id, relay->second);
      continue;
    }
    if (!command.ack) {
      abort_relay(command.id, "released while pulling (" + command.message + ")");
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
  if (!staging_.retire(checkpoint)) return;
  ServerEvent event;
  event.kind = ServerEvent::Kind::kReleased;
  event.checkpoint = checkpoint;
  event.message = reason;
  event.memory_used = staging_.budget()->used();
  sink_(event);
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
    counters_.tls_failures.add();
    end_session(entry.id, false, "TLS: " + entry.tls->error() + "; session dropped");
    return;
  }
  entry.link = std::make_unique<Transport>(entry.fd, std::move(entry.tls));
  entry.fd = -1;
  if (!config_.accept_uploads) {
    if (!permit(entry, Permission::kFetch)) return;  // every session of a server without staging is a fetch
    entry.start_lazy(std::make_unique<LazySession>(std::move(entry.link), *index_, config_.session));
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
      if (!permit(entry, Permission::kUpload)) return;
      MemfdStoreOptions options;
      options.limits.budget = staging_.budget();
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
      limits.admit_key = [this, id](PageKey key) { return staging_.admit(id, key); };
      entry.start_upload(std::make_unique<UploadSession>(std::move(entry.link), std::move(store), limits));
      break;
    }
    default:
      if (!permit(entry, Permission::kFetch)) return;
      entry.start_lazy(std::make_unique<LazySession>(std::move(entry.link), *index_, config_.session, &staging_));
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
    const PeerAddress address = peer_address(fd);
    if (!admit_connection(fd, address)) continue;
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
        counters_.tls_failures.add();
        event.kind = ServerEvent::Kind::kRefused;
        event.message = error;
        sink_(event);
        continue;
      }
      entry->fd = fd;  // handshake first
    } else if (config_.accept_uploads) {
      entry->link = std::make_unique<Transport>(fd);  // routed by its first command
    } else {
      entry->start_lazy(std::make_unique<LazySession>(fd, *index_, config_.session));
    }
    entry->peer = event.peer;
    entry->address = address;
    entry->started_ns = entry->last_progress_ns = entry->last_input_ns = now_ns();
    entry->interest = EPOLLIN;
    // Unrouted plain (staging) sockets have their first bytes only peeked: edge-triggered, or fewer than 4 bytes
    // would wake the thread in a loop until the rest arrives. (TLS reads them, so it stays level-triggered.)
    const bool peeked = config_.accept_uploads && !config_.tls;
    const uint32_t first = peeked ? uint32_t{EPOLLIN | EPOLLRDHUP | EPOLLET} : uint32_t{EPOLLIN};
    epoll_event session_event{first, {.u64 = entry->id}};
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &session_event);
    counters_.sessions_total.add();
    counters_.sessions_active.add();
    state_->accepted_once = true;
    event.kind = ServerEvent::Kind::kSessionStart;
    event.session = entry->id;
    sink_(event);
    state_->sessions.emplace(entry->id, std::move(entry));
    if (config_.single_session) {
      // criu closes its listener after the one accept (docs/protocol.md §1.1); so do we, so a second client is refused by TCP.
      epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
      close(listen_fd_);
      listen_fd_ = -1;
      return;
    }
  }
}

// --allow-from & co, at accept: a peer that no list lets do anything this server offers is refused before a byte
// is read from it (reset, so neither end keeps the connection in TIME_WAIT), counted, and logged at most once a
// minute per host. Returns false when fd is closed.
bool PageServer::admit_connection(int fd, const PeerAddress& peer) {
  const AccessPolicy& access = config_.access;
  if (!access.by_address()) return true;
  if (access.address_allows(peer, Permission::kFetch)) return true;
  if (config_.accept_uploads && access.address_allows(peer, Permission::kUpload)) return true;
  net::set_reset_on_close(fd, true);
  close(fd);
  counters_.access_refused.add();
  const std::string host = peer.known ? peer.host : "?";
  uint64_t unlogged = 0;
  if (!state_->refusals.should_log(host, now_ns(), &unlogged)) return false;
  ServerEvent event;
  event.kind = ServerEvent::Kind::kRefused;
  event.peer = host;
  event.message = "connection from " + host + " refused: no --allow-from" +
                  std::string(config_.accept_uploads ? ", --allow-fetch-from or --allow-upload-from" : " or --allow-fetch-from") +
                  " block covers it; add its address to one to let it in" +
                  (unlogged ? " (" + std::to_string(unlogged) + " more refusals of this host since the last such line)" : "") +
                  " (logged at most once a minute per host)";
  sink_(event);
  return false;
}

// --allow-from & co, at the session's first command: may this peer fetch (GET, CLOSE) or upload (OPEN2, ADD_F...)?
// The address, then (TLS) the certificate's names. Refused: the session ends with one line; returns false.
bool PageServer::permit(Entry& entry, Permission permission) {
  const AccessPolicy& access = config_.access;
  std::string why;
  if (!access.address_allows(entry.address, permission)) {
    why = entry.address.host + " may not " + permission_name(permission) + " here: no " + address_flags(permission) +
          " block covers it";
  } else if (access.by_name()) {
    const TlsSession* tls = entry.link ? entry.link->tls_session() : nullptr;
    const std::vector<std::string>& names = access.names_for(permission);
    if (tls == nullptr || !tls->peer_named_one_of(names)) {
      why = "the peer's certificate (" + (tls ? tls->peer_names() : std::string("none")) + ") names none of " +
            (names.empty() ? std::string("the names allowed to ") + permission_name(permission) + " (none are)"
                           : join_names(names)) +
            " (" + name_flags(permission) + ")";
    }
  }
  if (why.empty()) return true;
  counters_.access_refused.add();
  end_session(entry.id, false, std::string(permission_name(permission)) + " refused: " + why + "; session dropped");
  return false;
}

void PageServer::update_interest(Entry& entry) {
  bool want_read = true, want_write = false;
  if (entry.session) {
    want_read = entry.session->wants_read();
    want_write = entry.session->wants_write();
  }
  const uint32_t interest = (want_read ? uint32_t{EPOLLIN} : 0u) | (want_write ? uint32_t{EPOLLOUT} : 0u);
  // A GET waiting for a relay with nothing to read or write: a peer's half-close (level-triggered) would wake the
  // thread in a loop until the pages come. A reset still wakes it (EPOLLERR/EPOLLHUP cannot be masked).
  const bool hup_masked = entry.lazy && entry.lazy->waiting() && interest == 0;
  if (interest == entry.interest && hup_masked == entry.hup_masked) return;
  epoll_event event{interest | (hup_masked ? 0u : uint32_t{EPOLLRDHUP}), {.u64 = entry.id}};
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, entry.socket(), &event);
  entry.interest = interest;
  entry.hup_masked = hup_masked;
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
  if (!entry.session) {
    if (state_->draining) {
      end_session(id, true, "");
      return;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP))) return;
    route(entry, events);
    if (state_->sessions.count(id) == 0) return;  // ended
    if (!entry.session) {                          // not routed yet
      if (entry.interest != EPOLLIN) {
        epoll_event event{EPOLLIN | EPOLLRDHUP, {.u64 = id}};
        epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, entry.socket(), &event);
        entry.interest = EPOLLIN;
      }
      return;
    }
    entry.interest = 0;  // routed: update_interest() below re-arms the socket level-triggered
  }
  Session& session = *entry.session;
  Session::Status status = Session::Status::kOpen;
  if (events & EPOLLOUT) status = session.on_writable();
  if (status == Session::Status::kOpen && (events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLRDHUP))) {
    status = session.wants_read() ? session.on_readable() : session.on_writable();
  }
  // TLS: bytes decrypted earlier wait inside the session, where epoll cannot see them.
  for (int round = 0; round < 64 && status == Session::Status::kOpen && session.wants_read() &&
                      session.has_buffered_input();
       round++) {
    status = session.on_readable();
  }
  if (status == Session::Status::kOpen && state_->draining) status = session.drain();

  account(entry);

  if (status != Session::Status::kOpen) {
    end_session(id, status == Session::Status::kDone, session.error());
    return;
  }
  if (entry.upload && entry.upload->awaiting_ack() && !entry.ack_posted) post_sealed(entry);
  if (entry.lazy && !entry.pinned && entry.lazy->stats().resume && entry.lazy->bound()) {
    staging_.pin(entry.lazy->bound());
    entry.pinned = true;
  }
  if (entry.lazy && entry.lazy->waiting()) {
    relay_wait(entry);
    if (state_->sessions.count(id) == 0) return;
  }
  update_interest(entry);
}

// An upload's CLOSE arrived and its store is sealed: the control plane writes the images, then ack_upload().
void PageServer::post_sealed(Entry& entry) {
  UploadSession& upload = *entry.upload;
  entry.ack_posted = true;
  const int drawn = staging_.hold_sealed(entry.id, upload.shared_store());
  ServerEvent event;
  event.kind = ServerEvent::Kind::kUploadSealed;
  if (drawn == 0) {
    char token[2 * wire::kTokenSize + 1];
    wire::token_to_hex(*staging_.upload_token(entry.id), token);
    event.token = token;
  }
  event.session = entry.id;
  event.peer = entry.peer;
  event.upload = true;
  event.upload_stats = upload.stats();
  event.format = static_cast<int>(upload.format());
  event.store = upload.shared_store();
  event.memory_used = staging_.budget()->used();
  sink_(event);
}

// Adds what a session moved since the last call to the daemon-wide counters.
void PageServer::account(Entry& entry) {
  if (!entry.session) return;
  const SessionTotals now = entry.session->totals();
  SessionTotals& reported = entry.reported;
  counters_.gets_total.add(now.gets - reported.gets);
  counters_.pages_total.add(now.pages - reported.pages);
  counters_.bytes_total.add(now.bytes_out - reported.bytes_out);
  counters_.bytes_received.add(now.bytes_in - reported.bytes_in);
  counters_.requests_in_flight.add(now.in_flight - reported.in_flight);  // modular: may go down
  reported = now;
}

void PageServer::end_session(uint64_t id, bool ok, const std::string& message) {
  auto found = state_->sessions.find(id);
  if (found == state_->sessions.end()) return;
  Entry& entry = *found->second;
  account(entry);
  counters_.requests_in_flight.sub(entry.reported.in_flight);  // an ended session answers nothing more
  entry.reported.in_flight = 0;
  epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, entry.socket(), nullptr);
  ServerEvent event;
  event.kind = ServerEvent::Kind::kSessionEnd;
  event.session = id;
  event.peer = entry.peer;
  event.ok = ok;
  event.message = message;
  event.seconds = seconds_since(entry.started_ns);
  std::shared_ptr<const PageStore> committed;
  std::shared_ptr<const StagedCheckpoint> bound;
  if (entry.lazy) {
    event.stats = entry.lazy->stats();
    event.format = static_cast<int>(entry.lazy->format());
    bound = entry.lazy->bound();
    if (event.stats.link_refused) counters_.access_refused.add();  // the link binding (docs/protocol.md §7)
    if (!entry.pinned && bound && event.stats.resume) {
      staging_.pin(bound);  // granted and ended in one pass
      entry.pinned = true;
    }
    if (entry.pinned && bound) {
      // Cut (no CLOSE): the client may come back with the same token (feature resume, §7.6).
      staging_.unpin(bound->id, !event.stats.closed_by_request, now_ns(), ms_to_ns(config_.link_resume_hold_ms));
    }
  } else if (entry.upload) {
    event.upload = true;
    event.upload_stats = entry.upload->stats();
    event.format = static_cast<int>(entry.upload->format());
    if (ok && entry.upload->committed()) {
      event.message = entry.upload->note();
      committed = entry.upload->take_store();
    } else {
      staging_.abandon(id);  // nothing of a failed upload is served (its store goes with the session)
    }
  }
  counters_.sessions_active.sub();
  if (!ok) counters_.sessions_failed.add();
  state_->sessions.erase(found);  // closes the socket
  event.memory_used = staging_.budget()->used();
  if (bound) event.checkpoint = bound->id;
  sink_(event);
  if (committed) {
    std::shared_ptr<const StagedCheckpoint> published = staging_.publish(id, std::move(committed));
    ServerEvent staged;
    staged.kind = ServerEvent::Kind::kStaged;
    staged.session = id;
    staged.checkpoint = id;
    staged.peer = event.peer;
    staged.store = published->store;
    staged.memory_used = staging_.budget()->used();
    sink_(staged);
  }
  if (bound && ok && event.stats.closed_by_request && !event.stats.priority) {
    // A completed restore: the client sent CLOSE and hung up cleanly. A client that died mid-transfer (EOF
    // without CLOSE, or an error) does not use the checkpoint up, nor does a restore's second, priority
    // connection (§7.5): its main connection's CLOSE is the restore's end.
    bool retire_now = false;
    const uint64_t restores = staging_.restore_completed(bound->id, &retire_now);
    if (restores != 0) {
      ServerEvent done;
      done.kind = ServerEvent::Kind::kRestoreDone;
      done.session = id;
      done.checkpoint = bound->id;
      done.restores = restores;
      sink_(done);
      if (retire_now) {
        retire(bound->id, "after " + std::to_string(restores) + " completed restores (--staging-restores)");
      }
    }
  }
}

void PageServer::check_stalls() {
  const uint64_t now = now_ns();
  staging_.expire_holds(now);
  const uint64_t stall_limit = ms_to_ns(config_.stall_timeout_ms);
  const uint64_t idle_limit = ms_to_ns(config_.idle_timeout_ms);
  const uint64_t handshake_limit = ms_to_ns(config_.tls_handshake_timeout_ms);
  std::vector<uint64_t> slow_handshakes;
  std::vector<std::pair<uint64_t, std::string>> dropped;
  for (auto& [id, entry] : state_->sessions) {
    if (entry->handshaking()) {
      if (now - entry->started_ns > handshake_limit) slow_handshakes.push_back(id);
      continue;
    }
    // Idle: nothing received and nothing of ours pending. An upload waiting for our CLOSE ack is our wait.
    const Session* session = entry->session.get();
    const uint64_t input = session ? session->totals().bytes_in : 0;
    const bool waiting_on_us = session && session->peer_waits();
    if (input != entry->input_at_last_check || waiting_on_us) {
      entry->input_at_last_check = input;
      entry->last_input_ns = now;
    } else if (config_.idle_timeout_ms > 0 && now - entry->last_input_ns > idle_limit) {
      dropped.emplace_back(id, "idle for " + std::to_string(config_.idle_timeout_ms / 1000) + " s: the peer sent " +
                                   (input ? "nothing more" : "no request") + " and no reply was pending; session dropped (--idle-timeout)");
      continue;
    }
    if (!entry->lazy) continue;  // uploads wait on the dump, which pushes; routing waits for one header
    // Stall: a reply is pending and the peer reads (almost) nothing of it.
    const uint64_t bytes = session->totals().bytes_out;
    if (!session->reply_pending() || bytes - entry->bytes_at_last_check >= kStallProgressBytes) {
      entry->bytes_at_last_check = bytes;
      entry->last_progress_ns = now;
    } else if (now - entry->last_progress_ns > stall_limit) {
      dropped.emplace_back(id, "the peer read only " + std::to_string(bytes - entry->bytes_at_last_check) + " bytes in " +
                                   std::to_string(config_.stall_timeout_ms / 1000) +
                                   " s while a reply was pending; session dropped (--stall-timeout)");
    }
  }
  for (uint64_t id : slow_handshakes) {
    counters_.tls_failures.add();
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
    // Priority connections first (a restore's demand faults, docs/protocol.md §7.5): the drain's sessions after.
    std::stable_partition(events, events + std::max(n, 0), [this](const epoll_event& event) {
      auto found = state_->sessions.find(event.data.u64);
      return found != state_->sessions.end() && found->second->lazy && found->second->lazy->stats().priority;
    });
    for (int i = 0; i < n; i++) {
      const uint64_t token = events[i].data.u64;
      if (token == kListenToken) {
        if (listen_fd_ >= 0 && !state_->draining) accept_all();
      } else if (token == kWakeToken) {
        uint64_t count;
        (void)!read(wake_fd_, &count, sizeof count);
        run_commands();
        adopt_relays();
        if (!state_->draining && drain_ms_.load() >= 0) {
          state_->draining = true;
          stop_relays("lazyd is shutting down");
          state_->drain_deadline_ns = now_ns() + ms_to_ns(drain_ms_.load());
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
        else if (state_->relays.count(token) != 0) service_relay(token);
      }
    }
    check_stalls();
    check_relays();
    if (state_->draining) {
      if (state_->sessions.empty()) running = false;
      else if (now_ns() >= state_->drain_deadline_ns) {
        std::vector<uint64_t> ids;
        for (auto& item : state_->sessions) ids.push_back(item.first);
        for (uint64_t id : ids) end_session(id, false, "cut by shutdown: replies still unsent after the drain time");
        running = false;
      }
    }
    if (config_.single_session && state_->accepted_once && state_->sessions.empty()) running = false;
  }
  stop_relays("the page server stopped");
  {
    std::lock_guard<std::mutex> lock(commands_mutex_);
    thread_done_ = true;
  }
  adopt_relays();  // refuses what came in meanwhile
  ServerEvent stopped;
  stopped.kind = ServerEvent::Kind::kStopped;
  stopped.ok = counters_.sessions_failed.get() == 0;
  sink_(stopped);
}

// ---- Relay staging (staging/relay.h) ----

namespace {

ServerEvent relay_event(ServerEvent::Kind kind, uint64_t id, const Relay& relay) {
  ServerEvent event;
  event.kind = kind;
  event.checkpoint = id;
  event.session = id;
  event.peer = relay.peer();
  event.pages_held = relay.pages_held();
  event.pages_total = relay.pages_total();
  event.bytes = relay.bytes_held();
  event.ms = relay.elapsed_ms();
  event.demand_requests = relay.demand_requests();
  event.bulk_requests = relay.bulk_requests();
  event.short_replies = relay.short_replies();
  event.bytes_copied = relay.store()->bytes_copied();
  return event;
}

}  // namespace

uint64_t PageServer::start_relay(std::unique_ptr<Relay> relay, std::string* error, std::string* token) {
  const std::string peer = relay->peer();
  auto refuse = [&](const std::string& why) -> uint64_t {
    *error = "cannot relay the dump at " + peer + ": " + why + "; its connection was reset, so criu dump fails and resumes the tasks";
    return 0;  // the relay goes with its client: a reset
  };
  if (!config_.accept_uploads) return refuse("relay staging needs lazyd --page-server --staging");
  auto pending = std::make_shared<PendingRelay>();
  pending->relay = std::move(relay);
  std::future<PendingRelay::Result> result = pending->result.get_future();
  {
    std::lock_guard<std::mutex> lock(commands_mutex_);
    if (!thread_.joinable() || thread_done_) return refuse("the page server is not running");
    relay_commands_.push_back(pending);
  }
  wake();
  PendingRelay::Result started = result.get();
  if (started.id == 0) return refuse(started.error);
  if (token) *token = started.token;
  return started.id;
}

// Takes the relays start_relay() handed over: each becomes staged checkpoint #id from the start of its pull.
void PageServer::adopt_relays() {
  std::vector<std::shared_ptr<PendingRelay>> pending;
  bool done;
  {
    std::lock_guard<std::mutex> lock(commands_mutex_);
    pending.swap(relay_commands_);
    done = thread_done_;
  }
  for (const std::shared_ptr<PendingRelay>& command : pending) {
    if (done || state_->draining) {
      command->relay.reset();
      command->result.set_value({0, "the page server is shutting down", ""});
      continue;
    }
    const uint64_t id = state_->next_id++;
    std::string refused;
    for (PageKey key : command->relay->store()->keys()) {
      refused = staging_.admit(id, key);
      if (!refused.empty()) break;
    }
    if (!refused.empty()) {
      staging_.abandon(id);
      command->relay.reset();
      command->result.set_value({0, refused, ""});
      continue;
    }
    // Its link token, like an upload's (docs/protocol.md §7): lazyd lazy-pages binds to it and gets checksums of
    // the bytes this relay pulled. Without one (getrandom failed) the checkpoint is served to stock clients only.
    std::string token;
    if (staging_.draw_token(id) == 0) {
      char hex[2 * wire::kTokenSize + 1];
      wire::token_to_hex(*staging_.upload_token(id), hex);
      token = hex;
    }
    staging_.publish(id, command->relay->store());
    RelayEntry& entry = state_->relays[id];
    entry.relay = std::move(command->relay);
    epoll_event event{EPOLLIN, {.u64 = id}};
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, entry.relay->fd(), &event);
    entry.interest = EPOLLIN;
    command->result.set_value({id, "", token});
    // Served from now on, like a committed upload: `staged` (its pagemaps: the lazy entries), then progress.
    ServerEvent staged = relay_event(ServerEvent::Kind::kStaged, id, *entry.relay);
    staged.store = entry.relay->store();
    staged.memory_used = staging_.budget()->used();
    sink_(staged);
    relay_progress(id, entry, true);
    service_relay(id);  // the first GETs go out now (a dump with no lazy page ends here)
  }
}

void PageServer::service_relay(uint64_t id) {
  auto found = state_->relays.find(id);
  if (found == state_->relays.end()) return;
  RelayEntry& entry = found->second;
  if (entry.relay->on_ready() != Relay::Status::kPulling) {
    end_relay(id);
    return;
  }
  relay_interest(id, entry);
  relay_progress(id, entry, false);
  wake_waiters(entry, false);
}

void PageServer::relay_interest(uint64_t id, RelayEntry& entry) {
  const uint32_t interest = EPOLLIN | (entry.relay->wants_write() ? uint32_t{EPOLLOUT} : 0u);
  if (interest == entry.interest) return;
  epoll_event event{interest, {.u64 = id}};
  epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, entry.relay->fd(), &event);
  entry.interest = interest;
}


void PageServer::relay_progress(uint64_t id, RelayEntry& entry, bool force) {
  const uint64_t now = now_ns();
  const Relay& relay = *entry.relay;
  // A relay that holds its CLOSE reports the last page at once: the control plane waits for it to release.
  const bool newly_held = relay.held() && relay.pages_held() != entry.last_progress_pages;
  if (!force && !newly_held &&
      (now - entry.last_progress_ns < kRelayProgressIntervalNs || relay.pages_held() == entry.last_progress_pages)) {
    return;
  }
  entry.last_progress_ns = now;
  entry.last_progress_pages = relay.pages_held();
  ServerEvent event = relay_event(ServerEvent::Kind::kRelayProgress, id, relay);
  event.memory_used = staging_.budget()->used();
  sink_(event);
}

// A lazy session's GET waits for pages its relayed checkpoint does not hold yet: ask the relay for them, ahead
// of its bulk pull, and wake the session when they are in.
void PageServer::relay_wait(Entry& entry) {
  if (!entry.lazy->take_new_wait()) return;  // waiting already, and known
  const std::shared_ptr<const StagedCheckpoint>& bound = entry.lazy->bound();
  auto found = bound ? state_->relays.find(bound->id) : state_->relays.end();
  if (found == state_->relays.end()) {
    end_session(entry.id, false, "waits for pages of checkpoint #" + std::to_string(bound ? bound->id : 0) +
                                     " that no relay pulls");
    return;
  }
  found->second.waiters.push_back(entry.id);
  const wire::Header& get = entry.lazy->waiting_get();
  found->second.relay->demand(get.dst_id, get.vaddr, get.nr_pages);  // a failure is seen by check_relays()
  relay_interest(found->first, found->second);
}

// Runs again the sessions whose waiting GET can go on (its first page arrived; all: the relay ended).
void PageServer::wake_waiters(RelayEntry& entry, bool all) {
  if (entry.waiters.empty()) return;
  std::vector<uint64_t> waiters;
  waiters.swap(entry.waiters);
  std::vector<uint64_t> ready;
  for (uint64_t session : waiters) {
    auto found = state_->sessions.find(session);
    if (found == state_->sessions.end() || !found->second->lazy || !found->second->lazy->waiting()) continue;
    const LazySession& lazy = *found->second->lazy;
    if (all || lazy.bound()->store->pages_ready(lazy.waiting_span()) > 0) ready.push_back(session);
    else entry.waiters.push_back(session);
  }
  for (uint64_t session : ready) {
    auto found = state_->sessions.find(session);
    if (found != state_->sessions.end()) service(*found->second, EPOLLOUT);  // may wait again, for its next pages
  }
}

void PageServer::end_relay(uint64_t id) {
  auto found = state_->relays.find(id);
  if (found == state_->relays.end()) return;
  RelayEntry entry = std::move(found->second);
  state_->relays.erase(found);
  const Relay& relay = *entry.relay;
  if (relay.fd() >= 0) epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, relay.fd(), nullptr);
  const bool done = relay.status() == Relay::Status::kDone;
  ServerEvent event = relay_event(done ? ServerEvent::Kind::kRelayDone : ServerEvent::Kind::kRelayFailed, id, relay);
  event.ok = done;
  event.message = relay.error();
  event.memory_used = staging_.budget()->used();
  sink_(event);
  wake_waiters(entry, true);  // served, or refused with the store's reason
}

void PageServer::check_relays() {
  std::vector<uint64_t> ended;
  for (auto& [id, entry] : state_->relays) {
    if (entry.relay->check_timeouts() != Relay::Status::kPulling) ended.push_back(id);
    else relay_progress(id, entry, false);
  }
  for (uint64_t id : ended) end_relay(id);
}

void PageServer::abort_relay(uint64_t id, const std::string& why) {
  auto found = state_->relays.find(id);
  if (found == state_->relays.end()) return;
  found->second.relay->abort(why);
  end_relay(id);
}

void PageServer::stop_relays(const std::string& why) {
  std::vector<uint64_t> ids;
  for (auto& item : state_->relays) ids.push_back(item.first);
  for (uint64_t id : ids) abort_relay(id, why);
}

}  // namespace lazyd
