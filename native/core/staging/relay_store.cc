#include "staging/relay_store.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>  // memfd_create
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <unistd.h>

#include "util/text.h"

namespace lazyd {

namespace {

// Most bytes per pipe, and its F_SETPIPE_SZ request (256 slots: enough for 1 MiB of page-sized buffers; loopback
// TCP's buffers are larger). Serving the last page of a pipe costs ~65 ns per buffer ahead of it.
constexpr uint64_t kPipeBytes = 1 << 20;

uint64_t default_max_pipes() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) < 0 || limit.rlim_cur == RLIM_INFINITY) return 4096;
  return static_cast<uint64_t>(limit.rlim_cur) / 4;
}

}  // namespace

RelayStore::RelayStore(uint64_t page_size, std::shared_ptr<MemoryBudget> budget, bool by_reference, uint64_t max_pipes)
    : PageStore(page_size, StoreLimits{std::move(budget)}),
      by_reference_(by_reference),
      pipes_(kPipeBytes, kPipeBytes, true, max_pipes ? max_pipes : default_max_pipes()) {}

RelayStore::~RelayStore() {
  if (fd_ >= 0) close(fd_);
  if (copy_pipe_[0] >= 0) close(copy_pipe_[0]);
  if (copy_pipe_[1] >= 0) close(copy_pipe_[1]);
}

int RelayStore::init(const std::vector<RelayTask>& tasks, std::string* error) {
  std::vector<LayoutEntry> layout;
  for (const RelayTask& task : tasks) {
    PageKey key;
    if (!key_from_get_pid(task.pid, &key) || task.pid == 0) {
      *error = "pid " + std::to_string(task.pid) + " is not a pid";
      return -EINVAL;
    }
    std::vector<RelayRange> ranges = task.ranges;
    std::sort(ranges.begin(), ranges.end(), [](const RelayRange& a, const RelayRange& b) { return a.vaddr < b.vaddr; });
    for (const RelayRange& range : ranges) {
      layout.push_back(LayoutEntry{key, range.vaddr, range.nr_pages, wire::PE_LAZY | wire::PE_PRESENT});
    }
  }
  const int rc = preset_layout(layout);
  if (rc == kStoreCapExceeded) {
    uint64_t pages = 0;
    for (const LayoutEntry& e : layout) pages += e.nr_pages;
    *error = "the relayed checkpoint needs " + std::to_string(pages * page_size() >> 20) + " MiB of staging memory, " +
             "but only " + std::to_string((budget().limit() - budget().used()) >> 20) + " MiB of the " +
             std::to_string(budget().limit() >> 20) + " MiB cap are free (--staging-max-bytes): raise the cap or " +
             "release a staged checkpoint";
    return rc;
  }
  if (rc < 0) {
    *error = std::string("bad lazy ranges: ") + store_error_text(rc) + " (two tasks with one pid, or overlapping ranges)";
    return rc;
  }
  pages_total_ = bytes_reserved() / page_size();
  present_.assign(pages_total_, 0);
  fd_ = memfd_create("lazyd-relayed-pages", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd_ < 0) {
    *error = std::string("cannot create the staging memfd: ") + strerror(errno);
    return -errno;
  }
  file_size_ = pages_total_ * page_size();
  // The memfd's way in, made now: it is what is left when pipes run out (no fd for one more).
  if (pipe2(copy_pipe_, O_NONBLOCK | O_CLOEXEC) < 0) {
    *error = std::string("cannot create a pipe for the staging memfd: ") + strerror(errno);
    return -errno;
  }
  fcntl(copy_pipe_[1], F_SETPIPE_SZ, 1 << 20);  // best effort: larger steps, fewer calls
  // shmem allocates a page only when it is written: the size costs nothing until the pages arrive.
  if (ftruncate(fd_, static_cast<off_t>(file_size_)) < 0) {
    *error = std::string("cannot size the staging memfd: ") + strerror(errno);
    return -errno;
  }
  return 0;
}

ssize_t RelayStore::take_from(int socket_fd, uint64_t at, size_t want, std::string* error) {
  if (at + want > file_size_) {
    *error = "a reply reaches past the relayed layout";
    return -ERANGE;
  }
  if (by_reference_) {
    const ssize_t n = pipes_.splice_in(socket_fd, at, want);
    if (n > 0) bytes_referenced_ += static_cast<uint64_t>(n);
    if (n != PagePipes::kNoPipe) {
      if (n < 0 && n != -EAGAIN) *error = std::string("cannot splice into a page pipe: ") + strerror(static_cast<int>(-n));
      return n;
    }
    by_reference_ = false;  // no more pipes to be had: the rest is copied into the memfd
  }
  return memfd_sink(socket_fd, at, want, error);
}

