#include "wire/page_checksums.h"

#include <algorithm>
#include <cstring>

#include "util/crc32c.h"

namespace lazyd::wire {

void encode_checksums(const uint32_t* crcs, size_t count, uint8_t* out) { memcpy(out, crcs, count * kChecksumSize); }

uint32_t checksum_at(const uint8_t* trailer, size_t index) {
  uint32_t v;
  memcpy(&v, trailer + index * kChecksumSize, kChecksumSize);
  return v;
}

void ChecksumBuilder::start(uint64_t page_size, uint64_t pages) {
  page_size_ = page_size;
  pages_done_ = 0;
  fill_ = 0;
  crc_ = 0;
  trailer_.assign(checksum_trailer_size(pages), 0);
}

void ChecksumBuilder::feed(const uint8_t* bytes, size_t len) {
  while (len > 0 && pages_done_ * kChecksumSize < trailer_.size()) {
    const size_t take = static_cast<size_t>(std::min<uint64_t>(len, page_size_ - fill_));
    crc_ = crc32c(bytes, take, crc_);
    fill_ += take;
    bytes += take;
    len -= take;
    if (fill_ == page_size_) {
      encode_checksums(&crc_, 1, trailer_.data() + pages_done_ * kChecksumSize);
      pages_done_++;
      fill_ = 0;
      crc_ = 0;
    }
  }
}

ChecksumCheck check_pages(const uint8_t* pages, uint64_t count, uint64_t page_size, const uint8_t* trailer) {
  ChecksumCheck result;
  for (uint64_t i = 0; i < count; i++) {
    const uint32_t actual = crc32c(pages + i * page_size, static_cast<size_t>(page_size));
    const uint32_t expected = checksum_at(trailer, static_cast<size_t>(i));
    if (actual == expected) continue;
    if (result.bad++ == 0) {
      result.first = i;
      result.expected = expected;
      result.actual = actual;
    }
    result.last = i;
  }
  return result;
}

}  // namespace lazyd::wire
