// The lazy-pages.socket hand-over: stale socket files, long work dirs, tasks + zombies + RSTF in any split,
// and every way the restore side can get it wrong.
#include "lazy/restore_handshake.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "wire/wire.h"

#include "check.h"

using namespace lazyd;
using handshake::HandshakeReader;
using handshake::Handover;


static std::string make_dir() {
  char tmpl[] = "/tmp/lazyd-hs-XXXXXX";
  CHECK(mkdtemp(tmpl) != nullptr);
  return tmpl;
}

// Drives the reader until it finishes or fails, or *out holds `items` hand-overs, or 2 s pass.
static HandshakeReader::Status drive(HandshakeReader& reader, std::vector<Handover>* out, size_t items = SIZE_MAX) {
  for (int i = 0; i < 200; i++) {
    HandshakeReader::Status s = reader.on_readable(out);
    if (s != HandshakeReader::Status::kMore || out->size() >= items) return s;
    pollfd pfd{reader.fd(), POLLIN, 0};
    poll(&pfd, 1, 10);
  }
  return HandshakeReader::Status::kMore;
}

struct Pair {
  int listen_fd = -1;
  int daemon_side = -1;
  int restore_side = -1;
  std::string path;
};

static Pair connect_pair(const std::string& dir) {
  Pair p;
  p.listen_fd = handshake::listen_socket(dir, &p.path);
  CHECK(p.listen_fd >= 0);
  p.restore_side = handshake::connect_socket(p.path);
  CHECK(p.restore_side >= 0);
  p.daemon_side = handshake::accept_restore(p.listen_fd, 2000);
  CHECK(p.daemon_side >= 0);
  close(p.listen_fd);
  return p;
}

static ino_t inode_of(int fd) {
  struct stat st;
  CHECK(fstat(fd, &st) == 0);
  return st.st_ino;
}

static void test_full_handshake() {
  std::string dir = make_dir();
  // A stale socket file (here: a regular file) is replaced.
  std::string stale = dir + "/lazy-pages.socket";
  int f = open(stale.c_str(), O_CREAT | O_WRONLY, 0600);
  CHECK(f >= 0);
  close(f);
  Pair p = connect_pair(dir);
  CHECK(p.path == stale);
  struct stat st;
  CHECK(stat(p.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode));

  int efd1 = eventfd(0, EFD_CLOEXEC), efd2 = eventfd(0, EFD_CLOEXEC);
  HandshakeReader reader(p.daemon_side, 3);
  std::vector<Handover> got;
  // Nothing yet.
  CHECK(reader.on_readable(&got) == HandshakeReader::Status::kMore);
  CHECK(handshake::send_task(p.restore_side, 101, efd1) == 0);
  CHECK(handshake::send_zombie(p.restore_side, 102) == 0);
  CHECK(handshake::send_task(p.restore_side, 103, efd2) == 0);
  CHECK(drive(reader, &got, 3) == HandshakeReader::Status::kMore);
  CHECK(got.size() == 3);
  CHECK(reader.all_handed_over());
  CHECK(!reader.finished());
  CHECK(got[0].kind == Handover::Kind::kTask && got[0].pid == 101 && got[0].fd >= 0);
  CHECK(got[0].host_pid == getpid());  // SO_PASSCRED: the sender's pid rides along with the fd
  CHECK(inode_of(got[0].fd) == inode_of(efd1));
  CHECK(got[1].kind == Handover::Kind::kZombie && got[1].pid == 102 && got[1].fd == -1);
  CHECK(got[2].kind == Handover::Kind::kTask && got[2].pid == 103 && inode_of(got[2].fd) == inode_of(efd2));
  CHECK((fcntl(got[0].fd, F_GETFD) & FD_CLOEXEC) != 0);
  // RSTF arrives later, one byte at a time.
  uint32_t marker = wire::LAZY_PAGES_RESTORE_FINISHED;
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&marker);
  for (int i = 0; i < 4; i++) {
    CHECK(send(p.restore_side, bytes + i, 1, 0) == 1);
    std::vector<Handover> more;
    HandshakeReader::Status s = i == 3 ? drive(reader, &more) : reader.on_readable(&more);
    CHECK(more.empty());
    CHECK(s == (i == 3 ? HandshakeReader::Status::kFinished : HandshakeReader::Status::kMore));
  }
  CHECK(reader.finished());
  close(p.restore_side);  // EOF after RSTF is fine
  CHECK(reader.on_readable(&got) == HandshakeReader::Status::kFinished);
  for (auto& h : got)
    if (h.fd >= 0) close(h.fd);
  close(efd1);
  close(efd2);
}

