#include "lazy/engine/source_link.h"

#include <sys/epoll.h>

#include <algorithm>
#include <cstring>

#include "util/clock.h"

namespace lazyd::engine {

namespace {

constexpr int kFirstBackoffMs = 50;  // between reconnect attempts: doubling from this ...
constexpr int kMaxBackoffMs = 1000;  // ... up to this

}  // namespace

SourceLink::SourceLink(EngineCore& core) : core_(core) {
  main_.tag = kTagSource;
  prio_.tag = kTagPriority;
  prio_.name = " (priority connection)";
}

LocalPageSource* SourceLink::prepare_local() {
  if (core_.cfg.source != FaultEngineConfig::Source::kLocal) return nullptr;
  local_ = std::make_unique<LocalPageSource>(core_.ps);
  return local_.get();
}

std::string SourceLink::peer() const { return core_.cfg.address + ":" + std::to_string(core_.cfg.port); }

wire::Hello SourceLink::hello(uint64_t features, bool* ok) {
  wire::Hello h;
  h.features = features;
  const std::string& token = core_.cfg.link_token;
  *ok = wire::token_from_hex(token.data(), token.size(), &h.token);
  return h;
}

void SourceLink::watch(Channel& ch, uint32_t events) {
  const int fd = ch.client->fd();
  if (core_.epoll_add(fd, events | EPOLLRDHUP, ch.tag) == -EEXIST) core_.epoll_mod(fd, events | EPOLLRDHUP, ch.tag);
  ch.wants_write = (events & EPOLLOUT) != 0;
}

void SourceLink::connect() {
  if (ready_ || main_.state != State::kOff) return;
  FaultEngineConfig& cfg = core_.cfg;
  if (cfg.source != FaultEngineConfig::Source::kRemote) {
    connected("local");
    return;
  }
  // The first connection is made at once (nothing runs yet: the restore waits for its tasks' pages).
  auto client = std::make_unique<PageClient>(cfg.format, core_.ps);
  can_reconnect_ = cfg.ps_socket < 0;
  int rc = cfg.ps_socket >= 0 ? client->adopt(cfg.ps_socket) : client->connect(cfg.address, cfg.port,
                                                                                 cfg.connect_timeout_ms);
  if (cfg.ps_socket >= 0) cfg.ps_socket = -1;
  if (rc == 0 && cfg.tls) {
    rc = client->start_tls(cfg.tls, peer());
    if (rc < 0) core_.counters.tls_failures.add();
  }
  if (rc < 0) {
    core_.fail(client->error().empty() ? std::string("cannot use the page server socket: ") + strerror(-rc)
                                       : client->error());
    return;
  }
  priority_off_ = !cfg.link_priority || !can_reconnect_ || cfg.link_token.empty();
  if (!cfg.link_token.empty()) {
    // A lazyd page server wrote the images' lazyd-link.json: open with HELLO (docs/protocol.md §7).
    const bool resume = cfg.reconnect_timeout_ms > 0 && can_reconnect_;
    main_.features = wire::kFeatureBind | (cfg.link_checksum ? wire::kFeatureChecksum : 0) |
                     (resume ? wire::kFeatureResume : 0);
    prio_.features = main_.features | wire::kFeaturePriority;
    bool ok = false;
    const wire::Hello h = hello(main_.features, &ok);
    if (!ok) {
      core_.fail("the link token of lazyd-link.json is not 32 hex digits");
      return;
    }
    client->open_with_hello(h);
  }
  main_.client = std::move(client);
  if (!cfg.tls) {
    watch(main_, EPOLLIN);
    main_.state = State::kUp;
    connected("page-server " + peer());
    return;
  }
  main_.state = State::kHandshaking;
  main_.step_ns = now_ns();
  watch(main_, main_.client->tls_wants_write() ? EPOLLOUT : EPOLLIN);
  handshake_step(main_);
}

void SourceLink::connected(const std::string& where) {
  ready_ = true;
  EngineEvent e;
  e.kind = EngineEvent::Kind::kSourceConnected;
  e.message = where;
  core_.emit(std::move(e));
  maybe_open_priority();
}

void SourceLink::open(Channel& ch) {
  const FaultEngineConfig& cfg = core_.cfg;
  if (ch.client) {
    ch.old_received += ch.client->bytes_received();
    ch.old_sent += ch.client->bytes_sent();
    ch.old_mismatches += ch.client->checksum_mismatches();
    if (ch.client->fd() >= 0) core_.epoll_del(ch.client->fd());
  }
  ch.client = std::make_unique<PageClient>(cfg.format, core_.ps);
  if (ch.outage_ns) ch.client->set_reconnected();
  ch.step_ns = now_ns();
  const int rc = ch.client->connect_start(cfg.address, cfg.port);
  if (rc < 0 && rc != -EINPROGRESS) {
    if (!lost(ch)) fail(ch);
    return;
  }
  bool ok = false;
  ch.client->open_with_hello(hello(ch.features, &ok));
  if (rc == -EINPROGRESS) {
    ch.state = State::kConnecting;
    watch(ch, EPOLLOUT);
    return;
  }
  watch(ch, EPOLLIN);
  if (cfg.tls) {
    ch.state = State::kConnecting;  // the TLS handshake starts from on_socket's step
    on_socket(ch.tag);
    return;
  }
  up(ch);
}

bool SourceLink::on_socket(uint64_t tag) {
  Channel& ch = channel(tag);
  switch (ch.state) {
    case State::kUp: return true;
    case State::kConnecting: {
      if (ch.client->connect_finish() < 0) {
        if (!lost(ch)) fail(ch);
        return false;
      }
      if (!core_.cfg.tls) {
        up(ch);
        return false;
      }
      if (ch.client->start_tls(core_.cfg.tls, peer()) < 0) {
        if (!lost(ch)) fail(ch);
        return false;
      }
      ch.state = State::kHandshaking;
      ch.step_ns = now_ns();
      handshake_step(ch);
      return false;
    }
    case State::kHandshaking: handshake_step(ch); return false;
    default: return false;
  }
}

void SourceLink::handshake_step(Channel& ch) {
  const int rc = ch.client->tls_handshake();
  if (rc == -EAGAIN) {
    const bool want_write = ch.client->tls_wants_write();
    if (want_write != ch.wants_write) watch(ch, want_write ? EPOLLOUT : EPOLLIN);
    return;
  }
  if (rc < 0) {
    // The first connection: the peer's TLS is wrong (counted). A reconnect: the link may be cut again.
    if (&ch == &main_ && !ready_) {
      core_.counters.tls_failures.add();
      ch.state = State::kOff;
      core_.fail(ch.client->error());
      return;
    }
    if (!lost(ch)) fail(ch);
    return;
  }
  if (&ch == &main_ && !ready_) {
    ch.state = State::kUp;
    watch(ch, EPOLLIN);
    connected("page-server " + peer() + " over " + ch.client->tls_description());
    return;
  }
  up(ch);
}

void SourceLink::up(Channel& ch) {
  ch.state = State::kUp;
  watch(ch, EPOLLIN);
  std::vector<PageRequest> waiting = std::move(ch.resend);
  ch.resend.clear();
  for (const PageRequest& request : waiting) {
    if (ch.client->submit(request) < 0) {
      // The request is in the client's queue all the same: a cut takes it back with the rest.
      if (!lost(ch)) fail(ch);
      return;
    }
  }
  if (ch.outage_ns) ch.asked_again += waiting.size();
  update_interest();
}

bool SourceLink::lost(Channel& ch) {
  const FaultEngineConfig& cfg = core_.cfg;
  PageClient& client = *ch.client;
  const bool resume = ch.resumable && client.link_lost() && cfg.reconnect_timeout_ms > 0 && can_reconnect_ &&
                      !closing_;
  if (!resume) {
    // The priority connection adds nothing the main one cannot carry: give it up rather than the restore —
    // unless the bytes it brought were wrong (a checksum failing twice, a reply out of order: the policy).
    if (&ch == &prio_ && (client.link_lost() || !client.hello_granted())) {
      drop_priority("the priority connection to the page server failed (" + client.error() +
                    "): demand faults go on the main connection");
      return true;
    }
    return false;
  }
  const uint64_t now = now_ns();
  std::vector<PageRequest> again = client.take_unanswered();
  again.insert(again.end(), ch.resend.begin(), ch.resend.end());
  ch.resend = std::move(again);
  if (client.fd() >= 0) core_.epoll_del(client.fd());
  ch.old_received += client.bytes_received();
  ch.old_sent += client.bytes_sent();
  ch.old_mismatches += client.checksum_mismatches();
  const std::string why = client.error();
  ch.client.reset();  // a reset, as every end but a CLOSE
  ch.state = State::kDown;
  if (!ch.outage_ns) {
    ch.outage_ns = now;
    ch.cut_reason = why;
    ch.backoff_ms = 0;
    ch.asked_again = 0;
    reconnects_++;
    core_.counters.reconnects.add();
    core_.warn("the link to the page server " + peer() + " was cut" + ch.name + " (" + why + "): reconnecting, " +
               std::to_string(ch.resend.size()) + " request(s) to ask again (--reconnect-timeout " +
               std::to_string(cfg.reconnect_timeout_ms / 1000) + " s)");
  }
  ch.cut_reason = ch.cut_reason.empty() ? why : ch.cut_reason;
  ch.retry_ns = now + ms_to_ns(ch.backoff_ms);
  ch.backoff_ms = ch.backoff_ms == 0 ? kFirstBackoffMs : std::min(ch.backoff_ms * 2, kMaxBackoffMs);
  last_error_of_[&ch == &prio_] = why;  // for the message should the outage outlast --reconnect-timeout
  return true;
}

void SourceLink::drop_priority(const std::string& why) {
  if (priority_off_ && !prio_.client) return;
  priority_off_ = true;
  std::vector<PageRequest> again;
  if (prio_.client) {
    again = prio_.client->take_unanswered();
    prio_.old_received += prio_.client->bytes_received();
    prio_.old_sent += prio_.client->bytes_sent();
    prio_.old_mismatches += prio_.client->checksum_mismatches();
    if (prio_.client->fd() >= 0) core_.epoll_del(prio_.client->fd());
    prio_.client.reset();
  }
  again.insert(again.end(), prio_.resend.begin(), prio_.resend.end());
  prio_.resend.clear();
  prio_.state = State::kOff;
  prio_.outage_ns = 0;
  if (!why.empty()) core_.warn(why);
  for (const PageRequest& request : again) {
    if (submit(request, false) < 0) return;  // the main connection failed: error_ says why
  }
}

// The priority connection is opened as soon as the main one is up, not after its HELLO is answered: lazyd-link.json
// said the server is lazyd, and the restore's first faults come one round trip after another (the rseq area, the
// threads, the first steps after RSTF), so a second connection made only then was not ready for them at 5 ms RTT.
// A server that refuses it or grants no feature priority leaves one connection, as before (lost(), pump()).
void SourceLink::maybe_open_priority() {
  if (priority_off_ || prio_.state != State::kOff || prio_.client || main_.state != State::kUp || closing_) return;
  open(prio_);
}

int SourceLink::fail(Channel& ch) {
  if (error_.empty()) error_ = (ch.client ? ch.client->error() : std::string("the page server connection failed")) + ch.name;
  if (!core_.finished) core_.fail("page server: " + error_);
  return -EPIPE;
}

bool SourceLink::priority_up() const {
  return prio_.state == State::kUp && prio_.client && prio_.client->hello_granted() &&
         (prio_.client->granted_features() & wire::kFeaturePriority) != 0;
}

int SourceLink::submit(const PageRequest& request, bool urgent) {
  if (local_) return local_->submit(request) < 0 ? (error_ = local_->error(), -EIO) : 0;
  Channel* ch = urgent && priority_up() ? &prio_ : &main_;
  if (ch->state != State::kUp) {
    ch->resend.push_back(request);  // asked once the connection is back
    return 0;
  }
  if ((held_ ? ch->client->queue(request) : ch->client->submit(request)) < 0) {
    if (!lost(*ch)) return fail(*ch);
    return 0;
  }
  if (!held_) update_interest();
  return 0;
}

int SourceLink::release() {
  held_ = false;
  if (local_) return 0;
  for (Channel* ch : {&prio_, &main_}) {
    if (ch->state != State::kUp || !ch->client || !ch->client->wants_write()) continue;
    if (ch->client->send_queued() < 0 && !lost(*ch)) return fail(*ch);
  }
  update_interest();
  return 0;
}

int SourceLink::pump(std::vector<PageReply>* done) {
  const int rc = pump_priority(done);
  return rc < 0 ? rc : pump_main(done);
}

int SourceLink::pump_priority(std::vector<PageReply>* done) {
  if (local_ || prio_.state != State::kUp || core_.finished) return 0;
  if (pump_channel(prio_, done) < 0) return -EPIPE;
  update_interest();
  return 0;
}

int SourceLink::pump_main(std::vector<PageReply>* done) {
  if (local_) return local_->pump(done);
  if (main_.state == State::kUp && !core_.finished && pump_channel(main_, done) < 0) return -EPIPE;
  maybe_open_priority();
  update_interest();
  return 0;
}

int SourceLink::pump_channel(Channel& channel, std::vector<PageReply>* done) {
  Channel* ch = &channel;
  const size_t before = done->size();
  const uint64_t received = ch->client->bytes_received();
  if (ch == &main_) ch->client->set_read_limit(main_read_left_);
  const int rc = ch->client->pump(done);
  if (ch == &main_) main_read_left_ -= std::min<uint64_t>(main_read_left_, ch->client->bytes_received() - received);
  const uint64_t mismatches = ch->client->checksum_mismatches();
  if (mismatches && !ch->client->last_checksum_mismatch().empty()) last_mismatch_ = ch->client->last_checksum_mismatch();
  if (rc < 0) {
    if (!lost(*ch)) return fail(*ch);
    return 1;
  }
  if (ch == &prio_ && prio_.client->hello_granted() && !(prio_.client->granted_features() & wire::kFeaturePriority)) {
    drop_priority("");  // a lazyd page server without feature priority: one connection, as before
    return 1;
  }
  if (ch->client->hello_granted() && (ch->client->granted_features() & wire::kFeatureResume)) ch->resumable = true;
  if (ch->outage_ns && ch->client->hello_granted() && (done->size() > before || ch->client->in_flight() == 0)) {
    core_.warn("reconnected to the page server " + peer() + ch->name + " after " +
               std::to_string((now_ns() - ch->outage_ns) / 1000000) + " ms; " + std::to_string(ch->asked_again) +
               " request(s) asked again");
    ch->outage_ns = 0;
    ch->backoff_ms = 0;
    ch->cut_reason.clear();
  }
  return 0;
}

void SourceLink::update_interest() {
  for (Channel* ch : {&main_, &prio_}) {
    if (ch->state != State::kUp || !ch->client || ch->client->fd() < 0) continue;
    const bool want = ch->client->wants_write();
    if (want == ch->wants_write) continue;
    ch->wants_write = want;
    core_.epoll_mod(ch->client->fd(), EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0u), ch->tag);
  }
}

