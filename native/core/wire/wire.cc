#include "wire/wire.h"

#include <cstring>

namespace lazyd::wire {
namespace {

// Headers are native-endian unpacked C structs (docs/protocol.md §1.2); this build is little-endian x86-64/aarch64 only.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "lazyd's wire codec assumes a little-endian host");

uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
uint64_t load_u64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
void store_u32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, sizeof v); }
void store_u64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, sizeof v); }

bool is_upload_command(uint32_t command) {
  switch (command) {
    case PS_IOV_ADD:
    case PS_IOV_HOLE:
    case PS_IOV_OPEN:
    case PS_IOV_OPEN2:
    case PS_IOV_PARENT:
    case PS_IOV_ADD_F:
      return true;
    default:
      return false;
  }
}

}  // namespace

bool encode(Format format, const Header& h, uint8_t* out) {
  if (format == Format::V24) {
    if (h.nr_pages > UINT32_MAX) return false;
    store_u32(out, h.cmd);
    store_u32(out + 4, static_cast<uint32_t>(h.nr_pages));
    store_u64(out + 8, h.vaddr);
    store_u64(out + 16, h.dst_id);
    return true;
  }
  if (format == Format::V32) {
    store_u32(out, h.cmd);
    store_u32(out + 4, h.pad);
    store_u64(out + 8, h.nr_pages);
    store_u64(out + 16, h.vaddr);
    store_u64(out + 24, h.dst_id);
    return true;
  }
  return false;
}

Header decode(Format format, const uint8_t* in) {
  Header h;
  h.cmd = load_u32(in);
  if (format == Format::V24) {
    h.nr_pages = load_u32(in + 4);
    h.vaddr = load_u64(in + 8);
    h.dst_id = load_u64(in + 16);
  } else {
    h.pad = load_u32(in + 4);
    h.nr_pages = load_u64(in + 8);
    h.vaddr = load_u64(in + 16);
    h.dst_id = load_u64(in + 24);
  }
  return h;
}

Format detect(const uint8_t* in, size_t len, size_t page_size) {
  if (len < HEADER_SIZE_V24) return Format::Unknown;
  const uint32_t command = load_u32(in) & PS_CMD_MASK;
  const uint64_t at8 = load_u64(in + 8);
  const uint64_t at16 = load_u64(in + 16);
  const uint64_t page_mask = page_size - 1;

  if (command == PS_IOV_GET) {
    const uint32_t nr24 = load_u32(in + 4);
    const bool fits24 = nr24 >= 1 && at8 != 0 && (at8 & page_mask) == 0 && at16 >= 1 && at16 <= PID_MAX_LIMIT;
    const bool fits32 = at8 >= 1 && at8 <= UINT32_MAX && (at16 & page_mask) == 0 && at16 > PID_MAX_LIMIT;
    if (fits24 == fits32) return Format::Unknown;  // both is impossible (at16 decides); neither is malformed
    return fits24 ? Format::V24 : Format::V32;
  }
  if (is_upload_command(command)) {
    // u64@16 is dst_id = (id << 8) | type in the 24-byte layout (type is never 0), and a page-aligned vaddr
    // (0 for OPEN/OPEN2/PARENT) in the 32-byte layout.
    return (at16 & PS_TYPE_MASK) != 0 ? Format::V24 : Format::V32;
  }
  return Format::Unknown;
}

const char* command_name(uint32_t command) {
  switch (command) {
    case PS_IOV_ADD: return "ADD";
    case PS_IOV_HOLE: return "HOLE";
    case PS_IOV_OPEN: return "OPEN";
    case PS_IOV_OPEN2: return "OPEN2";
    case PS_IOV_PARENT: return "PARENT";
    case PS_IOV_ADD_F: return "ADD_F";
    case PS_IOV_GET: return "GET";
    case PS_IOV_CLOSE: return "CLOSE";
    case PS_IOV_FORCE_CLOSE: return "FORCE_CLOSE";
    default: return "unknown";
  }
}

#define LAZYD_NAMED(c) {#c, static_cast<uint64_t>(c)}
const NamedConstant kConstants[] = {
    LAZYD_NAMED(PS_IOV_ADD),       LAZYD_NAMED(PS_IOV_HOLE),     LAZYD_NAMED(PS_IOV_OPEN),
    LAZYD_NAMED(PS_IOV_OPEN2),     LAZYD_NAMED(PS_IOV_PARENT),   LAZYD_NAMED(PS_IOV_ADD_F),
    LAZYD_NAMED(PS_IOV_GET),       LAZYD_NAMED(PS_IOV_CLOSE),    LAZYD_NAMED(PS_IOV_FORCE_CLOSE),
    LAZYD_NAMED(PS_CMD_BITS),      LAZYD_NAMED(PS_CMD_MASK),     LAZYD_NAMED(PS_TYPE_BITS),
    LAZYD_NAMED(PS_TYPE_MASK),     LAZYD_NAMED(PS_TYPE_PID),     LAZYD_NAMED(PS_TYPE_SHMEM),
    LAZYD_NAMED(PE_PARENT),        LAZYD_NAMED(PE_LAZY),         LAZYD_NAMED(PE_PRESENT),
    LAZYD_NAMED(GET_REPLY_CMD),    LAZYD_NAMED(LAZY_PAGES_RESTORE_FINISHED),
    LAZYD_NAMED(PID_MAX_LIMIT),    LAZYD_NAMED(HEADER_SIZE_V24), LAZYD_NAMED(HEADER_SIZE_V32),
    LAZYD_NAMED(HEADER_SIZE_MAX),
};
#undef LAZYD_NAMED
const size_t kConstantCount = sizeof(kConstants) / sizeof(kConstants[0]);

}  // namespace lazyd::wire
