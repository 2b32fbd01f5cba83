// SHA-256 of every page of a file and of the whole file, for `lazyd replicate`'s page comparison between epochs
// (src/replicate/page-delta.ts). GnuTLS's SHA-256 (nettle underneath, which uses the CPU's SHA extensions where
// it has them). Blocking file I/O: the binding runs it on a worker thread, never on the JavaScript thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace lazyd {

constexpr size_t kSha256Bytes = 32;

struct PageHashesResult {
  int err = 0;           // 0 or -errno
  std::string what;      // on error: "cannot open <path>" / "cannot read <path>" / "SHA-256 unavailable"
  uint64_t size = 0;     // bytes hashed (the file's size when it was read to its end)
  // kSha256Bytes per page, pages in file order; the last page may be partial (hashed as the bytes there are).
  // Empty when page_size was 0.
  std::vector<uint8_t> pages;
  uint8_t whole[kSha256Bytes] = {};  // the SHA-256 of all `size` bytes
};

// Reads `path` from its start to its end in large preads and hashes it: per page of page_size bytes (0: the
// whole-file hash alone). chunk_bytes is the read size, rounded down to whole pages (0: 4 MiB); tests pass small
// ones to cross chunk boundaries.
PageHashesResult hash_file_pages(const std::string& path, size_t page_size, size_t chunk_bytes = 0);

// Lowercase hex of a digest.
std::string hex_digest(const uint8_t* digest, size_t len);

}  // namespace lazyd