// socket -> pipe moves the received buffers (no copy); pipe -> memfd copies them into the file's pages.
ssize_t RelayStore::memfd_sink(int socket_fd, uint64_t at, size_t want, std::string* error) {
  auto failed = [&](int err) -> ssize_t {
    *error = std::string("cannot write into the staging memfd: ") + strerror(err);
    return -err;
  };
  ssize_t n;
  do {
    n = splice(socket_fd, nullptr, copy_pipe_[1], nullptr, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno == EWOULDBLOCK ? -EAGAIN : -errno;
  if (n == 0) return 0;
  loff_t off = static_cast<loff_t>(at);
  size_t left = static_cast<size_t>(n);
  while (left > 0) {
    ssize_t m = splice(copy_pipe_[0], nullptr, fd_, &off, left, SPLICE_F_MOVE);
    if (m < 0 && errno == EINTR) continue;
    if (m <= 0) return failed(m < 0 ? errno : EIO);
    left -= static_cast<size_t>(m);
  }
  bytes_copied_ += static_cast<uint64_t>(n);
  return n;
}

ssize_t RelayStore::put(const void* bytes, size_t len, uint64_t at, std::string* error) {
  if (at + len > file_size_) {
    *error = "a reply reaches past the relayed layout";
    return -ERANGE;
  }
  size_t written = 0;
  while (written < len) {
    ssize_t w = pwrite(fd_, static_cast<const char*>(bytes) + written, len - written, static_cast<off_t>(at + written));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const int err = w < 0 ? errno : EIO;
      *error = std::string("cannot write into the staging memfd: ") + strerror(err);
      return -err;
    }
    written += static_cast<size_t>(w);
  }
  bytes_copied_ += len;
  return static_cast<ssize_t>(len);
}

int RelayStore::mark_present(uint64_t first, uint64_t count) {
  if (first > pages_total_ || count > pages_total_ - first) return -ERANGE;
  for (uint64_t i = first; i < first + count; i++) {
    if (present_[i]) return -EEXIST;
  }
  std::fill(present_.begin() + static_cast<ptrdiff_t>(first), present_.begin() + static_cast<ptrdiff_t>(first + count), 1);
  pages_held_.fetch_add(count, std::memory_order_relaxed);
  return 0;
}

int RelayStore::finish(bool complete, const std::string& reason, bool void_held) {
  if (state() != State::kFilling) return 0;
  reason_ = reason;
  void_ = !complete && void_held && pipes_.pipe_count() > 0;
  if (void_) pipes_.clear();  // their pages go back to the kernel once no reply in progress references them
  else pipes_.seal();
  state_.store(complete ? State::kComplete : State::kIncomplete, std::memory_order_release);
  // No served page changes from here on.
  if (fd_ >= 0 && fcntl(fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) return -errno;
  return seal();
}

uint64_t RelayStore::pages_ready(const StoreSpan& span) const {
  if (void_) return 0;
  const uint64_t first = span.data_offset / page_size();
  uint64_t ready = 0;
  while (ready < span.nr_pages && first + ready < pages_total_ && present_[first + ready]) ready++;
  return ready;
}

std::string RelayStore::missing_reason() const {
  if (state() != State::kIncomplete) return "";
  if (void_) {
    return "the relay failed (" + reason_ + ") and the dump resumed the original tasks: the checkpoint is void, none " +
           "of its pages is served";
  }
  return "the relay never got this page (" + reason_ + "): the checkpoint is incomplete, its missing pages are never served";
}

ssize_t RelayStore::send(const StoreSpan& span, uint64_t done, int out_fd, ServeScratch& scratch) const {
  // A reply in progress when the checkpoint became void stops here: its pipes are gone (the memfd behind them holds
  // no page of theirs) and even bytes already teed into the scratch reference pages the resumed tasks may change.
  if (void_) return kStoreVoid;
  if (done >= span.bytes) return 0;
  if (span.data_offset + span.bytes > file_size_) return -EIO;
  const uint64_t at = span.data_offset + done;
  if (scratch.pending() > 0 || pipes_.holds(at)) return pipes_.send(at, span.bytes - done, out_fd, false, scratch);
  // In the memfd: up to the next bytes held by reference.
  const uint64_t len = std::min(span.bytes - done, pipes_.next_start(at) - at);
  for (;;) {
    off_t off = static_cast<off_t>(at);
    ssize_t n = sendfile(out_fd, fd_, &off, len);
    if (n > 0) return n;
    if (n == 0) return -EIO;
    if (errno != EINTR) return -errno;
  }
}

ssize_t RelayStore::copy_out(const StoreSpan& span, uint64_t done, void* buf, size_t len, ServeScratch& scratch) const {
  if (void_) return kStoreVoid;  // as send()
  if (done >= span.bytes || len == 0) return 0;
  if (span.data_offset + span.bytes > file_size_) return -EIO;
  const uint64_t at = span.data_offset + done;
  if (scratch.pending() > 0 || pipes_.holds(at)) return pipes_.copy_out(at, span.bytes - done, buf, len, scratch);
  const uint64_t want = std::min<uint64_t>({len, span.bytes - done, pipes_.next_start(at) - at});
  for (;;) {
    ssize_t n = pread(fd_, buf, static_cast<size_t>(want), static_cast<off_t>(at));
    if (n > 0) return n;
    if (n == 0) return -EIO;
    if (errno != EINTR) return -errno;
  }
}

StoreResources RelayStore::resources() const {
  StoreResources r;
  r.fds = (fd_ >= 0) + pipes_.fds() + 2;
  r.pipes = pipes_.pipe_count();
  r.file_bytes = file_size_;
  return r;
}

}  // namespace lazyd