bool SourceLink::connecting() const {
  if (local_) return false;
  for (const Channel* ch : {&main_, &prio_}) {
    if (ch->state == State::kConnecting || ch->state == State::kHandshaking || ch->state == State::kDown) return true;
    if (ch->outage_ns || (ch->state == State::kUp && ch->client->hello_pending())) return true;
  }
  return false;
}

size_t SourceLink::in_flight() const {
  if (local_) return local_->in_flight();
  size_t n = 0;
  for (const Channel* ch : {&main_, &prio_}) n += ch->resend.size() + (ch->client ? ch->client->in_flight() : 0);
  return n;
}

int64_t SourceLink::stalled_ms() const {
  int64_t worst = 0;
  for (const Channel* ch : {&main_, &prio_}) {
    if (ch->state == State::kUp && !(ch->resumable && core_.cfg.reconnect_timeout_ms > 0 && can_reconnect_)) {
      worst = std::max(worst, ch->client->stalled_ms());
    }
  }
  return worst;
}

int SourceLink::next_timeout_ms(uint64_t now) const {
  const FaultEngineConfig& cfg = core_.cfg;
  int64_t timeout = -1;
  auto at = [&](uint64_t deadline_ns) {
    const int64_t ms = deadline_ns <= now ? 0 : static_cast<int64_t>((deadline_ns - now + 999999) / 1000000);
    if (timeout < 0 || ms + 1 < timeout) timeout = ms + 1;
  };
  for (const Channel* ch : {&main_, &prio_}) {
    if ((ch->state == State::kConnecting || ch->state == State::kHandshaking) && cfg.connect_timeout_ms > 0) {
      at(ch->step_ns + ms_to_ns(cfg.connect_timeout_ms));
    }
    if (ch->state == State::kDown) at(ch->retry_ns);
    if (ch->outage_ns) at(ch->outage_ns + ms_to_ns(cfg.reconnect_timeout_ms));
    if (ch->state == State::kUp && ch->resumable && cfg.stall_timeout_ms > 0 && ch->client->in_flight() > 0) {
      at(now + ms_to_ns(std::max(cfg.stall_timeout_ms / 4, 1)));
    }
  }
  return timeout > INT32_MAX ? INT32_MAX : static_cast<int>(timeout);
}

