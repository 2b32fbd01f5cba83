#include "staging/page_pipes.h"

#include <algorithm>
#include <cerrno>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

namespace lazyd {

PagePipes::PagePipes(uint64_t pipe_bytes, uint64_t capacity, bool strict, uint64_t max_pipes)
    : pipe_bytes_(std::max<uint64_t>(pipe_bytes, 4096)), strict_(strict), max_pipes_(max_pipes) {
  capacity_ = std::max<uint64_t>(capacity ? capacity : pipe_bytes_, 4096);
  if (!strict_) capacity_ = std::min<uint64_t>(capacity_, pipe_max_size());
  null_fd_ = open("/dev/null", O_WRONLY | O_CLOEXEC);
}

PagePipes::~PagePipes() {
  clear();
  if (null_fd_ >= 0) close(null_fd_);
}

void PagePipes::clear() {
  for (auto& [start, pipe] : pipes_) {
    if (pipe.rd >= 0) close(pipe.rd);
    if (pipe.wr >= 0) close(pipe.wr);
  }
  pipes_.clear();
  last_ = pipes_.end();
}

void PagePipes::retire(Pipe& pipe) {
  pipe.full = true;
  if (pipe.wr >= 0) close(pipe.wr);
  pipe.wr = -1;
}

void PagePipes::seal() {
  for (auto& item : pipes_) retire(item.second);
  last_ = pipes_.end();
}

uint64_t PagePipes::fds() const {
  uint64_t n = null_fd_ >= 0;
  for (const auto& item : pipes_) n += (item.second.rd >= 0) + (item.second.wr >= 0);
  return n;
}

bool PagePipes::out_of_slots(const Pipe& pipe) const {
  // A pipe is writable while it has a free slot (pipe_poll); how many bytes a slot takes depends on the source.
  pollfd p{pipe.wr, POLLOUT, 0};
  const int n = poll(&p, 1, 0);
  return n == 0 || (n == 1 && !(p.revents & POLLOUT));
}

int PagePipes::tail(uint64_t at, Pipes::iterator* out) {
  if (last_ != pipes_.end()) {
    Pipe& pipe = last_->second;
    if (last_->first + pipe.bytes == at && !pipe.full && pipe.bytes < pipe_bytes_) {
      *out = last_;
      return 0;
    }
    retire(pipe);
    last_ = pipes_.end();
  }
  if (holds(at)) return -EEXIST;
  if (strict_ && max_pipes_ && pipes_.size() >= max_pipes_) return kNoPipe;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) return strict_ && (errno == EMFILE || errno == ENFILE) ? kNoPipe : -errno;
  int got = fcntl(fds[1], F_SETPIPE_SZ, static_cast<int>(capacity_));
  if (got < 0 && strict_) {
    close(fds[0]);
    close(fds[1]);
    return kNoPipe;
  }
  if (got < 0) got = fcntl(fds[1], F_GETPIPE_SZ);
  Pipe pipe;
  pipe.rd = fds[0];
  pipe.wr = fds[1];
  pipe.capacity = got > 0 ? static_cast<uint64_t>(got) : 65536;
  last_ = pipes_.emplace(at, pipe).first;
  *out = last_;
  return 0;
}

