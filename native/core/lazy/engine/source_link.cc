#include "lazy/engine/source_link.h"

#include <sys/epoll.h>

#include <cstring>

#include "util/clock.h"

namespace lazyd::engine {

LocalPageSource* SourceLink::prepare_local() {
  if (core_.cfg.source != FaultEngineConfig::Source::kLocal) return nullptr;
  auto local = std::make_unique<LocalPageSource>(core_.ps);
  LocalPageSource* runs = local.get();
  source_ = std::move(local);
  return runs;
}

std::string SourceLink::peer() const { return core_.cfg.address + ":" + std::to_string(core_.cfg.port); }

void SourceLink::connect() {
  if (ready_ || handshaking_) return;
  FaultEngineConfig& cfg = core_.cfg;
  if (cfg.source != FaultEngineConfig::Source::kRemote) {
    connected("local");
    return;
  }
  auto client = std::make_unique<PageClient>(cfg.format, core_.ps);
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
  if (!cfg.link_token.empty()) {
    // A lazyd page server wrote the images' lazyd-link.json: open with HELLO (docs/protocol.md §7).
    wire::Hello hello;
    hello.features = wire::kFeatureBind | (cfg.link_checksum ? wire::kFeatureChecksum : 0);
    if (!wire::token_from_hex(cfg.link_token.data(), cfg.link_token.size(), &hello.token)) {
      core_.fail("the link token of lazyd-link.json is not 32 hex digits");
      return;
    }
    client->open_with_hello(hello);
  }
  client_ = client.get();
  source_ = std::move(client);
  if (!cfg.tls) {
    core_.epoll_add(source_->fd(), EPOLLIN | EPOLLRDHUP, kTagSource);
    connected("page-server " + peer());
    return;
  }
  handshaking_ = true;
  handshake_started_ns_ = now_ns();
  wants_write_ = client_->tls_wants_write();
  core_.epoll_add(source_->fd(), (wants_write_ ? EPOLLOUT : EPOLLIN) | EPOLLRDHUP, kTagSource);
  on_handshake_ready();
}

void SourceLink::on_handshake_ready() {
  const int rc = client_->tls_handshake();
  if (rc == -EAGAIN) {
    const bool want_write = client_->tls_wants_write();
    if (want_write != wants_write_) {
      wants_write_ = want_write;
      core_.epoll_mod(source_->fd(), (want_write ? EPOLLOUT : EPOLLIN) | EPOLLRDHUP, kTagSource);
    }
    return;
  }
  handshaking_ = false;
  if (rc < 0) {
    core_.counters.tls_failures.add();
    core_.fail(client_->error());
    return;
  }
  wants_write_ = false;
  core_.epoll_mod(source_->fd(), EPOLLIN | EPOLLRDHUP, kTagSource);
  connected("page-server " + peer() + " over " + client_->tls_description());
}

void SourceLink::handshake_timed_out() {
  handshaking_ = false;
  core_.counters.tls_failures.add();
  client_->tls_timed_out(core_.cfg.connect_timeout_ms);
  core_.fail(client_->error());
}

void SourceLink::connected(const std::string& where) {
  ready_ = true;
  EngineEvent e;
  e.kind = EngineEvent::Kind::kSourceConnected;
  e.message = where;
  core_.emit(std::move(e));
}

int SourceLink::submit(const PageRequest& request) {
  const int rc = source_->submit(request);
  if (rc == 0) update_interest();
  return rc;
}

int SourceLink::pump(std::vector<PageReply>* done) { return source_->pump(done); }

void SourceLink::update_interest() {
  if (!source_ || source_->fd() < 0 || handshaking_) return;
  const bool want = source_->wants_write();
  if (want == wants_write_) return;
  wants_write_ = want;
  core_.epoll_mod(source_->fd(), EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0u), kTagSource);
}

}  // namespace lazyd::engine
