#include "pipe_store.h"

#include <algorithm>

namespace lazyd {

PipeStore::PipeStore(const PipeStoreOptions& options)
    : PageStore(options.page_size, options.limits),
      pipe_bytes_(std::max<uint64_t>(options.pipe_bytes, options.page_size)),
      pipes_(pipe_bytes_, options.pipe_capacity ? options.pipe_capacity : options.pipe_bytes, false) {}

PipeStore::~PipeStore() = default;

ssize_t PipeStore::put_from_fd(int fd, uint64_t len) { return pipes_.splice_in(fd, data_end(), len); }

ssize_t PipeStore::put_bytes(const void* data, size_t len) { return pipes_.write_in(data, len, data_end()); }

int PipeStore::on_seal() {
  pipes_.seal();
  return 0;
}

ssize_t PipeStore::send(const StoreSpan& span, uint64_t done, int out_fd, ServeScratch& scratch) const {
  if (done >= span.bytes) return 0;
  return pipes_.send(span.data_offset + done, span.bytes - done, out_fd, false, scratch);
}

ssize_t PipeStore::copy_out(const StoreSpan& span, uint64_t done, void* buf, size_t len, ServeScratch& scratch) const {
  if (done >= span.bytes) return 0;
  return pipes_.copy_out(span.data_offset + done, span.bytes - done, buf, len, scratch);
}

StoreResources PipeStore::resources() const {
  StoreResources r;
  r.pipes = pipes_.pipe_count();
  r.fds = pipes_.fds();
  return r;
}

}  // namespace lazyd
