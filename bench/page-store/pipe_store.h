// A PageStore that keeps the pages in pipes, as CRIU's page server does (docs/protocol.md §1.6, §1.8): payloads are
// spliced from the upload socket into the pipes without passing through user space, and served with tee()
// of (offset-in-pipe + length) bytes into the caller's scratch pipe, a splice of the leading offset bytes to
// /dev/null and a splice of the rest to the output. tee() and the discard cost 50-70 ns per pipe buffer
// ahead of the page, so the store bounds the bytes per pipe (pipe_bytes): the offset of any page inside its
// pipe is below pipe_bytes. The price is file descriptors: 2 per pipe while filling, 1 once sealed.
//
// Pipe buffers made by splicing from a socket reference the socket's receive pages: over loopback a buffer
// holds up to 32 KiB (the sender's page fragments), over a NIC typically one MSS-sized fragment each. A pipe
// therefore fills by slots or by pipe_bytes, whichever comes first, and pages may straddle pipes.
#pragma once

#include <vector>

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
  uint64_t pipe_capacity() const { return pipes_.empty() ? capacity_ : pipes_.back().capacity; }

 protected:
  ssize_t put_from_fd(int fd, uint64_t len) override;
  ssize_t put_bytes(const void* data, size_t len) override;
  int on_seal() override;

 private:
  struct Pipe {
    int rd = -1;
    int wr = -1;
    uint64_t start = 0;  // stream position of its first byte
    uint64_t bytes = 0;
    uint64_t capacity = 0;  // F_GETPIPE_SZ
    bool full = false;
  };
  // The pipe to write into: the last one, or a new one (starting at stream position at) when it is full or
  // at pipe_bytes.
  int tail_pipe(uint64_t at, Pipe** pipe);
  bool pipe_full(const Pipe& pipe) const;
  int pull(const StoreSpan& span, uint64_t done, ServeScratch& scratch) const;

  uint64_t pipe_bytes_;
  uint64_t capacity_;
  int null_fd_ = -1;
  std::vector<Pipe> pipes_;
};

}  // namespace lazyd
