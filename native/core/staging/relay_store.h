// The pages of a relayed checkpoint (relay staging: lazyd is the lazy client of a `criu dump --lazy-pages` on the
// same host and pulls every lazy page into its own memory, staging/relay.h). Unlike an upload, the layout is known
// before any byte arrives (the PE_LAZY entries of each task, from the dump's pagemaps), so every page has its
// position from the start and pages may arrive in any order (the bulk pull, and pages fetched ahead of it for a
// restore that waits). A span is served only once its pages are present: pages_ready() says how many are.
//
// Over plain TCP the pages are held by reference (PagePipes): spliced from the socket into pipes and never copied,
// the way the dump itself holds them (its page pipes reference the frozen tasks' pages, and loopback TCP passes
// those references on). That is the one copy of every page that relay staging would otherwise add on the source
// host, while restores run. Pages held by reference are only as stable as the tasks they came from: frozen
// during the pull, gone once the dump has its CLOSE. A relay that fails with a reset lets the dump resume the
// tasks, so finish(false, ..., void_held=true) then drops every page: the checkpoint is void, nothing of it is
// served. Where pipes cannot be had (TLS, which decrypts in user space; F_SETPIPE_SZ refused past
// fs.pipe-user-pages-soft without CAP_SYS_RESOURCE; out of fds), the pages go into one memfd holding the whole
// layout at each page's position (a copy; shmem pages written whole are not zeroed first) and are served like
// MemfdStore (sendfile; copy_out for TLS). The whole size is charged to the memory budget when the layout is set,
// before the pull starts. finish() ends filling and seals, complete or not; an incomplete store says why its
// missing pages never will come.
//
// Filling and serving both run on the page server's thread; the counters are atomics, readable from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lazy/page_client.h"
#include "staging/page_pipes.h"
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

class RelayStore final : public PageStore, public PageSink {
 public:
  enum class State { kFilling, kComplete, kIncomplete };

  // by_reference: hold pages spliced from a plain TCP socket in pipes (above); false: always copy into the memfd.
  // max_pipes: pipes of this store at most (each keeps an fd); 0: a quarter of RLIMIT_NOFILE, so that a large
  // checkpoint leaves the daemon fds for its sessions (past it the pages are copied).
  RelayStore(uint64_t page_size, std::shared_ptr<MemoryBudget> budget, bool by_reference = true, uint64_t max_pipes = 0);
  ~RelayStore() override;

  // Lays out every task's ranges (sorted by address per task), charges their bytes to the budget, creates and
  // sizes the memfd. 0 or a negative code; *error one line naming the cause (kStoreCapExceeded: the cap).
  int init(const std::vector<RelayTask>& tasks, std::string* error);

  uint64_t pages_total() const { return pages_total_; }
  uint64_t pages_held() const { return pages_held_.load(std::memory_order_relaxed); }
  State state() const { return state_.load(std::memory_order_acquire); }

  // ---- Filling (the relay) ----

  // Page number n of the layout (0 .. pages_total()-1) is at position n * page_size (PageSink's at).
  ssize_t take_from(int socket_fd, uint64_t at, size_t want, std::string* error) override;
  ssize_t put(const void* bytes, size_t len, uint64_t at, std::string* error) override;
  bool present(uint64_t page) const { return present_[page] != 0; }
  // Bytes held by reference (pipes) and copied (memfd) so far.
  uint64_t bytes_referenced() const { return bytes_referenced_; }
  uint64_t bytes_copied() const { return bytes_copied_; }
  // The bytes of pages [first, first + count) are in place. -EEXIST if one was present already (nothing marked).
  int mark_present(uint64_t first, uint64_t count);
  // Ends filling: complete (every page present) or not, with the reason a GET for a missing page is refused.
  // void_held: the tasks the pages came from run on, so pages held by reference may change: drop them all and
  // refuse every GET. Seals the memfd. Returns 0 or -errno.
  int finish(bool complete, const std::string& reason, bool void_held = false);

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
  // The memfd, sized to the whole layout; written only where pipes cannot be had.
  ssize_t memfd_sink(int socket_fd, uint64_t at, size_t want, std::string* error);
  int fd_ = -1;
  uint64_t file_size_ = 0;
  bool by_reference_;
  PagePipes pipes_;
  int copy_pipe_[2] = {-1, -1};  // socket -> pipe -> memfd
  uint64_t bytes_referenced_ = 0;
  uint64_t bytes_copied_ = 0;
  bool void_ = false;
  uint64_t pages_total_ = 0;
  std::vector<uint8_t> present_;  // one byte per page of the layout
  std::atomic<uint64_t> pages_held_{0};
  std::atomic<State> state_{State::kFilling};
  std::string reason_;  // kIncomplete: why the missing pages never come
};

}  // namespace lazyd
