// Page-aligned reply buffers of the fault engine, reused: a fresh mmap per request would pay a page fault per
// page on every reply. Two size classes (fault-around, the drain's largest request) and exact sizes above.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <unordered_map>

namespace lazyd::engine {

class BufferPool {
 public:
  BufferPool() = default;
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;
  ~BufferPool() {
    for (auto& entry : free_) munmap(entry.second, entry.first);
    for (auto& entry : used_) munmap(entry.first, entry.second);
  }

  // A buffer of at least len bytes, or null when out of memory.
  uint8_t* get(size_t len, size_t cls_small, size_t cls_large) {
    const size_t cap = len <= cls_small ? cls_small : len <= cls_large ? cls_large : len;
    auto it = free_.find(cap);
    uint8_t* buf;
    if (it != free_.end()) {
      buf = it->second;
      free_.erase(it);
    } else {
      void* p = mmap(nullptr, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return nullptr;
      buf = static_cast<uint8_t*>(p);
    }
    used_[buf] = cap;
    return buf;
  }

  void put(uint8_t* buf) {
    auto it = used_.find(buf);
    if (it == used_.end()) return;
    free_.emplace(it->second, buf);
    used_.erase(it);
  }

 private:
  std::multimap<size_t, uint8_t*> free_;
  std::unordered_map<uint8_t*, size_t> used_;
};

}  // namespace lazyd::engine