// Each hand-over carries the pid of the process that sent it (criu sends from each task's own process, docs/protocol.md §3.2),
// even though all of them share one connection.
static void test_sender_pids() {
  Pair p = connect_pair(make_dir());
  HandshakeReader reader(p.daemon_side, 3);
  std::vector<Handover> got;
  std::vector<pid_t> kids;
  for (int i = 0; i < 2; i++) {
    pid_t kid = fork();
    CHECK(kid >= 0);
    if (kid == 0) {
      int efd = eventfd(0, EFD_CLOEXEC);
      _exit(efd >= 0 && handshake::send_task(p.restore_side, 200 + i, efd) == 0 ? 0 : 1);
    }
    int status = 0;
    CHECK(waitpid(kid, &status, 0) == kid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    kids.push_back(kid);
  }
  int efd = eventfd(0, EFD_CLOEXEC);
  CHECK(handshake::send_task(p.restore_side, 300, efd) == 0);
  CHECK(handshake::send_finished(p.restore_side) == 0);
  CHECK(drive(reader, &got) == HandshakeReader::Status::kFinished);
  CHECK(got.size() == 3);
  CHECK(got[0].pid == 200 && got[0].host_pid == kids[0]);
  CHECK(got[1].pid == 201 && got[1].host_pid == kids[1]);
  CHECK(got[2].pid == 300 && got[2].host_pid == getpid());
  for (auto& h : got) close(h.fd);
  close(efd);
  close(p.restore_side);
}

static void test_pid_split() {
  Pair p = connect_pair(make_dir());
  int efd = eventfd(0, EFD_CLOEXEC);
  HandshakeReader reader(p.daemon_side, 1);
  std::vector<Handover> got;
  int pid = 4242;
  const uint8_t* b = reinterpret_cast<const uint8_t*>(&pid);
  CHECK(send(p.restore_side, b, 3, 0) == 3);
  CHECK(reader.on_readable(&got) == HandshakeReader::Status::kMore);
  CHECK(send(p.restore_side, b + 3, 1, 0) == 1);
  CHECK(reader.on_readable(&got) == HandshakeReader::Status::kMore);
  CHECK(got.empty());
  // The fd byte, then RSTF in the same burst.
  CHECK(handshake::send_fd(p.restore_side, efd) == 0);
  CHECK(handshake::send_finished(p.restore_side) == 0);
  CHECK(drive(reader, &got) == HandshakeReader::Status::kFinished);
  CHECK(got.size() == 1 && got[0].pid == 4242 && inode_of(got[0].fd) == inode_of(efd));
  close(got[0].fd);
  close(efd);
  close(p.restore_side);
}

static void expect_error(size_t expected, const std::function<void(int)>& send_side, const char* fragment) {
  Pair p = connect_pair(make_dir());
  HandshakeReader reader(p.daemon_side, expected);
  std::vector<Handover> got;
  send_side(p.restore_side);
  HandshakeReader::Status s = drive(reader, &got);
  if (s != HandshakeReader::Status::kError || reader.error().find(fragment) == std::string::npos) {
    std::fprintf(stderr, "expected an error with '%s', got status %d error '%s'\n", fragment, static_cast<int>(s),
                 reader.error().c_str());
  }
  CHECK(s == HandshakeReader::Status::kError);
  CHECK(reader.error().find(fragment) != std::string::npos);
  for (auto& h : got)
    if (h.fd >= 0) close(h.fd);
  close(p.restore_side);
}

static void test_errors() {
  // EOF after every hand-over but before RSTF.
  expect_error(1, [](int s) {
    int efd = eventfd(0, 0);
    handshake::send_task(s, 7, efd);
    close(efd);
    shutdown(s, SHUT_WR);
  }, "before RSTF");
  // EOF in the middle of the hand-overs.
  expect_error(3, [](int s) {
    handshake::send_zombie(s, 9);
    shutdown(s, SHUT_WR);
  }, "after 1 of 3");
  // EOF between a pid and its fd byte.
  expect_error(1, [](int s) {
    int pid = 5;
    send(s, &pid, 4, 0);
    shutdown(s, SHUT_WR);
  }, "before sending the uffd of pid 5");
  // A pid followed by a plain byte without SCM_RIGHTS.
  expect_error(1, [](int s) {
    int pid = 5;
    send(s, &pid, 4, 0);
    char zero = 0;
    send(s, &zero, 1, 0);
  }, "carried no file descriptor");
  // Wrong marker after the hand-overs.
  expect_error(1, [](int s) {
    handshake::send_zombie(s, 3);
    uint32_t bad = 0x12345678;
    send(s, &bad, 4, 0);
  }, "expected the RSTF marker");
  // RSTF too early.
  expect_error(2, [](int s) {
    handshake::send_zombie(s, 3);
    handshake::send_finished(s);
  }, "RSTF arrived after 1 of 2");
  // Zero is not a pid.
  expect_error(1, [](int s) {
    int zero = 0;
    send(s, &zero, 4, 0);
  }, "invalid pid 0");
}

static void test_zero_tasks_and_timeout() {
  Pair p = connect_pair(make_dir());
  HandshakeReader reader(p.daemon_side, 0);
  std::vector<Handover> got;
  CHECK(reader.all_handed_over());
  CHECK(handshake::send_finished(p.restore_side) == 0);
  CHECK(drive(reader, &got) == HandshakeReader::Status::kFinished);
  close(p.restore_side);

  std::string path;
  int lfd = handshake::listen_socket(make_dir(), &path);
  CHECK(lfd >= 0);
  CHECK(handshake::accept_restore(lfd, 30) == -ETIMEDOUT);
  CHECK(handshake::accept_now(lfd) == -EAGAIN);
  close(lfd);
  // A work dir that does not exist.
  CHECK(handshake::listen_socket("/nonexistent/lazyd/dir", &path) == -ENOENT);
}

static void test_long_work_dir() {
  std::string dir = make_dir();
  while (dir.size() < 140) {
    dir += "/a-rather-long-directory-name";
    CHECK(mkdir(dir.c_str(), 0700) == 0);
  }
  std::string path;
  int lfd = handshake::listen_socket(dir, &path);
  CHECK(lfd >= 0);
  CHECK(path == dir + "/lazy-pages.socket");
  struct stat st;
  CHECK(stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode));
  // Too long for sun_path: a client reaches it the same way, through /proc/self/fd.
  CHECK(handshake::connect_socket(path) == -ENAMETOOLONG);
  int dfd = open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  int s = handshake::connect_socket("/proc/self/fd/" + std::to_string(dfd) + "/lazy-pages.socket");
  CHECK(s >= 0);
  int conn = handshake::accept_restore(lfd, 2000);
  CHECK(conn >= 0);
  close(conn);
  close(s);
  close(dfd);
  close(lfd);
}

int main() {
  alarm(60);  // never hang a test run
  test_full_handshake();
  test_pid_split();
  test_sender_pids();
  test_errors();
  test_zero_tasks_and_timeout();
  test_long_work_dir();
  check_report();
  return 0;
}
