#include "lazy/lazy_ranges.h"

#include <algorithm>
#include <cerrno>

namespace lazyd {

// ---- RangeSet ----

void RangeSet::split_at(uint64_t addr) {
  auto it = map_.upper_bound(addr);
  if (it == map_.begin()) return;
  --it;
  LazyRange& piece = it->second;
  if (addr <= piece.start || addr >= piece.end) return;
  LazyRange tail = piece;
  tail.start = addr;
  tail.img_start = piece.img_start + (addr - piece.start);
  piece.end = addr;
  map_.emplace(addr, tail);
}

void RangeSet::insert(const LazyRange& range) {
  if (range.end <= range.start) return;
  LazyRange merged = range;
  auto next = map_.lower_bound(range.start);
  if (next != map_.begin()) {
    auto prev = std::prev(next);
    const LazyRange& p = prev->second;
    if (p.end == merged.start && p.seg == merged.seg && p.img_end() == merged.img_start) {
      merged.start = p.start;
      merged.img_start = p.img_start;
      map_.erase(prev);
    }
  }
  if (next != map_.end()) {
    const LazyRange& n = next->second;
    if (n.start == merged.end && n.seg == merged.seg && n.img_start == merged.img_end()) {
      merged.end = n.end;
      map_.erase(next);
    }
  }
  pages_ += range.len() / page_size_;
  map_[merged.start] = merged;
}

std::vector<LazyRange> RangeSet::remove(uint64_t start, uint64_t end) {
  std::vector<LazyRange> removed;
  if (end <= start) return removed;
  split_at(start);
  split_at(end);
  for (auto it = map_.lower_bound(start); it != map_.end() && it->first < end;) {
    removed.push_back(it->second);
    pages_ -= it->second.len() / page_size_;
    it = map_.erase(it);
  }
  return removed;
}

const LazyRange* RangeSet::find(uint64_t addr) const {
  auto it = map_.upper_bound(addr);
  if (it == map_.begin()) return nullptr;
  --it;
  return it->second.contains(addr) ? &it->second : nullptr;
}

const LazyRange* RangeSet::starting_at(uint64_t addr) const {
  auto it = map_.find(addr);
  return it == map_.end() ? nullptr : &it->second;
}

std::vector<LazyRange> RangeSet::list() const {
  std::vector<LazyRange> out;
  out.reserve(map_.size());
  for (const auto& entry : map_) out.push_back(entry.second);
  return out;
}

std::vector<LazyRange> RangeSet::overlapping_img(uint64_t img_start, uint64_t img_end) const {
  std::vector<LazyRange> out;
  for (const auto& entry : map_) {
    const LazyRange& p = entry.second;
    const uint64_t lo = std::max(p.img_start, img_start);
    const uint64_t hi = std::min(p.img_end(), img_end);
    if (lo >= hi) continue;
    LazyRange clipped = p;
    clipped.start = p.start + (lo - p.img_start);
    clipped.end = clipped.start + (hi - lo);
    clipped.img_start = lo;
    out.push_back(clipped);
  }
  std::sort(out.begin(), out.end(),
            [](const LazyRange& a, const LazyRange& b) { return a.img_start < b.img_start; });
  return out;
}

// ---- LazyRanges ----

int LazyRanges::build(std::vector<LazyRange> ranges) {
  const uint64_t mask = page_size_ - 1;
  std::sort(ranges.begin(), ranges.end(), [](const LazyRange& a, const LazyRange& b) { return a.start < b.start; });
  for (size_t i = 0; i < ranges.size(); i++) {
    const LazyRange& r = ranges[i];
    if (r.end <= r.start || (r.start & mask) || (r.end & mask) || (r.img_start & mask)) return -EINVAL;
    if (i > 0 && ranges[i - 1].end > r.start) return -EINVAL;
  }
  remaining_ = RangeSet(page_size_);
  in_flight_ = RangeSet(page_size_);
  next_seg_ = 1;
  for (LazyRange r : ranges) {
    r.seg = next_seg_++;
    remaining_.insert(r);
  }
  return 0;
}

LazyRanges::Where LazyRanges::lookup(uint64_t addr) const {
  if (remaining_.find(addr)) return Where::kRemaining;
  if (in_flight_.find(addr)) return Where::kInFlight;
  return Where::kNone;
}

LazyRequest LazyRanges::in_flight_page(uint64_t addr) const {
  LazyRequest request;
  const uint64_t at = addr & ~(page_size_ - 1);
  const LazyRange* piece = in_flight_.find(at);
  if (!piece) return request;
  request.img_start = piece->img_start + (at - piece->start);
  request.len = page_size_;
  return request;
}

LazyRequest LazyRanges::take(uint64_t addr, uint64_t max_bytes) {
  LazyRequest request;
  uint64_t at = addr & ~(page_size_ - 1);
  max_bytes &= ~(page_size_ - 1);
  if (max_bytes < page_size_) max_bytes = page_size_;
  const LazyRange* piece = remaining_.find(at);
  if (!piece) return request;
  request.img_start = piece->img_start + (at - piece->start);
  // Walk forward through pieces that continue the run both in current and in image addresses, so one GET (and
  // usually one UFFDIO_COPY) covers them.
  while (piece && request.len < max_bytes) {
    const uint64_t end = std::min(piece->end, at + (max_bytes - request.len));
    const uint64_t img = piece->img_start + (at - piece->start);
    if (img != request.img_start + request.len) break;
    for (const LazyRange& part : remaining_.remove(at, end)) in_flight_.insert(part);
    request.len += end - at;
    at = end;
    piece = remaining_.starting_at(at);
  }
  return request;
}

LazyRequest LazyRanges::next_background(uint64_t max_bytes) {
  const LazyRange* first = remaining_.first();
  if (!first) return LazyRequest{};
  return take(first->start, max_bytes);
}

std::vector<LazyRange> LazyRanges::claim(uint64_t img_start, uint64_t len) {
  std::vector<LazyRange> pieces = in_flight_.overlapping_img(img_start, img_start + len);
  for (const LazyRange& piece : pieces) in_flight_.remove(piece.start, piece.end);
  return pieces;
}

uint64_t LazyRanges::complete(uint64_t img_start, uint64_t len) {
  uint64_t pages = 0;
  for (const LazyRange& piece : claim(img_start, len)) pages += piece.len() / page_size_;
  return pages;
}

void LazyRanges::release(uint64_t img_start, uint64_t len) {
  for (const LazyRange& piece : claim(img_start, len)) remaining_.insert(piece);
}

void LazyRanges::remap(uint64_t from, uint64_t to, uint64_t len) {
  if (len == 0 || from == to) return;
  std::vector<LazyRange> moved_remaining = remaining_.remove(from, from + len);
  std::vector<LazyRange> moved_in_flight = in_flight_.remove(from, from + len);
  // mremap(MREMAP_FIXED) unmaps whatever was at the destination; the UNMAP event for it may come later or not at
  // all, so forget it here.
  remaining_.remove(to, to + len);
  in_flight_.remove(to, to + len);
  // One mremap moves part of one VMA into one new VMA: every moved piece gets the same new seg.
  const uint32_t seg = next_seg_++;
  auto shift = [&](LazyRange piece) {
    piece.start = piece.start - from + to;
    piece.end = piece.end - from + to;
    piece.seg = seg;
    return piece;
  };
  for (const LazyRange& piece : moved_remaining) remaining_.insert(shift(piece));
  for (const LazyRange& piece : moved_in_flight) in_flight_.insert(shift(piece));
}

uint64_t LazyRanges::drop(uint64_t start, uint64_t end) {
  start &= ~(page_size_ - 1);
  end = (end + page_size_ - 1) & ~(page_size_ - 1);
  uint64_t pages = 0;
  for (const LazyRange& piece : remaining_.remove(start, end)) pages += piece.len() / page_size_;
  for (const LazyRange& piece : in_flight_.remove(start, end)) pages += piece.len() / page_size_;
  return pages;
}

LazyRanges LazyRanges::fork_copy() const {
  LazyRanges child(page_size_);
  child.remaining_ = remaining_;
  for (const LazyRange& piece : in_flight_.list()) child.remaining_.insert(piece);
  child.next_seg_ = next_seg_;
  return child;
}

}  // namespace lazyd