void SourceLink::check_deadlines(uint64_t now) {
  const FaultEngineConfig& cfg = core_.cfg;
  for (Channel* ch : {&main_, &prio_}) {
    if (core_.finished) return;
    if (ch->outage_ns && now - ch->outage_ns > ms_to_ns(cfg.reconnect_timeout_ms)) {
      const std::string last = last_error_of_[ch == &prio_];
      if (ch == &prio_) {
        drop_priority("the priority connection to the page server was not back within --reconnect-timeout (" + last +
                      "): demand faults go on the main connection");
        continue;
      }
      error_ = "the link to the page server " + peer() + " was cut (" + ch->cut_reason + ") and is not back within " +
               "--reconnect-timeout " + std::to_string(cfg.reconnect_timeout_ms / 1000) + " s (last: " + last + ")";
      core_.fail("page server: " + error_);
      return;
    }
    switch (ch->state) {
      case State::kConnecting:
      case State::kHandshaking:
        if (cfg.connect_timeout_ms > 0 && now - ch->step_ns > ms_to_ns(cfg.connect_timeout_ms)) {
          if (ch == &main_ && !ready_) {  // the first TLS handshake
            ch->state = State::kOff;
            core_.counters.tls_failures.add();
            ch->client->tls_timed_out(cfg.connect_timeout_ms);
            core_.fail(ch->client->error());
            return;
          }
          ch->client->lost("the page server did not " +
                           std::string(ch->state == State::kConnecting ? "accept the connection" : "finish the TLS handshake") +
                           " within " + std::to_string(cfg.connect_timeout_ms) + " ms");
          if (!lost(*ch)) fail(*ch);
        }
        break;
      case State::kDown:
        if (now >= ch->retry_ns) open(*ch);
        break;
      case State::kUp:
        if (ch->resumable && cfg.stall_timeout_ms > 0 && ch->client->in_flight() > 0 &&
            ch->client->stalled_ms() > cfg.stall_timeout_ms) {
          ch->client->lost("the page server sent nothing for " + std::to_string(ch->client->stalled_ms()) + " ms with " +
                           std::to_string(ch->client->in_flight()) + " request(s) outstanding (--stall-timeout)");
          if (!lost(*ch)) fail(*ch);
        }
        break;
      default: break;
    }
  }
}

