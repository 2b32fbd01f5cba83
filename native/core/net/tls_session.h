// One TLS connection over a non-blocking TCP socket (docs/protocol.md §1.9): a handshake driven step by step (so the
// page server's epoll thread never blocks on a slow or hostile peer), then record I/O.
//
// Record boundaries matter to CRIU's receivers (§1.9, §6.15): it reads each header with ONE record read and
// writes each payload record in full to a pipe. send() therefore puts its bytes in records of their own and never
// joins them with the bytes of another call: callers send a header in one call and page bytes in others.
#pragma once

#include <gnutls/gnutls.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>
#include <sys/types.h>

#include "net/tls_context.h"

namespace lazyd {

// True when bytes look like the start of a TLS ClientHello record (content type 22, version 3.x): a TLS peer
// talking to a plain page server.
bool looks_like_tls(const uint8_t* bytes, size_t len);

class TlsSession {
 public:
  enum class Role { kClient, kServer };

  // Does not take the fd. nullptr on failure (*error says why).
  static std::unique_ptr<TlsSession> create(std::shared_ptr<const TlsContext> context, int fd, Role role,
                                            std::string* error);
  ~TlsSession();
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  // One step of the handshake, peer check included. 0: done; -EAGAIN: call again when the socket is ready
  // (handshake_wants_write() says for what); -EPROTO: failed, error() names the cause.
  int handshake();
  bool handshake_wants_write() const;
  bool established() const { return established_; }

  // Bytes (> 0), 0 at the end of the stream (close_notify, or the TCP connection closed), -EAGAIN, or -EPROTO /
  // -errno (error() says why).
  ssize_t recv(void* buf, size_t len);
  // Sends up to one record of buf (at most max_record() bytes) and returns how many bytes it took, or -EAGAIN
  // (call again with the same bytes once writable), or an error. Never merges bytes of two calls in one record.
  ssize_t send(const void* buf, size_t len);
  size_t max_record() const;
  // Decrypted bytes waiting inside the session (epoll does not see them).
  size_t pending() const;
  // Sends close_notify without waiting for the peer's (best effort, non-blocking).
  void bye();

  const std::string& error() const { return error_; }
  // Once established: whether the peer's (verified) certificate names one of these (a DNS or IP subjectAltName,
  // or the CN when it has none; GnuTLS's hostname rules, wildcards included). Empty list: false.
  bool peer_named_one_of(const std::vector<std::string>& names) const;
  // The peer certificate's names for messages: "DNS:client.example, IP:10.0.0.2" (or its subject DN).
  std::string peer_names() const;
  // "TLS1.3 / ECDHE-RSA / AES-256-GCM" once established.
  std::string description() const;

 private:
  TlsSession() = default;
  int fail(std::string message);
  std::string alert_text() const;

  std::shared_ptr<const TlsContext> context_;
  gnutls_session_t session_ = nullptr;
  int fd_ = -1;
  Role role_ = Role::kServer;
  bool established_ = false;
  bool hello_seen_ = false;  // server: the first byte was a TLS handshake record
  size_t send_pending_ = 0;  // a send() that returned -EAGAIN: its length, flushed by the next call
  std::string error_;
};

}  // namespace lazyd
