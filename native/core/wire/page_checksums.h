// The checksum trailer of the lazyd link (feature `checksum`, docs/protocol.md §7.4): in a session that was
// granted it, every GET reply (header, N' pages) is followed by N' u32 CRC32C, one per page in page order,
// native byte order. The server computes them from the bytes it read to send (ChecksumBuilder); the client checks
// each page against its value before the reply goes on (check_pages).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace lazyd::wire {

constexpr size_t kChecksumSize = 4;

constexpr uint64_t checksum_trailer_size(uint64_t pages) { return pages * kChecksumSize; }

void encode_checksums(const uint32_t* crcs, size_t count, uint8_t* out);
uint32_t checksum_at(const uint8_t* trailer, size_t index);

// A reply's trailer, built from its page bytes as they are read, in order and in pieces of any size.
class ChecksumBuilder {
 public:
  ChecksumBuilder() = default;
  // A reply of pages pages: from now on active(), complete() once every byte was fed.
  void start(uint64_t page_size, uint64_t pages);
  bool active() const { return page_size_ != 0; }
  void feed(const uint8_t* bytes, size_t len);
  bool complete() const { return active() && pages_done_ * kChecksumSize == trailer_.size() && fill_ == 0; }
  // The trailer (checksum_trailer_size(pages) bytes); whole only once complete().
  const std::vector<uint8_t>& trailer() const { return trailer_; }

 private:
  uint64_t page_size_ = 0;
  uint64_t pages_done_ = 0;
  uint64_t fill_ = 0;   // bytes of the current page fed so far
  uint32_t crc_ = 0;
  std::vector<uint8_t> trailer_;
};

// The pages that do not match their checksums: how many, the first and the last (page indexes).
struct ChecksumCheck {
  uint64_t bad = 0;
  uint64_t first = 0;
  uint64_t last = 0;
  uint32_t expected = 0;  // of the first bad page
  uint32_t actual = 0;
};

ChecksumCheck check_pages(const uint8_t* pages, uint64_t count, uint64_t page_size, const uint8_t* trailer);

}  // namespace lazyd::wire
