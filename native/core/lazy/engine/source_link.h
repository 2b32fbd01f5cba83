// The fault engine's page source (lazy/page_client.h): the local pages images, or a page server reached over
// TCP — connected once every task is handed over (docs/protocol.md §4.2), as criu does. Under --tls the handshake runs step by
// step from the engine's epoll loop (on_handshake_ready), like the page server's side of it, so the restore's
// messages and the uffds keep being read while the server is slow to answer; timers bound it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lazy/engine/core.h"
#include "lazy/page_client.h"

namespace lazyd::engine {

class SourceLink {
 public:
  explicit SourceLink(EngineCore& core) : core_(core) {}
  SourceLink(const SourceLink&) = delete;
  SourceLink& operator=(const SourceLink&) = delete;

  // Local restores: the source, for the restore intake to add each task's runs to. Null for a remote one.
  LocalPageSource* prepare_local();
  // Every task is handed over: connect (remote) or just start (local). kSourceConnected once usable.
  void connect();
  // --tls: the socket is ready for the next step of the handshake.
  void on_handshake_ready();
  // --tls: the handshake did not finish within connect_timeout_ms (timers.cc).
  void handshake_timed_out();

  bool ready() const { return ready_; }            // requests may be sent
  bool connecting() const { return handshaking_; }  // --tls: the handshake is under way
  uint64_t handshake_started_ns() const { return handshake_started_ns_; }
  // Ready, and it answers inside submit() (the local images).
  bool synchronous() const { return ready_ && source_->fd() < 0; }

  // Once ready: the PageSource calls, with the socket's epoll interest kept up to date.
  int submit(const PageRequest& request);
  int pump(std::vector<PageReply>* done);
  void update_interest();
  size_t in_flight() const { return source_->in_flight(); }
  int64_t stalled_ms() const { return source_->stalled_ms(); }
  int close(int32_t* status) { return source_->close(core_.cfg.close_timeout_ms, status); }
  const std::string& error() const { return source_->error(); }
  bool exists() const { return source_ != nullptr; }
  uint64_t bytes_received() const { return source_->bytes_received(); }
  uint64_t bytes_sent() const { return source_->bytes_sent(); }
  uint64_t checksum_mismatches() const { return source_->checksum_mismatches(); }
  std::string last_checksum_mismatch() const { return source_->last_checksum_mismatch(); }

 private:
  std::string peer() const;
  void connected(const std::string& where);

  EngineCore& core_;
  std::unique_ptr<PageSource> source_;
  PageClient* client_ = nullptr;  // source_, when remote
  bool ready_ = false;
  bool handshaking_ = false;
  uint64_t handshake_started_ns_ = 0;
  bool wants_write_ = false;  // the socket's epoll interest includes EPOLLOUT
};

}  // namespace lazyd::engine
