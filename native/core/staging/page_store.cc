#include "staging/page_store.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

namespace lazyd {

bool key_from_dst_id(uint64_t dst_id, PageKey* key) {
  const uint64_t id = dst_id >> wire::PS_TYPE_BITS;
  switch (dst_id & wire::PS_TYPE_MASK) {
    // PS_TYPE_PID and the CR_FD_* numbers older CRIU sent for task pagemaps (docs/protocol.md §1.4).
    case wire::PS_TYPE_PID:
    case 10:
    case 11:
    case 16:
    case 17:
      *key = pid_key(id);
      return true;
    // PS_TYPE_SHMEM and the legacy shmem numbers.
    case wire::PS_TYPE_SHMEM:
    case 27:
    case 28:
    case 29:
    case 32:
    case 33:
    case 34:
      *key = shmem_key(id);
      return true;
    default:
      return false;
  }
}

bool key_from_get_pid(uint64_t pid, PageKey* key) {
  if (pid > wire::PID_MAX_LIMIT) return false;
  *key = pid_key(pid);
  return true;
}

std::string key_name(PageKey key) {
  const char* type = key_type(key) == wire::PS_TYPE_PID ? "pid" : key_type(key) == wire::PS_TYPE_SHMEM ? "shmem" : "?";
  return std::string(type) + " " + std::to_string(key_id(key));
}

const char* store_error_text(int code) {
  switch (code) {
    case kStoreCapExceeded: return "the staging memory cap would be exceeded";
    case kStoreBadEntry: return "bad entry (vaddr not page-aligned, nr_pages 0, range wraps, or bad flags)";
    case kStoreOutOfOrder: return "entry overlaps or precedes the previous entry of its pagemap (vaddr order)";
    case kStoreTooBig: return "entry has more pages than the per-entry limit";
    case kStoreBusy: return "payload still expected for the previous entry (or none expected)";
    case kStoreSealed: return "the store is sealed";
    case kStoreTruncated: return "the source ended in the middle of a payload";
    case kStoreVoid: return "the checkpoint became void (its relay failed and the dump resumed the tasks): its pages are no longer served";
    case -EMFILE: return "out of file descriptors (each page pipe costs 2 while filling)";
    case -ENOMEM: return "out of memory";
    default: return strerror(-code);
  }
}

bool MemoryBudget::try_reserve(uint64_t bytes) {
  uint64_t used = used_.load(std::memory_order_relaxed);
  do {
    if (bytes > limit_ || used > limit_ - bytes) return false;
  } while (!used_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
  return true;
}

void MemoryBudget::release(uint64_t bytes) { used_.fetch_sub(bytes, std::memory_order_relaxed); }

ServeScratch::~ServeScratch() {
  if (rd_ >= 0) close(rd_);
  if (wr_ >= 0) close(wr_);
}

int ServeScratch::ensure(size_t capacity) {
  if (rd_ < 0) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) return -errno;
    rd_ = fds[0];
    wr_ = fds[1];
    capacity_ = static_cast<size_t>(fcntl(wr_, F_GETPIPE_SZ));
  }
  if (capacity_ < capacity) {
    int got = fcntl(wr_, F_SETPIPE_SZ, static_cast<int>(capacity));
    if (got < 0) return -errno;
    capacity_ = static_cast<size_t>(got);
  }
  return 0;
}

int ServeScratch::reset() {
  char sink[4096];
  while (pending_ > 0) {
    ssize_t n = read(rd_, sink, std::min<uint64_t>(sizeof sink, pending_));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      // Cannot drain: start over with a fresh pipe.
      close(rd_);
      close(wr_);
      rd_ = wr_ = -1;
      capacity_ = 0;
      pending_ = 0;
      return n < 0 ? -errno : -EIO;
    }
    pending_ -= static_cast<uint64_t>(n);
  }
  return 0;
}

PageStore::PageStore(uint64_t page_size, const StoreLimits& limits)
    : page_size_(page_size), limits_(limits), budget_(limits.budget) {
  if (!budget_) budget_ = std::make_shared<MemoryBudget>(limits.max_bytes);
}

PageStore::~PageStore() { budget_->release(reserved_); }

int PageStore::open_key(PageKey key) {
  if (sealed_) return kStoreSealed;
  if (entries_.emplace(key, std::vector<StoreEntry>()).second) key_order_.push_back(key);
  return 0;
}

