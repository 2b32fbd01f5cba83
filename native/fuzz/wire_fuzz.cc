// libFuzzer target: the page_server_iov header codec (wire.h) on arbitrary bytes. Built and run by
// scripts/fuzz.sh (clang -fsanitize=fuzzer,address,undefined), never by the default build.
//
// Invariants checked on every input:
// - detect() is total (any length, any bytes) and deterministic;
// - a header detect() accepts as a GET really is a sane GET in that layout (nr_pages >= 1, page-aligned nonzero
//   vaddr; 24-byte: pid in 1..PID_MAX_LIMIT; 32-byte: nr_pages < 2^32 and vaddr above PID_MAX_LIMIT) — the
//   autodetection rule of README "Wire formats";
// - an upload command is detected as 24-byte exactly when the low byte of u64@16 (a dst_id's type) is nonzero;
// - decode() then encode() gives back the input's bytes in both layouts (the 32-byte padding included);
// - encode() refuses a 24-byte header whose nr_pages does not fit in u32, and only that;
// - the input as an --allow-from block (net/access_policy.h): parse_cidr() is total; a block it accepts has a
//   prefix of 0..128 (an IPv4 one 96..128, v4-mapped) and contains its own address, and a bad one says why.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <string>

#include "net/access_policy.h"
#include "wire/wire.h"

#include "fuzz_check.h"

using namespace lazyd::wire;

namespace {

uint64_t load_u64(const uint8_t* p) {
  uint64_t v;
  memcpy(&v, p, sizeof v);
  return v;
}

void check_round_trip(Format format, const uint8_t* in, size_t len) {
  const size_t size = header_size(format);
  if (len < size) return;
  const Header header = decode(format, in);
  uint8_t out[HEADER_SIZE_MAX];
  FUZZ_CHECK(encode(format, header, out));
  FUZZ_CHECK(memcmp(out, in, size) == 0);
}

}  // namespace

void check_cidr(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size < 64 ? size : 64);
  lazyd::Cidr block;
  std::string error;
  if (lazyd::parse_cidr(text, &block, &error)) {
    FUZZ_CHECK(block.prefix >= 0 && block.prefix <= 128);
    FUZZ_CHECK(block.contains(block.addr));
    const bool v4 = text.find(':') == std::string::npos;
    if (v4) FUZZ_CHECK(block.prefix >= 96);
  } else {
    FUZZ_CHECK(!error.empty());
  }
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  constexpr size_t kPage = 4096;
  check_cidr(data, size);
  const Format format = detect(data, size, kPage);
  FUZZ_CHECK(format == detect(data, size, kPage));
  FUZZ_CHECK(format == Format::Unknown || format == Format::V24 || format == Format::V32);
  if (size < HEADER_SIZE_V24) {
    FUZZ_CHECK(format == Format::Unknown);
    return 0;
  }

  const uint32_t command = decode(Format::V24, data).command();
  if (format != Format::Unknown && size >= header_size(format)) {
    // (detect() needs only 24 bytes; callers decode once the whole header of the detected size is there.)
    const Header header = decode(format, data);
    FUZZ_CHECK(header.command() == command);
    if (command == PS_IOV_GET) {
      FUZZ_CHECK(header.nr_pages >= 1);
      FUZZ_CHECK(header.vaddr % kPage == 0);
      if (format == Format::V24) {
        FUZZ_CHECK(header.vaddr != 0);
        FUZZ_CHECK(header.dst_id >= 1 && header.dst_id <= PID_MAX_LIMIT);
      } else {
        FUZZ_CHECK(header.nr_pages <= UINT32_MAX);
        FUZZ_CHECK(header.vaddr > PID_MAX_LIMIT);
      }
    } else {
      const bool upload = command == PS_IOV_ADD || command == PS_IOV_HOLE || command == PS_IOV_OPEN ||
                          command == PS_IOV_OPEN2 || command == PS_IOV_PARENT || command == PS_IOV_ADD_F;
      FUZZ_CHECK(upload);
      FUZZ_CHECK((format == Format::V24) == ((load_u64(data + 16) & PS_TYPE_MASK) != 0));
    }
  } else if (format == Format::Unknown && command != PS_IOV_GET) {
    // Unknown is only for GETs that fit neither layout, CLOSE/FORCE_CLOSE and unknown commands.
    const bool upload = command == PS_IOV_ADD || command == PS_IOV_HOLE || command == PS_IOV_OPEN ||
                        command == PS_IOV_OPEN2 || command == PS_IOV_PARENT || command == PS_IOV_ADD_F;
    FUZZ_CHECK(!upload);
  }

  check_round_trip(Format::V24, data, size);
  check_round_trip(Format::V32, data, size);

  // encode() of a 24-byte header refuses exactly the nr_pages that do not fit in u32.
  if (size >= HEADER_SIZE_V32) {
    const Header wide = decode(Format::V32, data);
    uint8_t out[HEADER_SIZE_MAX];
    FUZZ_CHECK(encode(Format::V24, wide, out) == (wide.nr_pages <= UINT32_MAX));
  }
  FUZZ_CHECK(command_name(command) != nullptr);
  return 0;
}
