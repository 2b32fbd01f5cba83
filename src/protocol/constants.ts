// Protocol constants: the TypeScript twin of native/core/wire/wire.h (docs/protocol.md §1.2–§1.4, §3.2, §4.1).
//
// The "shared" constants below carry exactly the names and values of wire.h's kConstants list (wire.cc);
// test/unit/constants.test.ts checks them against the addon's `constants` export and against wire.h's text.
// Everything after the CONSTANTS record is TypeScript-only.

// Commands (low 16 bits of cmd) and the flag shift (§1.3).
export const PS_IOV_ADD = 1;
export const PS_IOV_HOLE = 2;
export const PS_IOV_OPEN = 3;
export const PS_IOV_OPEN2 = 4;
export const PS_IOV_PARENT = 5;
export const PS_IOV_ADD_F = 6;
export const PS_IOV_GET = 7;
export const PS_IOV_CLOSE = 0x1023;
export const PS_IOV_FORCE_CLOSE = 0x1024;
export const PS_CMD_BITS = 16;
export const PS_CMD_MASK = 0xffff;

// dst_id of upload commands: (id << 8) | type (§1.4). GET carries the bare pid.
export const PS_TYPE_BITS = 8;
export const PS_TYPE_MASK = 0xff;
export const PS_TYPE_PID = 1;
export const PS_TYPE_SHMEM = 2;

// Pagemap flags, also carried in cmd >> 16 of ADD_F.
export const PE_PARENT = 1;
export const PE_LAZY = 2;
export const PE_PRESENT = 4;

// The lazy GET reply: ADD_F with PE_PRESENT (0x00040006).
export const GET_REPLY_CMD = ((PE_PRESENT << PS_CMD_BITS) | PS_IOV_ADD_F) >>> 0;

// Restore handshake end marker "RSTF" (§3.2).
export const LAZY_PAGES_RESTORE_FINISHED = 0x52535446;

// The kernel's PID_MAX_LIMIT on 64-bit: no pid is larger. Used by header autodetection.
export const PID_MAX_LIMIT = 4 * 1024 * 1024;

export const HEADER_SIZE_V24 = 24; // CRIU <= 4.1: u32 cmd, u32 nr_pages, u64 vaddr, u64 dst_id
export const HEADER_SIZE_V32 = 32; // CRIU >= 4.2: u32 cmd, 4 pad, u64 nr_pages, u64 vaddr, u64 dst_id
export const HEADER_SIZE_MAX = 32;

/**
 * Every shared constant by name: the same set of names and values as wire.cc's kConstants, which the addon
 * exports as `constants` (numbers, or bigints for values of 2^53 and above).
 */
export const CONSTANTS: Readonly<Record<string, number | bigint>> = Object.freeze({
  PS_IOV_ADD,
  PS_IOV_HOLE,
  PS_IOV_OPEN,
  PS_IOV_OPEN2,
  PS_IOV_PARENT,
  PS_IOV_ADD_F,
  PS_IOV_GET,
  PS_IOV_CLOSE,
  PS_IOV_FORCE_CLOSE,
  PS_CMD_BITS,
  PS_CMD_MASK,
  PS_TYPE_BITS,
  PS_TYPE_MASK,
  PS_TYPE_PID,
  PS_TYPE_SHMEM,
  PE_PARENT,
  PE_LAZY,
  PE_PRESENT,
  GET_REPLY_CMD,
  LAZY_PAGES_RESTORE_FINISHED,
  PID_MAX_LIMIT,
  HEADER_SIZE_V24,
  HEADER_SIZE_V32,
  HEADER_SIZE_MAX,
});

// ---- TypeScript-only constants ----

/** The page size of every recorded session and of x86-64; page counts on the wire are in these units. */
export const DEFAULT_PAGE_SIZE = 4096;

// Sizes of the bare replies (§1.3): OPEN2 -> 1 byte has_parent; PARENT, CLOSE, FORCE_CLOSE -> native int32.
export const OPEN2_REPLY_SIZE = 1;
export const PARENT_REPLY_SIZE = 4;
export const CLOSE_REPLY_SIZE = 4;

// Legacy dst_id type numbers a server must also accept (§1.4): old CRIU used its CR_FD_* enum values.
export const PS_TYPE_LEGACY_PID: readonly number[] = Object.freeze([10, 11, 16, 17]);
export const PS_TYPE_LEGACY_SHMEM: readonly number[] = Object.freeze([27, 28, 29, 32, 33, 34]);

// userfaultfd message events (uffd_msg.event) and API features, from <linux/userfaultfd.h>.
export const UFFD_EVENT_PAGEFAULT = 0x12;
export const UFFD_EVENT_FORK = 0x13;
export const UFFD_EVENT_REMAP = 0x14;
export const UFFD_EVENT_REMOVE = 0x15;
export const UFFD_EVENT_UNMAP = 0x16;
export const UFFD_FEATURE_EVENT_FORK = 1 << 1;
export const UFFD_FEATURE_EVENT_REMAP = 1 << 2;
export const UFFD_FEATURE_EVENT_REMOVE = 1 << 3;
export const UFFD_FEATURE_EVENT_UNMAP = 1 << 6;
