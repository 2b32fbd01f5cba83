#include "util/crc32c.h"

#include <array>
#include <cstring>

namespace lazyd {
namespace {

constexpr uint32_t kPoly = 0x82f63b78;

struct Tables {
  std::array<std::array<uint32_t, 256>, 8> t{};
  Tables() {
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = (c >> 1) ^ (c & 1 ? kPoly : 0);
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
      for (size_t s = 1; s < 8; s++) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xff];
    }
  }
};

const Tables& tables() {
  static const Tables instance;
  return instance;
}

uint32_t update_portable(uint32_t state, const uint8_t* p, size_t len) {
  const auto& t = tables().t;
  while (len >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    word ^= state;
    state = t[7][word & 0xff] ^ t[6][(word >> 8) & 0xff] ^ t[5][(word >> 16) & 0xff] ^ t[4][(word >> 24) & 0xff] ^
            t[3][(word >> 32) & 0xff] ^ t[2][(word >> 40) & 0xff] ^ t[1][(word >> 48) & 0xff] ^ t[0][word >> 56];
    p += 8;
    len -= 8;
  }
  while (len--) state = (state >> 8) ^ t[0][(state ^ *p++) & 0xff];
  return state;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t update_sse42(uint32_t state, const uint8_t* p, size_t len) {
  uint64_t s = state;
  while (len >= 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    s = __builtin_ia32_crc32di(s, word);
    p += 8;
    len -= 8;
  }
  uint32_t s32 = static_cast<uint32_t>(s);
  while (len--) s32 = __builtin_ia32_crc32qi(s32, *p++);
  return s32;
}

// Three crc32 chains at once (the instruction's latency is 3 cycles, its throughput 1): a run of 3 blocks of
// kBlock bytes is folded into one state by advancing the first two across the zeros that follow them.
constexpr size_t kBlock = 1360;  // 3 blocks fit a 4 KiB page

// The state after `zeros` zero bytes is linear in the state before (over GF(2)): a 32x32 bit matrix, kept as the
// images of the 32 one-bit states, and raised to the power `zeros` by squaring (a few thousand steps; stepping
// the table byte by byte for every entry took 4 * 256 * zeros steps: 12 ms, paid inside a restore's first fault).
// Then one table per byte of the state, so advancing a state costs four lookups.
using Operator = std::array<uint32_t, 32>;

uint32_t apply(const Operator& op, uint32_t state) {
  uint32_t out = 0;
  for (int bit = 0; state != 0; bit++, state >>= 1)
    if (state & 1) out ^= op[bit];
  return out;
}

Operator after(const Operator& second, const Operator& first) {  // first, then second
  Operator out{};
  for (int bit = 0; bit < 32; bit++) out[bit] = apply(second, first[bit]);
  return out;
}

Operator advance_over_zeros(size_t zeros) {
  const auto& byte = tables().t[0];
  Operator step{}, result{};
  for (int bit = 0; bit < 32; bit++) {
    const uint32_t state = 1u << bit;
    step[bit] = (state >> 8) ^ byte[state & 0xff];  // one zero byte
    result[bit] = state;                            // the identity
  }
  for (; zeros != 0; zeros >>= 1, step = after(step, step))
    if (zeros & 1) result = after(step, result);
  return result;
}

struct ZeroAdvance {
  uint32_t t[4][256];
  explicit ZeroAdvance(size_t zeros) {
    const Operator op = advance_over_zeros(zeros);
    for (int k = 0; k < 4; k++)
      for (uint32_t b = 0; b < 256; b++) t[k][b] = apply(op, b << (8 * k));
  }
  uint32_t operator()(uint32_t s) const { return t[0][s & 0xff] ^ t[1][(s >> 8) & 0xff] ^ t[2][(s >> 16) & 0xff] ^ t[3][s >> 24]; }
};

__attribute__((target("sse4.2"))) uint32_t update_sse42_3way(uint32_t state, const uint8_t* p, size_t len) {
  static const ZeroAdvance over_one(kBlock), over_two(2 * kBlock);
  while (len >= 3 * kBlock) {
    uint64_t a = state, b = 0, c = 0;
    for (size_t i = 0; i < kBlock; i += 8) {
      uint64_t wa, wb, wc;
      std::memcpy(&wa, p + i, 8);
      std::memcpy(&wb, p + kBlock + i, 8);
      std::memcpy(&wc, p + 2 * kBlock + i, 8);
      a = __builtin_ia32_crc32di(a, wa);
      b = __builtin_ia32_crc32di(b, wb);
      c = __builtin_ia32_crc32di(c, wc);
    }
    state = over_two(static_cast<uint32_t>(a)) ^ over_one(static_cast<uint32_t>(b)) ^ static_cast<uint32_t>(c);
    p += 3 * kBlock;
    len -= 3 * kBlock;
  }
  return update_sse42(state, p, len);
}

bool detect_sse42() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
}
#else
bool detect_sse42() { return false; }
#endif

const bool kHardware = detect_sse42();

}  // namespace

uint32_t crc32c_portable(const void* data, size_t len, uint32_t crc) {
  return ~update_portable(~crc, static_cast<const uint8_t*>(data), len);
}

uint32_t crc32c(const void* data, size_t len, uint32_t crc) {
#if defined(__x86_64__)
  if (kHardware) return ~update_sse42_3way(~crc, static_cast<const uint8_t*>(data), len);
#endif
  return crc32c_portable(data, len, crc);
}

bool crc32c_hardware() { return kHardware; }

}  // namespace lazyd
