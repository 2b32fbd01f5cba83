// How a page-server connection's bytes travel: over the plain socket, or through a TLS session (docs/protocol.md
// §1.9). Sessions read and write headers and small replies through it; for page bytes they ask zero_copy():
// on a plain socket they keep sendfile()/splice() (no copy through user space), under TLS they read the pages
// into a buffer and send() them in records of their own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <sys/types.h>
#include <vector>

#include "net/tls_session.h"

namespace lazyd {

class Transport {
 public:
  // Takes the fd (closed by the destructor) and, for TLS, an established session over it.
  explicit Transport(int fd, std::unique_ptr<TlsSession> tls = nullptr);
  ~Transport();
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  int fd() const { return fd_; }
  bool zero_copy() const { return !tls_; }
  bool tls() const { return tls_ != nullptr; }
  // The established TLS session (its peer's certificate), or nullptr on a plain socket.
  const TlsSession* tls_session() const { return tls_.get(); }

  // Bytes (> 0), 0 at EOF, -EAGAIN, or -errno / -EPROTO (error() names a TLS failure). Non-blocking.
  ssize_t recv(void* buf, size_t len);
  // Bytes taken (> 0), -EAGAIN, or -errno. Plain: send(MSG_DONTWAIT | MSG_NOSIGNAL | flags) (flags: MSG_MORE).
  // TLS: at most one record of this call's bytes; after -EAGAIN call again with the same bytes.
  ssize_t send(const void* buf, size_t len, int flags = 0);
  // Bytes already taken off the socket but not yet returned by recv() (decrypted TLS data, unread() bytes):
  // epoll does not wake up for them, so a session that paused reading must look here before it waits.
  bool buffered() const;
  // Puts bytes back in front of the stream (routing reads a connection's first command; TLS cannot peek).
  void unread(const void* data, size_t len);
  // The TLS failure behind a -EPROTO, or "".
  std::string error() const;

 private:
  int fd_;
  std::unique_ptr<TlsSession> tls_;
  std::vector<uint8_t> pushback_;
};

}  // namespace lazyd
