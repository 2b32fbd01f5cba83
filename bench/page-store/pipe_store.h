// A PageStore that keeps an upload's pages in pipes, as CRIU's page server does (docs/protocol.md §1.6, §1.8):
// PagePipes (native/core/staging/page_pipes.h) over the upload's byte stream. Relay staging holds its pages the
// same way; this store exists to measure the upload case against the memfd store (bench.cc).
#pragma once

#include "staging/page_pipes.h"
#include "staging/page_store.h"

namespace lazyd {

struct PipeStoreOptions {
  StoreLimits limits;
  uint64_t page_size = 4096;
  // Most payload bytes per pipe; bounds the cost of serving from the middle of a pipe.
  uint64_t pipe_bytes = 256 * 1024;
  // Pipe capacity requested with F_SETPIPE_SZ (0: pipe_bytes), capped at fs.pipe-max-size. With buffers of a
  // page each (write(), NIC fragments of 4 KiB) a pipe holds exactly its capacity.
  uint64_t pipe_capacity = 0;
};

class PipeStore final : public PageStore {
 public:
  explicit PipeStore(const PipeStoreOptions& options);
  ~PipeStore() override;

  const char* kind() const override { return "pipe"; }
  ssize_t send(const StoreSpan& span, uint64_t done, int out_fd, ServeScratch& scratch) const override;
  ssize_t copy_out(const StoreSpan& span, uint64_t done, void* buf, size_t len, ServeScratch& scratch) const override;
  StoreResources resources() const override;

  uint64_t pipe_bytes() const { return pipe_bytes_; }
  uint64_t pipe_capacity() const { return pipes_.capacity(); }

 protected:
  ssize_t put_from_fd(int fd, uint64_t len) override;
  ssize_t put_bytes(const void* data, size_t len) override;
  int on_seal() override;

 private:
  uint64_t pipe_bytes_;
  PagePipes pipes_;
};

}  // namespace lazyd
