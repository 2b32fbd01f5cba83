// CRC32C (Castagnoli, reflected polynomial 0x82f63b78), the per-page checksum of the lazyd link
// (docs/protocol.md §7.4). The SSE4.2 crc32 instruction (three chains at once) where the CPU has it, else a
// slicing-by-8 table.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lazyd {

// The CRC32C of len bytes, continuing from crc (the CRC of the bytes before them; 0 to start):
// crc32c(b, crc32c(a)) == crc32c(a followed by b).
uint32_t crc32c(const void* data, size_t len, uint32_t crc = 0);
// The table version alone (tests compare the two).
uint32_t crc32c_portable(const void* data, size_t len, uint32_t crc = 0);
// True when crc32c() uses the CPU's instruction.
bool crc32c_hardware();

}  // namespace lazyd
