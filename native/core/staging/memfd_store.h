// A PageStore that keeps the pages in one memfd (shmem), at their position in the store's byte stream, and
// serves them with sendfile(): the kernel hands the page-cache pages to the socket without a copy, and the
// cost does not depend on where the page lies. One fd for the whole checkpoint.
//
// Filling: by default splice socket -> private pipe -> memfd (one copy, in the kernel, into shmem pages that
// need no zeroing); or read() straight into a shared mapping of the memfd (one copy, but every page is zeroed
// first: slower, see bench/page-store). On seal the writable mapping is dropped, the file is trimmed, and
// F_SEAL_WRITE|GROW|SHRINK make it immutable: no page that has been served can ever change.
#pragma once

#include "staging/page_store.h"

namespace lazyd {

struct MemfdStoreOptions {
  StoreLimits limits;
  uint64_t page_size = 4096;
  enum class Fill { kRead, kSplice };
  Fill fill = Fill::kSplice;
  // The file (and the mapping) grow in steps of this many bytes.
  uint64_t grow_step = 8ull << 20;
  // Replies of at most this many bytes are sent with send() from a read-only mapping (one copy) instead of
  // sendfile() (zero copy). Off by default: for 4 KiB it measured within the noise of sendfile, and slower
  // above (bench/page-store).
  uint64_t copy_max = 0;
  const char* name = "lazyd-staged-pages";
};

class MemfdStore final : public PageStore {
 public:
  explicit MemfdStore(const MemfdStoreOptions& options);
  ~MemfdStore() override;

  // 0, or -errno from memfd_create (check after construction).
  int init_error() const { return init_error_; }

  const char* kind() const override { return "memfd"; }
  ssize_t send(const StoreSpan& span, uint64_t done, int out_fd, ServeScratch& scratch) const override;
  ssize_t copy_out(const StoreSpan& span, uint64_t done, void* buf, size_t len, ServeScratch& scratch) const override;
  const uint8_t* view(const StoreSpan& span) const override;
  StoreResources resources() const override;
  int memfd() const { return fd_; }

 protected:
  ssize_t put_from_fd(int fd, uint64_t len) override;
  ssize_t put_bytes(const void* data, size_t len) override;
  int on_seal() override;

 private:
  int grow(uint64_t end);

  MemfdStoreOptions options_;
  int init_error_ = 0;
  int fd_ = -1;
  uint64_t file_size_ = 0;
  char* map_ = nullptr;      // writable while filling (Fill::kRead); read-only after seal (copy_max)
  uint64_t map_size_ = 0;
  int pipe_rd_ = -1;         // Fill::kSplice
  int pipe_wr_ = -1;
  uint64_t pipe_pending_ = 0;  // bytes in the private pipe not yet in the memfd
};

}  // namespace lazyd
