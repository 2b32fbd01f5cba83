#include "kernel/sd_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>

namespace lazyd {

int sd_notify_send(const std::string& socket_path, const std::string& text) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() > sizeof addr.sun_path) return -EINVAL;
  if (socket_path[0] != '@' && socket_path[0] != '/') return -EINVAL;
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socket_path.size());
  if (socket_path[0] == '@') {
    addr.sun_path[0] = '\0';  // abstract: the name is the bytes after the NUL, not NUL-terminated
  } else if (socket_path.size() == sizeof addr.sun_path) {
    return -EINVAL;  // no room for the terminating NUL
  } else {
    len += 1;
  }
  const int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int rc = 0;
  for (;;) {
    const ssize_t n = sendto(fd, text.data(), text.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr), len);
    if (n >= 0) break;
    if (errno == EINTR) continue;
    rc = -errno;
    break;
  }
  close(fd);
  return rc;
}

}  // namespace lazyd
