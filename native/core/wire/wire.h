// The page_server_iov wire header and the protocol constants (docs/protocol.md §1.2–§1.4, §3.2).
// One definition of each constant for the C++ side; src/protocol/constants.ts holds the TypeScript twin,
// and a test checks that the two agree.
#pragma once

#include <cstddef>
#include <cstdint>

namespace lazyd::wire {

// Commands (low 16 bits of cmd) and the flag shift (§1.3).
constexpr uint32_t PS_IOV_ADD = 1;
constexpr uint32_t PS_IOV_HOLE = 2;
constexpr uint32_t PS_IOV_OPEN = 3;
constexpr uint32_t PS_IOV_OPEN2 = 4;
constexpr uint32_t PS_IOV_PARENT = 5;
constexpr uint32_t PS_IOV_ADD_F = 6;
constexpr uint32_t PS_IOV_GET = 7;
constexpr uint32_t PS_IOV_CLOSE = 0x1023;
constexpr uint32_t PS_IOV_FORCE_CLOSE = 0x1024;
constexpr uint32_t PS_CMD_BITS = 16;
constexpr uint32_t PS_CMD_MASK = 0xffff;

// dst_id of upload commands: (id << 8) | type (§1.4). GET carries the bare pid.
constexpr uint32_t PS_TYPE_BITS = 8;
constexpr uint32_t PS_TYPE_MASK = 0xff;
constexpr uint32_t PS_TYPE_PID = 1;
constexpr uint32_t PS_TYPE_SHMEM = 2;

// Pagemap flags, also carried in cmd >> 16 of ADD_F.
constexpr uint32_t PE_PARENT = 1;
constexpr uint32_t PE_LAZY = 2;
constexpr uint32_t PE_PRESENT = 4;

// The lazy GET reply: ADD_F with PE_PRESENT.
constexpr uint32_t GET_REPLY_CMD = (PE_PRESENT << PS_CMD_BITS) | PS_IOV_ADD_F;

// Restore handshake end marker "RSTF" (§3.2).
constexpr uint32_t LAZY_PAGES_RESTORE_FINISHED = 0x52535446;

// The kernel's PID_MAX_LIMIT on 64-bit: no pid is larger. Used by header autodetection.
constexpr uint64_t PID_MAX_LIMIT = 4u * 1024 * 1024;

constexpr size_t HEADER_SIZE_V24 = 24;  // CRIU <= 4.1: u32 cmd, u32 nr_pages, u64 vaddr, u64 dst_id
constexpr size_t HEADER_SIZE_V32 = 32;  // CRIU >= 4.2: u32 cmd, 4 pad, u64 nr_pages, u64 vaddr, u64 dst_id
constexpr size_t HEADER_SIZE_MAX = 32;

enum class Format : uint8_t { Unknown = 0, V24 = 24, V32 = 32 };

struct Header {
  uint32_t cmd = 0;
  uint32_t pad = 0;  // 32-byte format only; CRIU 4.2.1 sends stack garbage here and lazy replies echo it
  uint64_t nr_pages = 0;
  uint64_t vaddr = 0;
  uint64_t dst_id = 0;

  uint32_t command() const { return cmd & PS_CMD_MASK; }
  uint32_t flags() const { return cmd >> PS_CMD_BITS; }
};

inline size_t header_size(Format format) { return static_cast<size_t>(format); }

// Encodes into out (header_size(format) bytes). In the 24-byte format nr_pages must fit in u32;
// returns false if it does not.
bool encode(Format format, const Header& header, uint8_t* out);

// Decodes header_size(format) bytes.
Header decode(Format format, const uint8_t* in);

// Autodetection from the first header of a session, given at least HEADER_SIZE_V24 bytes.
//
// The rule (documented in README "Wire formats"): read the bytes as both layouts and keep the one that makes
// sense. The deciding field is the u64 at offset 16: in a 24-byte header it is dst_id (a pid for GET, at most
// PID_MAX_LIMIT; (pid << 8) | type for uploads), in a 32-byte header it is vaddr (a page address, 0 for
// OPEN2/CLOSE). Padding (bytes 4..7 of the 32-byte form) is never looked at: CRIU 4.2.1 leaves stack garbage there.
//   GET:   24 if nr_pages(u32@4) >= 1, vaddr(u64@8) page-aligned and nonzero, pid(u64@16) in 1..PID_MAX_LIMIT;
//          32 if nr_pages(u64@8) >= 1 and < 2^32, vaddr(u64@16) page-aligned and > PID_MAX_LIMIT.
//   OPEN/OPEN2/PARENT/HOLE/ADD/ADD_F: 24 if the low byte of u64@16 is nonzero (a dst_id's type byte), 32 if it
//          is 0 (a page-aligned vaddr, 0 for OPEN/OPEN2/PARENT). Later checks reject what fits neither.
//   CLOSE/FORCE_CLOSE: both layouts carry zeros and get the same 4-byte reply: reported as Unknown, and the
//          caller answers without knowing.
// Limits: a 24-byte GET is never misread (u64@16 alone decides). A 32-byte GET for a vaddr at or below 4 MiB is
// either Unknown or misread as 24; such addresses are never lazy in practice (below the lowest mmap address of
// a non-PIE binary), and --criu-abi removes any doubt.
// Returns Unknown for a GET that fits neither layout, and for CLOSE/FORCE_CLOSE and unknown commands.
Format detect(const uint8_t* in, size_t len, size_t page_size);

const char* command_name(uint32_t command);

// Every constant above by name, for the constants-agreement test and for the addon's `constants` export.
struct NamedConstant {
  const char* name;
  uint64_t value;
};
extern const NamedConstant kConstants[];
extern const size_t kConstantCount;

}  // namespace lazyd::wire
