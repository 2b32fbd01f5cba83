// Page bytes held in pipes by reference, as CRIU's page server keeps them (docs/protocol.md §1.6, §1.8): bytes are
// spliced from a socket into the pipes without passing through user space (no copy: the pipe buffers reference
// the socket's receive pages), and served with tee() of (offset-in-pipe + length) bytes into the caller's scratch
// pipe, a splice of the leading offset bytes to /dev/null and a splice of the rest to the output. tee() and the
// discard cost 50-70 ns per pipe buffer ahead of the byte served (bench/page-store), so a pipe holds at most
// pipe_bytes.
//
// Bytes are placed by position: each pipe holds one run [start, start + bytes) of a byte space the caller defines
// (an upload's stream, a relayed checkpoint's layout); an append at the end of the pipe last written continues
// it, an append anywhere else starts a new pipe. Pipe buffers spliced from a socket reference the sender's page
// fragments (up to 32 KiB each over loopback), so a pipe fills by slots or by pipe_bytes, whichever comes first,
// and a page may straddle two pipes. The price is file descriptors: 2 per pipe while it is written, 1 after.
//
// One thread at a time; serving is const (tee does not consume the stored pipe) and each caller brings its own
// ServeScratch.
#pragma once

#include <cstdint>
#include <map>
#include <sys/types.h>

#include "staging/page_store.h"

namespace lazyd {

class PagePipes {
 public:
  // A new pipe that cannot be given its capacity (F_SETPIPE_SZ refused: fs.pipe-max-size, or, without
  // CAP_SYS_RESOURCE, fs.pipe-user-pages-soft) or cannot be made at all (EMFILE): kNoPipe, when the caller asked
  // for strict capacity; the caller then keeps its bytes elsewhere.
  static constexpr int kNoPipe = -ENOBUFS;

  // pipe_bytes: most bytes per pipe; capacity: the F_SETPIPE_SZ request (capped at fs.pipe-max-size when
  // !strict, where a refused request leaves the pipe at its default size); max_pipes (strict only, 0: no limit):
  // past that many pipes, kNoPipe.
  PagePipes(uint64_t pipe_bytes, uint64_t capacity, bool strict, uint64_t max_pipes = 0);
  ~PagePipes();
  PagePipes(const PagePipes&) = delete;
  PagePipes& operator=(const PagePipes&) = delete;

  // Moves at most len bytes from fd (O_NONBLOCK) to position at. Bytes moved, 0 at EOF, -EAGAIN when fd has
  // nothing now, kNoPipe, or -errno.
  ssize_t splice_in(int fd, uint64_t at, uint64_t len);
  // Copies len bytes of data to position at (bytes already in user space). Bytes taken, kNoPipe, or -errno.
  ssize_t write_in(const void* data, size_t len, uint64_t at);
  // Nothing more is written: the write ends go (tee() from a pipe without writers still works).
  void seal();
  // Drops every pipe (their pages are released once no scratch references them).
  void clear();

  // Whether position at is held here; the start of the first pipe after at (UINT64_MAX: none).
  bool holds(uint64_t at) const;
  uint64_t next_start(uint64_t at) const;
  // Serves bytes from position at (at most left, up to the end of at's pipe) to out_fd / into buf. Bytes written
  // (> 0), -EAGAIN (out_fd full: call again with the same at), or -errno. The scratch keeps what was pulled for at
  // and not yet written; call until done, or ServeScratch::reset() an abandoned reply.
  ssize_t send(uint64_t at, uint64_t left, int out_fd, bool more_follows, ServeScratch& scratch) const;
  ssize_t copy_out(uint64_t at, uint64_t left, void* buf, size_t len, ServeScratch& scratch) const;

  uint64_t pipe_count() const { return pipes_.size(); }
  uint64_t fds() const;
  uint64_t capacity() const { return capacity_; }

 private:
  struct Pipe {
    int rd = -1;
    int wr = -1;
    uint64_t bytes = 0;
    uint64_t capacity = 0;  // F_GETPIPE_SZ
    bool full = false;
  };
  using Pipes = std::map<uint64_t, Pipe>;  // by start position
  // The pipe to append at position at: the one written last if it ends there and has room, else a new one.
  int tail(uint64_t at, Pipes::iterator* out);
  bool out_of_slots(const Pipe& pipe) const;
  void retire(Pipe& pipe);
  int pull(uint64_t at, uint64_t left, ServeScratch& scratch) const;

  uint64_t pipe_bytes_;
  uint64_t capacity_;
  bool strict_;
  uint64_t max_pipes_;
  int null_fd_ = -1;
  Pipes pipes_;
  Pipes::iterator last_ = pipes_.end();  // written last, while its write end is open
};

}  // namespace lazyd
