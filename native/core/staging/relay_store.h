// The pages of a relayed checkpoint (relay staging: lazyd is the lazy client of a `criu dump --lazy-pages` on the
// same host and pulls every lazy page into its own memory, staging/relay.h). Unlike an upload, the layout is known
// before any byte arrives (the PE_LAZY entries of each task, from the dump's pagemaps), so every page has its
// position from the start and pages may arrive in any order (the bulk pull, and pages fetched ahead of it for a
// restore that waits). A span is served only once its pages are present: pages_ready() says how many are.
//
// One memfd holding the whole layout, written at each page's position by the relay's page client (splice from
// the socket: one copy, and shmem pages written whole are not zeroed first, which a write through a mapping
// costs) and served like MemfdStore (sendfile; copy_out for TLS). The whole size is charged to the memory budget
// when the layout is set, before the pull starts. finish() ends filling and seals the memfd, complete or not; an
// incomplete store says why its missing pages never will come.
//
// Filling and serving both run on the page server's thread; the counters are atomics, readable from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "staging/page_store.h"

namespace lazyd {

struct RelayRange {
  uint64_t vaddr = 0;  // dump-time address, page-aligned
  uint64_t nr_pages = 0;
};

struct RelayTask {
  uint64_t pid = 0;
  std::vector<RelayRange> ranges;  // the PE_LAZY entries of the task's pagemap
};

class RelayStore final : public PageStore {
 public:
  enum class State { kFilling, kComplete, kIncomplete };

  RelayStore(uint64_t page_size, std::shared_ptr<MemoryBudget> budget);
  ~RelayStore() override;

  // Lays out every task's ranges (sorted by address per task), charges their bytes to the budget, creates and
  // sizes the memfd. 0 or a negative code; *error one line naming the cause (kStoreCapExceeded: the cap).
  int init(const std::vector<RelayTask>& tasks, std::string* error);

  uint64_t pages_total() const { return pages_total_; }
  uint64_t pages_held() const { return pages_held_.load(std::memory_order_relaxed); }
  State state() const { return state_.load(std::memory_order_acquire); }

  // ---- Filling (the relay) ----

  // Page number n of the layout (0 .. pages_total()-1) is at byte n * page_size of memfd().
  int memfd() const { return fd_; }
  bool present(uint64_t page) const { return present_[page] != 0; }
  // The bytes of pages [first, first + count) are in place. -EEXIST if one was present already (nothing marked).
  int mark_present(uint64_t first, uint64_t count);
  // Ends filling: complete (every page present) or not, with the reason a GET for a missing page is refused.
  // Seals the memfd. Returns 0 or -errno.
  int finish(bool complete, const std::string& reason);

  // ---- Serving ----

  uint64_t pages_ready(const StoreSpan& span) const override;
  std::string missing_reason() const override;
  const char* kind() const override { return "relay"; }
  ssize_t send(const StoreSpan& span, uint64_t done, int out_fd, ServeScratch& scratch) const override;
  ssize_t copy_out(const StoreSpan& span, uint64_t done, void* buf, size_t len, ServeScratch& scratch) const override;
  StoreResources resources() const override;

 protected:
  // Not filled as a byte stream: the upload API is refused.
  ssize_t put_from_fd(int, uint64_t) override { return kStoreSealed; }
  ssize_t put_bytes(const void*, size_t) override { return kStoreSealed; }
  int on_seal() override { return 0; }

 private:
  int fd_ = -1;
  uint64_t file_size_ = 0;
  uint64_t pages_total_ = 0;
  std::vector<uint8_t> present_;  // one byte per page of the layout
  std::atomic<uint64_t> pages_held_{0};
  std::atomic<State> state_{State::kFilling};
  std::string reason_;  // kIncomplete: why the missing pages never come
};

}  // namespace lazyd
