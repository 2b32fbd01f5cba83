// sd_notify_send() against real AF_UNIX datagram sockets: a path name and an abstract ('@') name.
#include "kernel/sd_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <string>

#include "check.h"

using lazyd::sd_notify_send;

static int bind_dgram(const std::string& name) {
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, name.data(), name.size());
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
  if (name[0] == '@') addr.sun_path[0] = '\0';
  else len += 1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), len) < 0) return -errno;
  return fd;
}

static std::string receive(int fd) {
  char buf[512];
  ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
  return n < 0 ? std::string("<nothing>") : std::string(buf, static_cast<size_t>(n));
}

int main() {
  const std::string path = "/tmp/lazyd-sd-notify-test-" + std::to_string(getpid());
  unlink(path.c_str());
  int fd = bind_dgram(path);
  CHECK(fd >= 0);
  CHECK(sd_notify_send(path, "READY=1\nSTATUS=serving") == 0);
  CHECK(receive(fd) == "READY=1\nSTATUS=serving");
  close(fd);
  unlink(path.c_str());
  // Nobody listening any more: the caller gets the errno.
  CHECK(sd_notify_send(path, "READY=1") == -ENOENT);

  const std::string abstract = "@lazyd-sd-notify-test-" + std::to_string(getpid());
  fd = bind_dgram(abstract);
  CHECK(fd >= 0);
  CHECK(sd_notify_send(abstract, "STOPPING=1") == 0);
  CHECK(receive(fd) == "STOPPING=1");
  close(fd);

  CHECK(sd_notify_send("", "READY=1") == -EINVAL);
  CHECK(sd_notify_send("relative/name", "READY=1") == -EINVAL);
  CHECK(sd_notify_send("/" + std::string(200, 'x'), "READY=1") == -EINVAL);
  return check_report();
}