int PageStore::begin_entry(PageKey key, uint64_t vaddr, uint64_t nr_pages, uint32_t flags) {
  if (sealed_) return kStoreSealed;
  if (has_pending_) return kStoreBusy;
  const uint32_t known = wire::PE_PARENT | wire::PE_LAZY | wire::PE_PRESENT;
  if (flags == 0 || (flags & ~known) || ((flags & wire::PE_PARENT) && (flags & wire::PE_PRESENT))) {
    return kStoreBadEntry;
  }
  if (nr_pages == 0 || vaddr % page_size_ != 0) return kStoreBadEntry;
  if (nr_pages > limits_.max_entry_pages) return kStoreTooBig;
  if (nr_pages > (UINT64_MAX - vaddr) / page_size_) return kStoreBadEntry;
  auto it = entries_.find(key);
  if (it != entries_.end() && !it->second.empty()) {
    const StoreEntry& last = it->second.back();
    if (vaddr < last.vaddr + last.nr_pages * page_size_) return kStoreOutOfOrder;
  }
  const uint64_t bytes = nr_pages * page_size_;
  if (flags & wire::PE_PRESENT) {
    if (!budget_->try_reserve(bytes)) return kStoreCapExceeded;
    reserved_ += bytes;
  }
  open_key(key);
  pending_key_ = key;
  pending_ = StoreEntry{vaddr, nr_pages, flags, data_end_};
  has_pending_ = true;
  pending_left_ = (flags & wire::PE_PRESENT) ? bytes : 0;
  if (pending_left_ == 0) finish_entry();
  return 0;
}

int PageStore::preset_layout(const std::vector<LayoutEntry>& layout) {
  if (sealed_) return kStoreSealed;
  if (has_pending_ || entry_count_ != 0 || data_end_ != 0) return kStoreBusy;
  uint64_t total = 0;
  std::unordered_map<PageKey, uint64_t> key_end;  // end address of each key's last entry so far
  for (const LayoutEntry& e : layout) {
    if (e.flags == 0 || (e.flags & ~(wire::PE_LAZY | wire::PE_PRESENT))) return kStoreBadEntry;
    if (e.nr_pages == 0 || e.vaddr % page_size_ != 0) return kStoreBadEntry;
    if (e.nr_pages > (UINT64_MAX - e.vaddr) / page_size_) return kStoreBadEntry;
    auto end = key_end.find(e.key);
    if (end != key_end.end() && e.vaddr < end->second) return kStoreOutOfOrder;
    key_end[e.key] = e.vaddr + e.nr_pages * page_size_;
    if (e.flags & wire::PE_PRESENT) {
      if (e.nr_pages > (UINT64_MAX - total) / page_size_) return kStoreCapExceeded;
      total += e.nr_pages * page_size_;
    }
  }
  if (!budget_->try_reserve(total)) return kStoreCapExceeded;
  reserved_ += total;
  for (const LayoutEntry& e : layout) {
    open_key(e.key);
    entries_[e.key].push_back(StoreEntry{e.vaddr, e.nr_pages, e.flags, data_end_});
    if (e.flags & wire::PE_PRESENT) data_end_ += e.nr_pages * page_size_;
    entry_count_++;
  }
  return 0;
}

void PageStore::finish_entry() {
  entries_[pending_key_].push_back(pending_);
  has_pending_ = false;
  entry_count_++;
}

ssize_t PageStore::receive(int fd, uint64_t max) {
  if (!has_pending_ || pending_left_ == 0) return kStoreBusy;
  ssize_t n = put_from_fd(fd, std::min(max, pending_left_));
  if (n > 0) {
    data_end_ += static_cast<uint64_t>(n);
    pending_left_ -= static_cast<uint64_t>(n);
    if (pending_left_ == 0) finish_entry();
  }
  return n;
}

ssize_t PageStore::receive_bytes(const void* data, size_t len) {
  if (!has_pending_ || pending_left_ == 0) return kStoreBusy;
  ssize_t n = put_bytes(data, std::min<uint64_t>(len, pending_left_));
  if (n > 0) {
    data_end_ += static_cast<uint64_t>(n);
    pending_left_ -= static_cast<uint64_t>(n);
    if (pending_left_ == 0) finish_entry();
  }
  return n;
}

