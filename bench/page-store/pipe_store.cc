#include "pipe_store.h"

#include <algorithm>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

namespace lazyd {

PipeStore::PipeStore(const PipeStoreOptions& options) : PageStore(options.page_size, options.limits) {
  const uint64_t max = pipe_max_size();
  uint64_t capacity = options.pipe_capacity ? options.pipe_capacity : options.pipe_bytes;
  capacity = std::max<uint64_t>(std::min(capacity, max), options.page_size);
  capacity_ = capacity;  // requested; the kernel rounds up to a power of two pages
  pipe_bytes_ = std::max<uint64_t>(options.pipe_bytes, options.page_size);
  null_fd_ = open("/dev/null", O_WRONLY | O_CLOEXEC);
}

PipeStore::~PipeStore() {
  for (Pipe& pipe : pipes_) {
    if (pipe.rd >= 0) close(pipe.rd);
    if (pipe.wr >= 0) close(pipe.wr);
  }
  if (null_fd_ >= 0) close(null_fd_);
}

bool PipeStore::pipe_full(const Pipe& pipe) const {
  // A pipe is writable while it has a free slot (pipe_poll); how many bytes a slot takes depends on the source.
  pollfd p{pipe.wr, POLLOUT, 0};
  const int n = poll(&p, 1, 0);
  return n == 0 || (n == 1 && !(p.revents & POLLOUT));
}

int PipeStore::tail_pipe(uint64_t at, Pipe** out) {
  if (!pipes_.empty()) {
    Pipe& last = pipes_.back();
    if (!last.full && last.bytes < pipe_bytes_) {
      *out = &last;
      return 0;
    }
    last.full = true;
  }
  int fds[2];
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) return -errno;
  // Without CAP_SYS_RESOURCE F_SETPIPE_SZ fails above fs.pipe-max-size (and, for users without
  // CAP_SYS_ADMIN either, past fs.pipe-user-pages-soft); the pipe then keeps its default 64 KiB.
  int got = fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(capacity_));
  if (got < 0) got = fcntl(fds[1], F_GETPIPE_SZ);
  Pipe pipe;
  pipe.capacity = got > 0 ? static_cast<uint64_t>(got) : 65536;
  pipe.rd = fds[0];
  pipe.wr = fds[1];
  pipe.start = at;
  pipes_.push_back(pipe);
  *out = &pipes_.back();
  return 0;
}

