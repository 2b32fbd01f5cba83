#include "staging/memfd_store.h"

#include <algorithm>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

namespace lazyd {

MemfdStore::MemfdStore(const MemfdStoreOptions& options)
    : PageStore(options.page_size, options.limits), options_(options) {
  fd_ = memfd_create(options.name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd_ < 0) {
    init_error_ = -errno;
    return;
  }
  if (options_.fill == MemfdStoreOptions::Fill::kSplice) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) {
      init_error_ = -errno;
      return;
    }
    pipe_rd_ = fds[0];
    pipe_wr_ = fds[1];
    const size_t max = pipe_max_size();
    fcntl(pipe_wr_, F_SETPIPE_SZ, static_cast<int>(std::min<size_t>(max, 1 << 20)));
  }
  if (options_.grow_step < options_.page_size) options_.grow_step = options_.page_size;
}

MemfdStore::~MemfdStore() {
  if (map_) munmap(map_, map_size_);
  if (pipe_rd_ >= 0) close(pipe_rd_);
  if (pipe_wr_ >= 0) close(pipe_wr_);
  if (fd_ >= 0) close(fd_);
}

int MemfdStore::grow(uint64_t end) {
  if (end <= file_size_) return 0;
  const uint64_t step = options_.grow_step;
  const uint64_t size = (end + step - 1) / step * step;
  // shmem allocates a page only when it is written: the step costs address space, not memory.
  if (ftruncate(fd_, static_cast<off_t>(size)) < 0) return -errno;
  file_size_ = size;
  if (options_.fill != MemfdStoreOptions::Fill::kRead) return 0;
  void* map = map_ ? mremap(map_, map_size_, size, MREMAP_MAYMOVE)
                   : mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (map == MAP_FAILED) return -errno;
  map_ = static_cast<char*>(map);
  const uint64_t old_size = map_size_;
  map_size_ = size;
  // Fault the new step in with one call rather than one page fault per 4 KiB page that read() touches.
  // Best effort: without MADV_POPULATE_WRITE (Linux < 5.14) read() faults the pages in itself.
  madvise(map_ + old_size, size - old_size, MADV_POPULATE_WRITE);
  return 0;
}

ssize_t MemfdStore::put_from_fd(int fd, uint64_t len) {
  if (init_error_) return init_error_;
  const uint64_t at = data_end();
  if (options_.fill == MemfdStoreOptions::Fill::kRead) {
    int err = grow(at + len);
    if (err) return err;
    for (;;) {
      ssize_t n = read(fd, map_ + at, len);
      if (n >= 0) return n;
      if (errno != EINTR) return -errno;
    }
  }
  // Fill::kSplice: socket -> pipe (page references), pipe -> memfd (the copy into shmem pages).
  if (pipe_pending_ == 0) {
    ssize_t n;
    do {
      n = splice(fd, nullptr, pipe_wr_, nullptr, len, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) return n < 0 ? -errno : 0;
    pipe_pending_ = static_cast<uint64_t>(n);
  }
  uint64_t written = 0;
  while (pipe_pending_ > 0) {
    loff_t off = static_cast<loff_t>(at + written);
    ssize_t n = splice(pipe_rd_, nullptr, fd_, &off, pipe_pending_, SPLICE_F_MOVE);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (written) break;
      return n < 0 ? -errno : -EIO;
    }
    written += static_cast<uint64_t>(n);
    pipe_pending_ -= static_cast<uint64_t>(n);
  }
  file_size_ = std::max(file_size_, at + written);
  return static_cast<ssize_t>(written);
}

ssize_t MemfdStore::put_bytes(const void* data, size_t len) {
  if (init_error_) return init_error_;
  const uint64_t at = data_end();
  if (map_) {
    int err = grow(at + len);
    if (err) return err;
    memcpy(map_ + at, data, len);
    return static_cast<ssize_t>(len);
  }
  ssize_t n = pwrite(fd_, data, len, static_cast<off_t>(at));
  if (n < 0) return -errno;
  file_size_ = std::max(file_size_, at + static_cast<uint64_t>(n));
  return n;
}

int MemfdStore::on_seal() {
  if (init_error_) return init_error_;
  if (pipe_pending_) return -EIO;
  if (map_) munmap(map_, map_size_);
  map_ = nullptr;
  map_size_ = 0;
  if (pipe_rd_ >= 0) close(pipe_rd_);
  if (pipe_wr_ >= 0) close(pipe_wr_);
  pipe_rd_ = pipe_wr_ = -1;
  if (ftruncate(fd_, static_cast<off_t>(data_end())) < 0) return -errno;
  file_size_ = data_end();
  // F_SEAL_WRITE needs every writable shared mapping gone (EBUSY otherwise): hence the munmap above.
  if (fcntl(fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0) return -errno;
  if (file_size_ > 0) {
    void* map = mmap(nullptr, file_size_, PROT_READ, MAP_SHARED, fd_, 0);
    if (map == MAP_FAILED && options_.copy_max > 0) return -errno;  // else view() has none: copy_out serves
    if (map != MAP_FAILED) {
      map_ = static_cast<char*>(map);
      map_size_ = file_size_;
    }
  }
  return 0;
}

const uint8_t* MemfdStore::view(const StoreSpan& span) const {
  if (!sealed() || !map_ || span.data_offset + span.bytes > map_size_) return nullptr;
  return reinterpret_cast<const uint8_t*>(map_) + span.data_offset;
}

ssize_t MemfdStore::send(const StoreSpan& span, uint64_t done, int out_fd, ServeScratch&) const {
  if (done >= span.bytes) return 0;
  const uint64_t len = span.bytes - done;
  const uint64_t at = span.data_offset + done;
  if (at + len > data_end()) return -EIO;
  for (;;) {
    ssize_t n;
    if (span.bytes <= options_.copy_max && map_) {
      n = ::send(out_fd, map_ + at, len, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0 && errno == ENOTSOCK) n = write(out_fd, map_ + at, len);
    } else {
      off_t off = static_cast<off_t>(at);
      n = sendfile(out_fd, fd_, &off, len);
    }
    if (n > 0) return n;
    if (n == 0) return -EIO;
    if (errno != EINTR) return -errno;
  }
}

ssize_t MemfdStore::copy_out(const StoreSpan& span, uint64_t done, void* buf, size_t len, ServeScratch&) const {
  if (done >= span.bytes || len == 0) return 0;
  const uint64_t want = std::min<uint64_t>(len, span.bytes - done);
  const uint64_t at = span.data_offset + done;
  if (at + want > data_end()) return -EIO;
  for (;;) {
    ssize_t n = pread(fd_, buf, static_cast<size_t>(want), static_cast<off_t>(at));
    if (n > 0) return n;
    if (n == 0) return -EIO;
    if (errno != EINTR) return -errno;
  }
}

StoreResources MemfdStore::resources() const {
  StoreResources r;
  r.fds = (fd_ >= 0) + (pipe_rd_ >= 0) + (pipe_wr_ >= 0);
  r.pipes = pipe_rd_ >= 0;
  r.file_bytes = file_size_;
  return r;
}

}  // namespace lazyd
