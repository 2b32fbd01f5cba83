#include "net/transport.h"

#include <cerrno>
#include <cstring>
#include <sys/socket.h>
#include <unistd.h>

namespace lazyd {

Transport::Transport(int fd, std::unique_ptr<TlsSession> tls) : fd_(fd), tls_(std::move(tls)) {}

Transport::~Transport() {
  if (tls_) tls_->bye();  // close_notify, without waiting for the peer's (as criu, docs/protocol.md §1.9)
  tls_.reset();
  if (fd_ >= 0) close(fd_);
}

ssize_t Transport::recv(void* buf, size_t len) {
  if (!pushback_.empty()) {
    const size_t n = std::min(len, pushback_.size());
    memcpy(buf, pushback_.data(), n);
    pushback_.erase(pushback_.begin(), pushback_.begin() + static_cast<ptrdiff_t>(n));
    return static_cast<ssize_t>(n);
  }
  if (tls_) return tls_->recv(buf, len);
  for (;;) {
    const ssize_t n = ::recv(fd_, buf, len, MSG_DONTWAIT);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  }
}

ssize_t Transport::send(const void* buf, size_t len, int flags) {
  if (tls_) return tls_->send(buf, len);
  for (;;) {
    const ssize_t n = ::send(fd_, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL | flags);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  }
}

bool Transport::buffered() const { return !pushback_.empty() || (tls_ && tls_->pending() > 0); }

void Transport::unread(const void* data, size_t len) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  pushback_.insert(pushback_.begin(), bytes, bytes + len);
}

std::string Transport::error() const { return tls_ ? tls_->error() : std::string(); }

}  // namespace lazyd
