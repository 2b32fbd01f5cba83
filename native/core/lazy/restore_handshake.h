// The local hand-over from `criu restore --lazy-pages` (docs/protocol.md §3): the UNIX socket lazy-pages.socket in the
// work dir, one connection, per task a 4-byte native int pid followed by one data byte carrying the uffd as
// SCM_RIGHTS (zombies: only -pid, no fd), and finally the u32 "RSTF" marker. The daemon never writes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace lazyd::handshake {

constexpr const char* kSocketName = "lazy-pages.socket";

// Unlinks a stale socket file, then creates, binds and listens on <work_dir>/lazy-pages.socket. When the absolute
// path does not fit in sun_path, binds through /proc/self/fd/<dirfd>/ instead (no chdir: the process is
// multi-threaded). Returns the non-blocking, close-on-exec listening fd, or -errno. *path_out gets the file path.
// SO_PASSCRED is set on the listener and on every accepted connection: each hand-over then carries the
// SCM_CREDENTIALS of the process that sent it, which is the restored task itself (§3.2), so the daemon learns the
// task's pid in its own pid namespace (Handover::host_pid) and can kill it if its memory can never be completed.
int listen_socket(const std::string& work_dir, std::string* path_out);

// Waits up to timeout_ms (< 0: forever) for one connection, then returns its non-blocking fd or -errno
// (-ETIMEDOUT). The caller closes the listener afterwards: restore connects exactly once (§3.1).
int accept_restore(int listen_fd, int timeout_ms);
// Non-blocking accept for callers that poll the listener themselves: fd, or -EAGAIN, or -errno.
int accept_now(int listen_fd);

struct Handover {
  enum class Kind { kTask, kZombie };
  Kind kind = Kind::kTask;
  int pid = 0;  // the task's virtual pid (positive, also for zombies)
  int fd = -1;  // the uffd (kTask only); the receiver owns it
  // kTask: the sender's pid as seen from the receiver's pid namespace (SCM_CREDENTIALS of the fd message), 0 when
  // the connection did not have SO_PASSCRED or the sender is not visible from here.
  int host_pid = 0;
};

// Sets SO_PASSCRED on a UNIX socket. 0 or -errno.
int enable_passcred(int fd);

// Incremental reader of the restore connection. Reads exact byte counts (4 bytes, then a 1-byte recvmsg for the
// fd) so that the fd's data byte is never read together with other bytes.
class HandshakeReader {
 public:
  enum class Status { kMore, kFinished, kError };

  HandshakeReader(int fd, size_t expected_tasks) : fd_(fd), expected_(expected_tasks) {}
  ~HandshakeReader();
  HandshakeReader(const HandshakeReader&) = delete;
  HandshakeReader& operator=(const HandshakeReader&) = delete;

  // Reads whatever is available; appends completed hand-overs to *out (fds owned by the caller from then on).
  // kFinished once RSTF was read after expected_tasks hand-overs (later EOF is fine); kError with error() set on
  // EOF before RSTF, a wrong marker, a hand-over without an fd, or a read error.
  Status on_readable(std::vector<Handover>* out);

  size_t handovers() const { return handovers_; }
  bool all_handed_over() const { return handovers_ >= expected_; }
  bool finished() const { return finished_; }
  const std::string& error() const { return error_; }
  int fd() const { return fd_; }
  // Closes the connection (restore closes its end after RSTF anyway).
  void close_connection();

 private:
  Status fail(std::string message);

  int fd_;
  size_t expected_;
  size_t handovers_ = 0;
  uint8_t word_[4] = {};
  size_t word_len_ = 0;
  int pending_pid_ = 0;  // > 0: the pid was read, its fd byte is next
  bool finished_ = false;
  std::string error_;
};

// Blocking helpers for the sending side (tests, and a future `lazyd restore` shim): connect to the socket file,
// send one hand-over / a zombie / the RSTF marker. Return 0 or -errno.
int connect_socket(const std::string& socket_path);
int send_task(int sock, int pid, int uffd);
// The second half of a task hand-over alone: one data byte (0) carrying the fd by SCM_RIGHTS.
int send_fd(int sock, int uffd);
int send_zombie(int sock, int pid);
int send_finished(int sock);

}  // namespace lazyd::handshake
