// Where each dumped page's bytes live: per pid, the pagemap entries in vaddr order, each pointing into an
// open pages-N.img. Built once by the control plane from the images, then read-only and shared by every
// session of the page server.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "wire/lookup_result.h"

namespace lazyd {

struct PageRun {
  uint64_t vaddr = 0;     // dump-time address of the first page
  uint64_t nr_pages = 0;
  uint32_t flags = 0;     // PE_* (wire.h)
  int32_t file = -1;      // index into PageIndex files, -1 when the entry has no data
  uint64_t file_offset = 0;
};

struct PageSpan {
  int fd = -1;
  uint64_t file_offset = 0;
  uint64_t nr_pages = 0;  // clamped to the end of the pagemap entry, as CRIU clamps to its page-pipe iovec
};

class PageIndex {
 public:
  explicit PageIndex(uint64_t page_size) : page_size_(page_size) {}
  ~PageIndex();
  PageIndex(const PageIndex&) = delete;
  PageIndex& operator=(const PageIndex&) = delete;

  // Opens a pages image read-only. Returns its index, or -errno.
  int add_file(const std::string& path);
  // Adds one task's entries. Returns 0, or -EINVAL when they are unsorted, overlap, are unaligned or point at
  // a file index that does not exist, or -EEXIST when the pid was added before.
  int add_task(uint64_t pid, std::vector<PageRun> runs);

  LookupResult lookup(uint64_t pid, uint64_t vaddr, uint64_t nr_pages, PageSpan* span) const;

  uint64_t page_size() const { return page_size_; }
  size_t task_count() const { return tasks_.size(); }

 private:
  uint64_t page_size_;
  std::vector<int> fds_;
  std::unordered_map<uint64_t, std::vector<PageRun>> tasks_;
};

}  // namespace lazyd
