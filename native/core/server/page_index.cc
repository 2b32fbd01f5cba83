#include "server/page_index.h"

#include <algorithm>
#include <cerrno>
#include <fcntl.h>
#include <unistd.h>

#include "wire/wire.h"

namespace lazyd {

PageIndex::~PageIndex() {
  for (int fd : fds_) close(fd);
}

int PageIndex::add_file(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  fds_.push_back(fd);
  return static_cast<int>(fds_.size() - 1);
}

int PageIndex::add_task(uint64_t pid, std::vector<PageRun> runs) {
  if (tasks_.count(pid)) return -EEXIST;
  uint64_t previous_end = 0;
  for (const PageRun& run : runs) {
    if (run.nr_pages == 0 || run.vaddr % page_size_ != 0 || run.vaddr < previous_end) return -EINVAL;
    if (run.file >= static_cast<int32_t>(fds_.size())) return -EINVAL;
    if ((run.flags & wire::PE_PRESENT) && run.file < 0) return -EINVAL;
    if (run.nr_pages > (UINT64_MAX - run.vaddr) / page_size_) return -EINVAL;
    previous_end = run.vaddr + run.nr_pages * page_size_;
  }
  tasks_.emplace(pid, std::move(runs));
  return 0;
}

LookupResult PageIndex::lookup(uint64_t pid, uint64_t vaddr, uint64_t nr_pages, PageSpan* span) const {
  auto task = tasks_.find(pid);
  if (task == tasks_.end()) return LookupResult::kUnknownPid;
  const std::vector<PageRun>& runs = task->second;
  // The last run starting at or before vaddr.
  auto after = std::upper_bound(runs.begin(), runs.end(), vaddr,
                                [](uint64_t addr, const PageRun& run) { return addr < run.vaddr; });
  if (after == runs.begin()) return LookupResult::kNotDumped;
  const PageRun& run = *(after - 1);
  const uint64_t run_end = run.vaddr + run.nr_pages * page_size_;
  if (vaddr >= run_end) return LookupResult::kNotDumped;
  if (!(run.flags & wire::PE_PRESENT) || run.file < 0) return LookupResult::kNoData;
  if (!(run.flags & wire::PE_LAZY)) return LookupResult::kNotLazy;
  const uint64_t pages_left = (run_end - vaddr) / page_size_;
  span->fd = fds_[run.file];
  span->file_offset = run.file_offset + (vaddr - run.vaddr);
  span->nr_pages = std::min(nr_pages, pages_left);
  return LookupResult::kFound;
}

}  // namespace lazyd
