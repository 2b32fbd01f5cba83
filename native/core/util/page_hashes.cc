#include "util/page_hashes.h"

#include <fcntl.h>
#include <gnutls/crypto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

namespace lazyd {
namespace {

constexpr size_t kDefaultChunk = 4u << 20;

struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

struct Hash {
  gnutls_hash_hd_t handle = nullptr;
  ~Hash() {
    if (handle) gnutls_hash_deinit(handle, nullptr);
  }
};

// The whole-file hash of the chunks handed to it, in order, on a thread of its own: it runs beside the page hashes
// of the same chunk (two SHA-256 passes over every byte; with a second core, the time of one).
class WholeHasher {
 public:
  explicit WholeHasher(gnutls_hash_hd_t handle) : handle_(handle), thread_([this] { run(); }) {}
  ~WholeHasher() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }
  // Waits until the chunk handed before is hashed (its buffer may be reused), then hands this one.
  void hand(const uint8_t* data, size_t len) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [this] { return data_ == nullptr; });
    data_ = data;
    len_ = len;
    changed_.notify_all();
  }
  // Waits until every chunk handed is hashed.
  void drain() {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [this] { return data_ == nullptr; });
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      changed_.wait(lock, [this] { return data_ != nullptr || stop_; });
      if (data_ == nullptr) return;
      lock.unlock();
      gnutls_hash(handle_, data_, len_);
      lock.lock();
      data_ = nullptr;
      changed_.notify_all();
    }
  }

  gnutls_hash_hd_t handle_;
  std::mutex mutex_;
  std::condition_variable changed_;
  const uint8_t* data_ = nullptr;
  size_t len_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

// Fills buffer with up to len bytes at offset (a short read is not the end): bytes read, or -errno.
ssize_t read_full(int fd, uint8_t* buffer, size_t len, uint64_t offset) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = pread(fd, buffer + got, len - got, static_cast<off_t>(offset + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  return static_cast<ssize_t>(got);
}

}  // namespace

PageHashesResult hash_file_pages(const std::string& path, size_t page_size, size_t chunk_bytes) {
  PageHashesResult r;
  Fd file{open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (file.fd < 0) {
    r.err = -errno;
    r.what = "cannot open " + path;
    return r;
  }
  posix_fadvise(file.fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  Hash whole, page;
  if (gnutls_hash_init(&whole.handle, GNUTLS_DIG_SHA256) < 0 ||
      (page_size > 0 && gnutls_hash_init(&page.handle, GNUTLS_DIG_SHA256) < 0)) {
    r.err = -ENOSYS;
    r.what = "SHA-256 unavailable in GnuTLS";
    return r;
  }
  size_t chunk = chunk_bytes ? chunk_bytes : kDefaultChunk;
  if (page_size > 0) chunk = chunk < page_size ? page_size : chunk - chunk % page_size;
  if (page_size == 0) {
    std::unique_ptr<uint8_t[]> buffer(new uint8_t[chunk]);
    for (;;) {
      ssize_t got = read_full(file.fd, buffer.get(), chunk, r.size);
      if (got < 0) {
        r.err = static_cast<int>(got);
        r.what = "cannot read " + path;
        return r;
      }
      if (got == 0) break;
      gnutls_hash(whole.handle, buffer.get(), static_cast<size_t>(got));
      r.size += static_cast<uint64_t>(got);
      if (static_cast<size_t>(got) < chunk) break;
    }
    gnutls_hash_output(whole.handle, r.whole);
    return r;
  }
  struct stat st;
  if (fstat(file.fd, &st) == 0 && st.st_size > 0) r.pages.reserve((static_cast<size_t>(st.st_size) + page_size - 1) / page_size * kSha256Bytes);
  // Two buffers: the next chunk is read while the whole-file hash of the last one may still run.
  std::unique_ptr<uint8_t[]> buffers[2] = {std::unique_ptr<uint8_t[]>(new uint8_t[chunk]), std::unique_ptr<uint8_t[]>(new uint8_t[chunk])};
  uint64_t offset = 0;
  {
    WholeHasher hasher(whole.handle);
    for (int cur = 0;; cur ^= 1) {
      uint8_t* buffer = buffers[cur].get();
      ssize_t n = read_full(file.fd, buffer, chunk, offset);
      if (n < 0) {
        r.err = static_cast<int>(n);
        r.what = "cannot read " + path;
        return r;  // ~WholeHasher waits for the chunk in hand
      }
      const size_t got = static_cast<size_t>(n);
      if (got == 0) break;
      hasher.hand(buffer, got);
      const size_t first = r.pages.size();
      const size_t count = (got + page_size - 1) / page_size;
      r.pages.resize(first + count * kSha256Bytes);
      for (size_t i = 0; i < count; i++) {
        const size_t at = i * page_size;
        const size_t len = got - at < page_size ? got - at : page_size;
        gnutls_hash(page.handle, buffer + at, len);
        gnutls_hash_output(page.handle, r.pages.data() + first + i * kSha256Bytes);  // also resets the state
      }
      offset += got;
      if (got < chunk) break;
    }
    hasher.drain();
  }
  r.size = offset;
  gnutls_hash_output(whole.handle, r.whole);
  return r;
}

std::string hex_digest(const uint8_t* digest, size_t len) {
  static const char kHex[] = "0123456789abcdef";
  std::string out(len * 2, '0');
  for (size_t i = 0; i < len; i++) {
    out[i * 2] = kHex[digest[i] >> 4];
    out[i * 2 + 1] = kHex[digest[i] & 15];
  }
  return out;
}

}  // namespace lazyd
