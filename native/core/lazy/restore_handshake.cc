#include "lazy/restore_handshake.h"

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "wire/wire.h"

namespace lazyd::handshake {
namespace {

// criu passes offsetof(sun_path) + strlen(path): no trailing NUL, never abstract (docs/protocol.md §3.1).
int make_address(const std::string& path, sockaddr_un* addr, socklen_t* len) {
  if (path.empty() || path.size() >= sizeof addr->sun_path) return -ENAMETOOLONG;
  std::memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  std::memcpy(addr->sun_path, path.data(), path.size());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  return 0;
}

int send_all(int sock, const void* data, size_t len) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (len > 0) {
    ssize_t n = send(sock, p, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        pollfd pfd{sock, POLLOUT, 0};
        poll(&pfd, 1, 1000);
        continue;
      }
      return -errno;
    }
    p += n;
    len -= static_cast<size_t>(n);
  }
  return 0;
}

}  // namespace

int enable_passcred(int fd) {
  int on = 1;
  return setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) < 0 ? -errno : 0;
}

int listen_socket(const std::string& work_dir, std::string* path_out) {
  const std::string dir = work_dir.empty() ? "." : work_dir;
  const std::string path = dir + "/" + kSocketName;
  if (path_out) *path_out = path;

  int dirfd = -1;
  std::string bind_path = path;
  sockaddr_un addr;
  socklen_t addr_len = 0;
  if (make_address(bind_path, &addr, &addr_len) < 0) {
    dirfd = open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) return -errno;
    bind_path = "/proc/self/fd/" + std::to_string(dirfd) + "/" + kSocketName;
    int rc = make_address(bind_path, &addr, &addr_len);
    if (rc < 0) {
      close(dirfd);
      return rc;
    }
  }

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int err = 0;
  if (fd < 0) {
    err = errno;
  } else {
    if (unlink(bind_path.c_str()) < 0 && errno != ENOENT) {
      err = errno;
    } else if (bind(fd, reinterpret_cast<sockaddr*>(&addr), addr_len) < 0 || listen(fd, 10) < 0) {
      err = errno;
    } else {
      // Connections accepted later inherit it; messages queued before accept() then already carry credentials.
      enable_passcred(fd);
    }
  }
  if (dirfd >= 0) close(dirfd);
  if (err != 0) {
    if (fd >= 0) close(fd);
    return -err;
  }
  return fd;
}

int accept_now(int listen_fd) {
  for (;;) {
    int fd = accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      enable_passcred(fd);  // best effort: without it hand-overs just carry no host pid
      return fd;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EWOULDBLOCK) return -EAGAIN;
    return -errno;
  }
}