int SourceLink::close(int32_t* status) {
  closing_ = true;
  if (local_) return local_->close(core_.cfg.close_timeout_ms, status);
  // The priority connection first: the main one's CLOSE is the restore's end (the server counts it).
  // Every page is in by now: a priority connection that does not answer its CLOSE costs nothing but a warning.
  if (prio_.state == State::kUp) {
    int32_t ignored = 0;
    if (prio_.client->close(core_.cfg.close_timeout_ms, &ignored) < 0) {
      core_.warn("closing the priority connection to the page server failed: " + prio_.client->error());
    }
    prio_.state = State::kOff;
  }
  prio_.client.reset();
  if (main_.state != State::kUp) return 0;
  const int rc = main_.client->close(core_.cfg.close_timeout_ms, status);
  if (rc < 0) error_ = main_.client->error();
  return rc;
}

uint64_t SourceLink::bytes_received() const {
  if (local_) return local_->bytes_received();
  uint64_t n = 0;
  for (const Channel* ch : {&main_, &prio_}) n += ch->old_received + (ch->client ? ch->client->bytes_received() : 0);
  return n;
}

uint64_t SourceLink::bytes_sent() const {
  if (local_) return local_->bytes_sent();
  uint64_t n = 0;
  for (const Channel* ch : {&main_, &prio_}) n += ch->old_sent + (ch->client ? ch->client->bytes_sent() : 0);
  return n;
}

uint64_t SourceLink::checksum_mismatches() const {
  uint64_t n = 0;
  for (const Channel* ch : {&main_, &prio_}) n += ch->old_mismatches + (ch->client ? ch->client->checksum_mismatches() : 0);
  return n;
}

}  // namespace lazyd::engine