ssize_t PagePipes::splice_in(int fd, uint64_t at, uint64_t len) {
  for (;;) {
    Pipes::iterator it;
    const int err = tail(at, &it);
    if (err) return err;
    Pipe& pipe = it->second;
    // SPLICE_F_NONBLOCK makes a full pipe answer EAGAIN instead of waiting (nobody else reads it); an empty
    // socket answers EAGAIN only if it is O_NONBLOCK itself (tcp_splice_read looks at the file flags).
    ssize_t n;
    do {
      n = splice(fd, nullptr, pipe.wr, nullptr, std::min(len, pipe_bytes_ - pipe.bytes), SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
      pipe.bytes += static_cast<uint64_t>(n);
      return n;
    }
    if (n == 0) return 0;
    if (errno == EAGAIN && pipe.bytes > 0 && out_of_slots(pipe)) {
      retire(pipe);  // out of slots before pipe_bytes: go on in a new pipe
      last_ = pipes_.end();
      continue;
    }
    return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  }
}

ssize_t PagePipes::write_in(const void* data, size_t len, uint64_t at) {
  size_t done = 0;
  while (done < len) {
    Pipes::iterator it;
    const int err = tail(at + done, &it);
    if (err) return done ? static_cast<ssize_t>(done) : err;
    Pipe& pipe = it->second;
    ssize_t n = write(pipe.wr, static_cast<const char*>(data) + done, std::min<uint64_t>(len - done, pipe_bytes_ - pipe.bytes));
    if (n > 0) {
      pipe.bytes += static_cast<uint64_t>(n);
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN && pipe.bytes > 0) {
      retire(pipe);
      last_ = pipes_.end();
      continue;
    }
    return done ? static_cast<ssize_t>(done) : (n < 0 ? -errno : -EIO);
  }
  return static_cast<ssize_t>(done);
}

bool PagePipes::holds(uint64_t at) const {
  auto after = pipes_.upper_bound(at);
  if (after == pipes_.begin()) return false;
  --after;
  return at < after->first + after->second.bytes;
}

uint64_t PagePipes::next_start(uint64_t at) const {
  auto after = pipes_.upper_bound(at);
  return after == pipes_.end() ? UINT64_MAX : after->first;
}

// Pulls the bytes from at up to the end of at's pipe (at most left) into the scratch pipe, unless bytes pulled for
// at are still pending there. 0 or -errno.
int PagePipes::pull(uint64_t at, uint64_t left, ServeScratch& scratch) const {
  if (scratch.pending() > 0) return 0;
  auto after = pipes_.upper_bound(at);
  if (after == pipes_.begin()) return -EIO;
  --after;
  const Pipe& pipe = after->second;
  if (at >= after->first + pipe.bytes) return -EIO;
  const uint64_t offset = at - after->first;
  const uint64_t want = offset + std::min(left, pipe.bytes - offset);
  // The scratch pipe needs as many slots as the stored pipe: tee() copies buffer references and stops when the
  // destination is full, and the leading offset bytes cannot be skipped before the tee.
  int err = scratch.ensure(pipe.capacity);
  if (err) return err;
  ssize_t teed;
  do {
    teed = tee(pipe.rd, scratch.write_fd(), want, SPLICE_F_NONBLOCK);
  } while (teed < 0 && errno == EINTR);
  if (teed > 0) scratch.set_pending(static_cast<uint64_t>(teed));
  if (teed <= 0 || static_cast<uint64_t>(teed) != want) {
    // Cannot happen with an empty scratch of the stored pipe's capacity; never send a short page.
    err = teed < 0 ? -errno : -EIO;
    scratch.reset();
    return err;
  }
  uint64_t skip = offset;
  while (skip > 0) {
    ssize_t n = splice(scratch.read_fd(), nullptr, null_fd_, nullptr, skip, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      err = n < 0 ? -errno : -EIO;
      scratch.reset();
      return err;
    }
    skip -= static_cast<uint64_t>(n);
    scratch.consumed(static_cast<uint64_t>(n));
  }
  return 0;
}

ssize_t PagePipes::send(uint64_t at, uint64_t left, int out_fd, bool more_follows, ServeScratch& scratch) const {
  if (left == 0) return 0;
  int err = pull(at, left, scratch);
  if (err) return err;
  const bool more = more_follows || scratch.pending() < left;
  ssize_t n;
  do {
    n = splice(scratch.read_fd(), nullptr, out_fd, nullptr, scratch.pending(),
               SPLICE_F_NONBLOCK | SPLICE_F_MOVE | (more ? SPLICE_F_MORE : 0));
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  if (n == 0) return -EIO;
  scratch.consumed(static_cast<uint64_t>(n));
  return n;
}

ssize_t PagePipes::copy_out(uint64_t at, uint64_t left, void* buf, size_t len, ServeScratch& scratch) const {
  if (left == 0 || len == 0) return 0;
  int err = pull(at, left, scratch);
  if (err) return err;
  ssize_t n;
  do {
    n = read(scratch.read_fd(), buf, static_cast<size_t>(std::min<uint64_t>(len, scratch.pending())));
  } while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  if (n == 0) return -EIO;
  scratch.consumed(static_cast<uint64_t>(n));
  return n;
}

}  // namespace lazyd