ssize_t PipeStore::put_from_fd(int fd, uint64_t len) {
  for (;;) {
    Pipe* pipe = nullptr;
    int err = tail_pipe(data_end(), &pipe);
    if (err) return err;
    const uint64_t room = pipe_bytes_ - pipe->bytes;
    // SPLICE_F_NONBLOCK makes a full pipe answer EAGAIN instead of waiting (nobody else reads it); an empty
    // socket answers EAGAIN only if it is O_NONBLOCK itself (tcp_splice_read looks at the file flags).
    ssize_t n = splice(fd, nullptr, pipe->wr, nullptr, std::min(len, room), SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    if (n > 0) {
      pipe->bytes += static_cast<uint64_t>(n);
      return n;
    }
    if (n == 0) return 0;
    if (errno == EAGAIN && pipe->bytes > 0 && pipe_full(*pipe)) {
      pipe->full = true;  // out of slots before pipe_bytes: continue in a new pipe
      continue;
    }
    return -errno;
  }
}

ssize_t PipeStore::put_bytes(const void* data, size_t len) {
  size_t done = 0;
  while (done < len) {
    Pipe* pipe = nullptr;
    int err = tail_pipe(data_end() + done, &pipe);
    if (err) return done ? static_cast<ssize_t>(done) : err;
    const uint64_t room = pipe_bytes_ - pipe->bytes;
    ssize_t n = write(pipe->wr, static_cast<const char*>(data) + done, std::min<uint64_t>(len - done, room));
    if (n > 0) {
      pipe->bytes += static_cast<uint64_t>(n);
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN && pipe->bytes > 0) {
      pipe->full = true;
      continue;
    }
    return done ? static_cast<ssize_t>(done) : (n < 0 ? -errno : -EIO);
  }
  return static_cast<ssize_t>(done);
}

int PipeStore::on_seal() {
  // Nothing is written any more: the write ends only cost fds. tee() from a pipe without writers still works.
  for (Pipe& pipe : pipes_) {
    if (pipe.wr >= 0) close(pipe.wr);
    pipe.wr = -1;
    pipe.full = true;
  }
  return 0;
}

// Pulls the next piece of span (from `done` up to the end of its pipe) into the scratch pipe, unless bytes of it
// are still pending there. 0 or -errno.
int PipeStore::pull(const StoreSpan& span, uint64_t done, ServeScratch& scratch) const {
  if (scratch.pending() == 0) {
    // Pull the next piece (up to the end of its pipe) into the scratch pipe.
    const uint64_t pos = span.data_offset + done;
    auto after = std::upper_bound(pipes_.begin(), pipes_.end(), pos,
                                  [](uint64_t p, const Pipe& pipe) { return p < pipe.start; });
    if (after == pipes_.begin()) return -EIO;
    const Pipe& pipe = *(after - 1);
    if (pos >= pipe.start + pipe.bytes) return -EIO;
    const uint64_t offset = pos - pipe.start;
    const uint64_t chunk = std::min(span.bytes - done, pipe.bytes - offset);
    // The scratch pipe needs as many slots as the stored pipe: tee() copies buffer references and stops
    // when the destination is full, and the leading offset bytes cannot be skipped (docs/protocol.md §1.6).
    int err = scratch.ensure(pipe.capacity);
    if (err) return err;
    const uint64_t want = offset + chunk;
    ssize_t teed;
    do {
      teed = tee(pipe.rd, scratch.write_fd(), want, SPLICE_F_NONBLOCK);
    } while (teed < 0 && errno == EINTR);
    if (teed > 0) scratch.set_pending(static_cast<uint64_t>(teed));
    if (teed <= 0 || static_cast<uint64_t>(teed) != want) {
      // Cannot happen with an empty scratch of the stored pipe's capacity; never send a short page.
      const int err = teed < 0 ? -errno : -EIO;
      scratch.reset();
      return err;
    }
    uint64_t skip = offset;
    while (skip > 0) {
      ssize_t n = splice(scratch.read_fd(), nullptr, null_fd_, nullptr, skip, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int err = n < 0 ? -errno : -EIO;
        scratch.reset();
        return err;
      }
      skip -= static_cast<uint64_t>(n);
      scratch.consumed(static_cast<uint64_t>(n));
    }
  }
  return 0;
}

ssize_t PipeStore::send(const StoreSpan& span, uint64_t done, int out_fd, ServeScratch& scratch) const {
  if (done >= span.bytes) return 0;
  int err = pull(span, done, scratch);
  if (err) return err;
  const bool more = done + scratch.pending() < span.bytes;
  ssize_t n = splice(scratch.read_fd(), nullptr, out_fd, nullptr, scratch.pending(),
                     SPLICE_F_NONBLOCK | SPLICE_F_MOVE | (more ? SPLICE_F_MORE : 0));
  if (n < 0) return -errno;
  if (n == 0) return -EIO;
  scratch.consumed(static_cast<uint64_t>(n));
  return n;
}

ssize_t PipeStore::copy_out(const StoreSpan& span, uint64_t done, void* buf, size_t len, ServeScratch& scratch) const {
  if (done >= span.bytes || len == 0) return 0;
  int err = pull(span, done, scratch);
  if (err) return err;
  ssize_t n = read(scratch.read_fd(), buf, static_cast<size_t>(std::min<uint64_t>(len, scratch.pending())));
  if (n < 0) return -errno;
  if (n == 0) return -EIO;
  scratch.consumed(static_cast<uint64_t>(n));
  return n;
}

StoreResources PipeStore::resources() const {
  StoreResources r;
  r.pipes = pipes_.size();
  for (const Pipe& pipe : pipes_) r.fds += (pipe.rd >= 0) + (pipe.wr >= 0);
  r.fds += null_fd_ >= 0;
  return r;
}

}  // namespace lazyd