int accept_restore(int listen_fd, int timeout_ms) {
  for (;;) {
    pollfd pfd{listen_fd, POLLIN, 0};
    int rc = poll(&pfd, 1, timeout_ms < 0 ? -1 : timeout_ms);
    if (rc < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (rc == 0) return -ETIMEDOUT;
    int fd = accept_now(listen_fd);
    if (fd != -EAGAIN) return fd;
  }
}

HandshakeReader::~HandshakeReader() { close_connection(); }

void HandshakeReader::close_connection() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

HandshakeReader::Status HandshakeReader::fail(std::string message) {
  error_ = std::move(message);
  return Status::kError;
}

HandshakeReader::Status HandshakeReader::on_readable(std::vector<Handover>* out) {
  if (!error_.empty()) return Status::kError;
  while (!finished_) {
    if (fd_ < 0) return fail("restore connection closed");
    if (pending_pid_ > 0) {
      // One data byte with the uffd attached (criu's send_fd(): 1 byte, CMSG_LEN(sizeof(int)), §3.2).
      char byte;
      iovec iov{&byte, 1};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4) + CMSG_SPACE(sizeof(ucred))];
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      ssize_t n = recvmsg(fd_, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return Status::kMore;
        return fail(std::string("reading the uffd of pid ") + std::to_string(pending_pid_) + ": " + strerror(errno));
      }
      if (n == 0) {
        return fail("restore closed the connection before sending the uffd of pid " + std::to_string(pending_pid_));
      }
      int uffd = -1;
      int host_pid = 0;
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len >= CMSG_LEN(sizeof(ucred))) {
          ucred cred;
          std::memcpy(&cred, CMSG_DATA(c), sizeof cred);
          if (cred.pid > 0) host_pid = cred.pid;
          continue;
        }
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
          int received;
          std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof received);
          if (uffd < 0) {
            uffd = received;
          } else {
            close(received);  // more than one fd: keep the first, as criu's recv_fd() would only see one
          }
        }
      }
      if (uffd < 0) {
        return fail("hand-over of pid " + std::to_string(pending_pid_) + " carried no file descriptor" +
                    ((msg.msg_flags & MSG_CTRUNC) ? " (control data truncated)" : ""));
      }
      out->push_back(Handover{Handover::Kind::kTask, pending_pid_, uffd, host_pid});
      handovers_++;
      pending_pid_ = 0;
      continue;
    }

    ssize_t n = recv(fd_, word_ + word_len_, sizeof word_ - word_len_, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return Status::kMore;
      return fail(std::string("reading the restore connection: ") + strerror(errno));
    }
    if (n == 0) {
      if (handovers_ < expected_) {
        return fail("restore closed the connection after " + std::to_string(handovers_) + " of " +
                    std::to_string(expected_) + " task hand-overs");
      }
      return fail("restore closed the connection before RSTF");
    }
    word_len_ += static_cast<size_t>(n);
    if (word_len_ < sizeof word_) continue;
    word_len_ = 0;

    if (handovers_ < expected_) {
      int32_t pid;
      std::memcpy(&pid, word_, sizeof pid);
      if (pid > 0 && static_cast<uint64_t>(pid) <= wire::PID_MAX_LIMIT) {
        pending_pid_ = pid;
      } else if (pid < 0 && static_cast<uint64_t>(-static_cast<int64_t>(pid)) <= wire::PID_MAX_LIMIT) {
        // A zombie: -pid, no fd (criu's lazy_pages_setup_zombie()).
        out->push_back(Handover{Handover::Kind::kZombie, -pid, -1});
        handovers_++;
      } else if (static_cast<uint32_t>(pid) == wire::LAZY_PAGES_RESTORE_FINISHED) {
        return fail("RSTF arrived after " + std::to_string(handovers_) + " of " + std::to_string(expected_) +
                    " task hand-overs");
      } else {
        return fail("invalid pid " + std::to_string(pid) + " in task hand-over " + std::to_string(handovers_ + 1));
      }
      continue;
    }
    uint32_t marker;
    std::memcpy(&marker, word_, sizeof marker);
    if (marker != wire::LAZY_PAGES_RESTORE_FINISHED) {
      char text[80];
      snprintf(text, sizeof text, "expected the RSTF marker 0x52535446, got 0x%08x", marker);
      return fail(text);
    }
    finished_ = true;
  }
  return Status::kFinished;
}

int connect_socket(const std::string& socket_path) {
  sockaddr_un addr;
  socklen_t len;
  int rc = make_address(socket_path, &addr, &len);
  if (rc < 0) return rc;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), len) < 0) {
    int err = errno;
    close(fd);
    return -err;
  }
  return fd;
}

int send_task(int sock, int pid, int uffd) {
  int rc = send_all(sock, &pid, sizeof pid);
  if (rc < 0) return rc;
  return send_fd(sock, uffd);
}

int send_fd(int sock, int uffd) {
  char byte = 0;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &uffd, sizeof uffd);
  for (;;) {
    ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (n == 1) return 0;
    if (n < 0 && errno == EINTR) continue;
    return n < 0 ? -errno : -EIO;
  }
}

int send_zombie(int sock, int pid) {
  int value = -pid;
  return send_all(sock, &value, sizeof value);
}

int send_finished(int sock) {
  uint32_t marker = wire::LAZY_PAGES_RESTORE_FINISHED;
  return send_all(sock, &marker, sizeof marker);
}

}  // namespace lazyd::handshake
