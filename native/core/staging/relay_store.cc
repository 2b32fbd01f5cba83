#include "staging/relay_store.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>  // memfd_create
#include <sys/sendfile.h>
#include <unistd.h>

#include "util/text.h"

namespace lazyd {

RelayStore::RelayStore(uint64_t page_size, std::shared_ptr<MemoryBudget> budget)
    : PageStore(page_size, StoreLimits{std::move(budget)}) {}

RelayStore::~RelayStore() {
  if (fd_ >= 0) close(fd_);
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
  // shmem allocates a page only when it is written: the size costs nothing until the pages arrive.
  if (ftruncate(fd_, static_cast<off_t>(file_size_)) < 0) {
    *error = std::string("cannot size the staging memfd: ") + strerror(errno);
    return -errno;
  }
  return 0;
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

int RelayStore::finish(bool complete, const std::string& reason) {
  if (state() != State::kFilling) return 0;
  reason_ = reason;
  state_.store(complete ? State::kComplete : State::kIncomplete, std::memory_order_release);
  // No served page changes from here on.
  if (fd_ >= 0 && fcntl(fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) return -errno;
  return seal();
}

uint64_t RelayStore::pages_ready(const StoreSpan& span) const {
  const uint64_t first = span.data_offset / page_size();
  uint64_t ready = 0;
  while (ready < span.nr_pages && first + ready < pages_total_ && present_[first + ready]) ready++;
  return ready;
}

std::string RelayStore::missing_reason() const {
  if (state() != State::kIncomplete) return "";
  return "the relay never got this page (" + reason_ + "): the checkpoint is incomplete, its missing pages are never served";
}

ssize_t RelayStore::send(const StoreSpan& span, uint64_t done, int out_fd, ServeScratch&) const {
  if (done >= span.bytes) return 0;
  if (span.data_offset + span.bytes > file_size_) return -EIO;
  for (;;) {
    off_t off = static_cast<off_t>(span.data_offset + done);
    ssize_t n = sendfile(out_fd, fd_, &off, span.bytes - done);
    if (n > 0) return n;
    if (n == 0) return -EIO;
    if (errno != EINTR) return -errno;
  }
}

ssize_t RelayStore::copy_out(const StoreSpan& span, uint64_t done, void* buf, size_t len, ServeScratch&) const {
  if (done >= span.bytes || len == 0) return 0;
  if (span.data_offset + span.bytes > file_size_) return -EIO;
  const uint64_t want = std::min<uint64_t>(len, span.bytes - done);
  for (;;) {
    ssize_t n = pread(fd_, buf, static_cast<size_t>(want), static_cast<off_t>(span.data_offset + done));
    if (n > 0) return n;
    if (n == 0) return -EIO;
    if (errno != EINTR) return -errno;
  }
}

StoreResources RelayStore::resources() const {
  StoreResources r;
  r.fds = fd_ >= 0;
  r.file_bytes = file_size_;
  return r;
}

}  // namespace lazyd
