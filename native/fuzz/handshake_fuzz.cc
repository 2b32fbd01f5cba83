// libFuzzer target: a hostile restore hand-over (lazy/restore_handshake.h, docs/protocol.md §3). The input is a
// program for the sending side of the lazy-pages.socket connection, run against a HandshakeReader over a
// socketpair (SO_PASSCRED on, as the daemon's): raw bytes (pids, markers, anything), data bytes carrying zero,
// one or several fds by SCM_RIGHTS, and the end of the connection, with on_readable() after each step.
// Built and run by scripts/fuzz.sh (clang -fsanitize=fuzzer,address,undefined).
//
// Invariants checked: every task hand-over carries exactly one open fd and a pid in 1..PID_MAX_LIMIT, a zombie
// none; never more hand-overs than expected; kFinished only after all of them and an RSTF; once kError, error()
// says why and it stays an error; and no fd leaks: after the reader is gone and the handed-over fds are closed,
// the process has exactly the fds it had before (extra fds, fds on the wrong byte, truncated control data).
#include <dirent.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "lazy/restore_handshake.h"
#include "wire/wire.h"

#include "fuzz_check.h"

using namespace lazyd;
using handshake::Handover;
using handshake::HandshakeReader;

namespace {

int open_fds() {
  int count = 0;
  DIR* dir = opendir("/proc/self/fd");
  FUZZ_CHECK(dir != nullptr);
  while (readdir(dir) != nullptr) count++;
  closedir(dir);
  return count;
}

// One data byte carrying `count` fds (fresh eventfds, closed here once sent: the receiver has its own copies).
void send_fds(int sock, uint8_t byte, int count) {
  std::vector<int> fds;
  for (int i = 0; i < count; i++) {
    const int fd = eventfd(0, EFD_CLOEXEC);
    FUZZ_CHECK(fd >= 0);
    fds.push_back(fd);
  }
  iovec iov{&byte, 1};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (count > 0) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * count);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * count);
    memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * count);
  }
  (void)!sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  for (int fd : fds) close(fd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const int fds_before = open_fds();
  const size_t expected = data[0] % 9;
  int sv[2];
  FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
  const int sender = sv[1];
  FUZZ_CHECK(handshake::enable_passcred(sv[0]) == 0);
  std::vector<Handover> handed;
  {
    HandshakeReader reader(sv[0], expected);
    HandshakeReader::Status status = HandshakeReader::Status::kMore;
    bool errored = false;
    size_t i = 1;
    bool shut = false;
    while (i < size && !shut) {
      const uint8_t op = data[i++];
      switch (op % 4) {
        case 0: {  // raw bytes: the next (op >> 2) + 1 bytes of input
          const size_t n = std::min<size_t>((op >> 2) + 1, size - i);
          (void)!send(sender, data + i, n, MSG_DONTWAIT | MSG_NOSIGNAL);
          i += n;
          break;
        }
        case 1:  // a well-formed task pid from the next 2 bytes, then its fd: the common case
          if (i + 2 <= size) {
            const int32_t pid = 1 + (data[i] | (data[i + 1] << 8));
            (void)!send(sender, &pid, sizeof pid, MSG_DONTWAIT | MSG_NOSIGNAL);
            i += 2;
          }
          send_fds(sender, 0, 1);
          break;
        case 2:  // a data byte with (op >> 2) % 8 fds (0: none, 2+: too many)
          send_fds(sender, static_cast<uint8_t>(op), (op >> 2) % 8);
          break;
        case 3:
          if (op & 4) {
            const uint32_t rstf = wire::LAZY_PAGES_RESTORE_FINISHED;
            (void)!send(sender, &rstf, sizeof rstf, MSG_DONTWAIT | MSG_NOSIGNAL);
          } else {
            shutdown(sender, SHUT_WR);
            shut = true;
          }
          break;
      }
      const size_t before = handed.size();
      status = reader.on_readable(&handed);
      if (errored) FUZZ_CHECK(status == HandshakeReader::Status::kError);
      if (status == HandshakeReader::Status::kError) {
        errored = true;
        FUZZ_CHECK(!reader.error().empty());
      }
      for (size_t k = before; k < handed.size(); k++) {
        const Handover& h = handed[k];
        FUZZ_CHECK(h.pid > 0 && static_cast<uint64_t>(h.pid) <= wire::PID_MAX_LIMIT);
        if (h.kind == Handover::Kind::kTask) {
          FUZZ_CHECK(h.fd >= 0);
          FUZZ_CHECK(fcntl(h.fd, F_GETFD) >= 0);
        } else {
          FUZZ_CHECK(h.fd == -1);
        }
      }
      FUZZ_CHECK(reader.handovers() == handed.size());
      FUZZ_CHECK(handed.size() <= expected);
      if (status == HandshakeReader::Status::kFinished) {
        FUZZ_CHECK(reader.finished() && reader.all_handed_over());
      }
    }
    if (!shut) shutdown(sender, SHUT_WR);
    status = reader.on_readable(&handed);
    FUZZ_CHECK(status != HandshakeReader::Status::kMore);  // EOF seen: finished or failed, never waiting
    FUZZ_CHECK(status == HandshakeReader::Status::kFinished ? reader.finished() : !reader.error().empty());
    FUZZ_CHECK(handed.size() <= expected);
  }
  for (const Handover& h : handed) {
    if (h.fd >= 0) close(h.fd);
  }
  close(sender);
  FUZZ_CHECK(open_fds() == fds_before);
  return 0;
}
