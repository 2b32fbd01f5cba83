// Per-task bookkeeping of lazy memory (docs/protocol.md §4.3, §4.4): which ranges are still missing, which have been
// requested from the page source and not yet installed, at which address each range lives now, and at which
// address it lived at dump time (the page server only knows the latter).
//
// Two sets of page-aligned, non-overlapping ranges keyed by their *current* address:
//   remaining  not requested yet;
//   in flight  requested, reply not installed yet.
// A page is in at most one of them; a page in neither is installed, dropped (madvise/munmap) or was never lazy.
// Pure bookkeeping: no syscalls, so every edge case is unit-tested (native/tests/lazy_ranges_test.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

namespace lazyd {

struct LazyRange {
  uint64_t start = 0;      // current address (changes on mremap)
  uint64_t end = 0;        // exclusive
  uint64_t img_start = 0;  // address at dump time: what a GET asks for (§1.6)
  // Pieces with equal seg lie in one VMA, so touching pieces of one seg may be merged (a UFFDIO_COPY must not
  // cross a VMA end, §4.3). build() gives every input range its own seg; a REMAP gives the moved pieces a new one.
  uint32_t seg = 0;

  uint64_t len() const { return end - start; }
  uint64_t img_end() const { return img_start + (end - start); }
  bool contains(uint64_t addr) const { return addr >= start && addr < end; }
};

// A request to send: a run of image addresses [img_start, img_start + len), one GET.
struct LazyRequest {
  uint64_t img_start = 0;
  uint64_t len = 0;  // bytes; 0 means nothing was taken
  explicit operator bool() const { return len != 0; }
};

// A sorted set of non-overlapping ranges keyed by current address, with a page count. Used twice by LazyRanges.
class RangeSet {
 public:
  explicit RangeSet(uint64_t page_size) : page_size_(page_size) {}

  // Inserts a range that overlaps nothing in the set; merges it with touching neighbours of the same seg whose
  // image addresses are contiguous too.
  void insert(const LazyRange& range);
  // Removes [start, end) (splitting pieces at the edges) and returns the removed parts in address order.
  std::vector<LazyRange> remove(uint64_t start, uint64_t end);
  // The piece containing addr, or nullptr.
  const LazyRange* find(uint64_t addr) const;
  const LazyRange* first() const { return map_.empty() ? nullptr : &map_.begin()->second; }
  // The piece starting exactly at addr, or nullptr.
  const LazyRange* starting_at(uint64_t addr) const;

  uint64_t pages() const { return pages_; }
  size_t size() const { return map_.size(); }
  bool empty() const { return map_.empty(); }
  std::vector<LazyRange> list() const;
  // Pieces whose image range overlaps [img_start, img_end), in image order (clipped to it).
  std::vector<LazyRange> overlapping_img(uint64_t img_start, uint64_t img_end) const;

 private:
  void split_at(uint64_t addr);

  uint64_t page_size_;
  std::map<uint64_t, LazyRange> map_;
  uint64_t pages_ = 0;
};

class LazyRanges {
 public:
  enum class Where { kNone, kRemaining, kInFlight };

  explicit LazyRanges(uint64_t page_size = 4096) : page_size_(page_size), remaining_(page_size), in_flight_(page_size) {}

  // Initial ranges from the images, already split at VMA ends by the caller; img_start is taken as given
  // (normally == start). Returns 0, or -EINVAL when a range is empty, unaligned or overlaps another. Replaces
  // any previous content.
  int build(std::vector<LazyRange> ranges);

  Where lookup(uint64_t addr) const;

  // For a fault (or fault-around) at addr: moves the page holding addr, plus following pages while they are
  // remaining and contiguous both now and at dump time, up to max_bytes in total (at least one page), to the
  // in-flight set. Returns the image run to request; empty when addr's page is not remaining.
  LazyRequest take(uint64_t addr, uint64_t max_bytes);
  // The page holding addr as a one-page request when it is in flight (asked for already), else empty; nothing moves.
  LazyRequest in_flight_page(uint64_t addr) const;
  // Background drain: take() from the start of the lowest remaining piece.
  LazyRequest next_background(uint64_t max_bytes);

  // A reply for [img_start, img_start+len) arrived: removes the in-flight parts it covers and returns them (image
  // order) for installation. Parts dropped meanwhile (REMOVE/UNMAP) are simply absent: their data is discarded.
  std::vector<LazyRange> claim(uint64_t img_start, uint64_t len);
  // claim() + forget: the range is installed. Returns the pages marked done.
  uint64_t complete(uint64_t img_start, uint64_t len);
  // Puts a claimed piece (or its tail) back: not installed, must be requested again.
  void requeue(const LazyRange& piece) { remaining_.insert(piece); }
  // Puts a claimed piece back in flight (its data is still held, e.g. an install to retry after EAGAIN).
  void unclaim(const LazyRange& piece) { in_flight_.insert(piece); }
  // In-flight parts of [img_start, img_start+len) go back to remaining (a short reply, N' < N).
  void release(uint64_t img_start, uint64_t len);

  // UFFD_EVENT_REMAP: [from, from+len) moved to [to, to+len). Image addresses are kept. Anything we had at the
  // destination is dropped (mremap unmapped it).
  void remap(uint64_t from, uint64_t to, uint64_t len);
  // UFFD_EVENT_REMOVE / UNMAP: forget [start, end) in both sets. Returns the pages dropped.
  uint64_t drop(uint64_t start, uint64_t end);
  // UFFD_EVENT_FORK: the child lacks what the parent lacks, and the parent's in-flight replies will be installed
  // in the parent only, so they go back to remaining for the child (§4.4, §6.1).
  LazyRanges fork_copy() const;

  uint64_t pages_remaining() const { return remaining_.pages(); }
  uint64_t pages_in_flight() const { return in_flight_.pages(); }
  bool done() const { return remaining_.empty() && in_flight_.empty(); }
  uint64_t page_size() const { return page_size_; }

  std::vector<LazyRange> remaining() const { return remaining_.list(); }
  std::vector<LazyRange> in_flight() const { return in_flight_.list(); }

 private:
  uint64_t page_size_;
  RangeSet remaining_;
  RangeSet in_flight_;
  uint32_t next_seg_ = 1;
};

}  // namespace lazyd