int PageStore::append(PageKey key, uint64_t vaddr, uint64_t nr_pages, uint32_t flags, int source_fd) {
  int err = begin_entry(key, vaddr, nr_pages, flags);
  if (err) return err;
  while (pending_left_ > 0) {
    ssize_t n = receive(source_fd, pending_left_);
    if (n > 0) continue;
    if (n == 0) return kStoreTruncated;
    if (n == -EINTR) continue;
    if (n != -EAGAIN) return static_cast<int>(n);
    pollfd p{source_fd, POLLIN, 0};
    if (poll(&p, 1, -1) < 0 && errno != EINTR) return -errno;
  }
  return 0;
}

int PageStore::seal() {
  if (sealed_) return 0;
  if (has_pending_) return kStoreBusy;
  int err = on_seal();
  if (err) return err;
  sealed_ = true;
  return 0;
}

LookupResult PageStore::lookup(PageKey key, uint64_t vaddr, uint64_t nr_pages, StoreSpan* span,
                               bool lazy_only) const {
  auto it = entries_.find(key);
  if (it == entries_.end()) return LookupResult::kUnknownPid;
  const std::vector<StoreEntry>& list = it->second;
  // The last entry starting at or before vaddr.
  auto after = std::upper_bound(list.begin(), list.end(), vaddr,
                                [](uint64_t addr, const StoreEntry& e) { return addr < e.vaddr; });
  if (after == list.begin()) return LookupResult::kNotDumped;
  const StoreEntry& entry = *(after - 1);
  const uint64_t end = entry.vaddr + entry.nr_pages * page_size_;
  if (vaddr >= end) return LookupResult::kNotDumped;
  if (!(entry.flags & wire::PE_PRESENT)) return LookupResult::kNoData;
  if (lazy_only && !(entry.flags & wire::PE_LAZY)) return LookupResult::kNotLazy;
  const uint64_t skip = (vaddr - entry.vaddr) / page_size_ * page_size_;
  span->nr_pages = std::min(nr_pages, (end - entry.vaddr - skip) / page_size_);
  span->flags = entry.flags;
  span->data_offset = entry.data_offset + skip;
  span->bytes = span->nr_pages * page_size_;
  return LookupResult::kFound;
}

const std::vector<StoreEntry>* PageStore::entries(PageKey key) const {
  auto it = entries_.find(key);
  return it == entries_.end() ? nullptr : &it->second;
}

int64_t PageStore::serve(PageKey key, uint64_t vaddr, uint64_t nr_pages, int out_fd) const {
  StoreSpan span;
  switch (lookup(key, vaddr, nr_pages, &span)) {
    case LookupResult::kFound: break;
    case LookupResult::kUnknownPid: return -ENOENT;
    default: return -ENODATA;
  }
  if (!own_scratch_) own_scratch_ = std::make_unique<ServeScratch>();
  uint64_t done = 0;
  while (done < span.bytes) {
    ssize_t n = send(span, done, out_fd, *own_scratch_);
    if (n > 0) {
      done += static_cast<uint64_t>(n);
      continue;
    }
    if (n == -EINTR) continue;
    if (n == -EAGAIN) {
      pollfd p{out_fd, POLLOUT, 0};
      if (poll(&p, 1, -1) < 0 && errno != EINTR) return -errno;
      continue;
    }
    own_scratch_->reset();
    return n < 0 ? n : -EIO;
  }
  return static_cast<int64_t>(span.nr_pages);
}

int64_t PageStore::write_pages(PageKey key, int out_fd, bool include_lazy) const {
  const std::vector<StoreEntry>* list = entries(key);
  if (!list) return -ENOENT;
  int64_t written = 0;
  for (const StoreEntry& entry : *list) {
    if (!(entry.flags & wire::PE_PRESENT)) continue;
    if (!include_lazy && (entry.flags & wire::PE_LAZY)) continue;
    int64_t pages = serve(key, entry.vaddr, entry.nr_pages, out_fd);
    if (pages < 0) return pages;
    if (static_cast<uint64_t>(pages) != entry.nr_pages) return -EIO;
    written += pages * static_cast<int64_t>(page_size_);
  }
  return written;
}

size_t pipe_max_size() {
  size_t value = 1 << 20;
  if (FILE* f = fopen("/proc/sys/fs/pipe-max-size", "re")) {
    unsigned long v = 0;
    if (fscanf(f, "%lu", &v) == 1 && v >= 4096) value = v;
    fclose(f);
  }
  return value;
}

}  // namespace lazyd
