/**
 * Magic numbers, flag bits and other fixed values of the CRIU image format (image version 2).
 * Values are facts of the on-disk format; see docs/protocol.md §2.
 */

import { PE_LAZY, PE_PARENT, PE_PRESENT } from '../protocol/constants.js';

/** First u32 of every protobuf image except inventory.img. */
export const IMG_COMMON_MAGIC = 0x54564319;
/** First u32 of service images (stats-dump, irmap cache) instead of IMG_COMMON_MAGIC. */
export const IMG_SERVICE_MAGIC = 0x55105940;

export const INVENTORY_MAGIC = 0x58313116;
export const PSTREE_MAGIC = 0x50273030;
export const CORE_MAGIC = 0x55053847;
export const IDS_MAGIC = 0x54432030;
export const MM_MAGIC = 0x57492820;
export const PAGEMAP_MAGIC = 0x56084025;
/** Shmem pagemaps use the same magic as task pagemaps. */
export const SHMEM_PAGEMAP_MAGIC = PAGEMAP_MAGIC;

/** Names of the magics we know, to say what a wrong file actually is. */
export const KNOWN_MAGICS: ReadonlyMap<number, string> = new Map([
  [IMG_COMMON_MAGIC, 'common image magic'],
  [IMG_SERVICE_MAGIC, 'service image magic (stats/irmap)'],
  [INVENTORY_MAGIC, 'inventory'],
  [PSTREE_MAGIC, 'pstree'],
  [CORE_MAGIC, 'core'],
  [IDS_MAGIC, 'ids'],
  [MM_MAGIC, 'mm'],
  [PAGEMAP_MAGIC, 'pagemap'],
]);

/**
 * PagemapEntry.flags bits: the same bits ADD_F carries on the wire, so they are defined once, with the protocol
 * constants that test/unit/constants.test.ts checks against the native ones.
 */
export { PE_PARENT, PE_LAZY, PE_PRESENT } from '../protocol/constants.js';
export const PE_KNOWN_FLAGS = PE_PARENT | PE_LAZY | PE_PRESENT;

/** "PE_LAZY|PE_PRESENT" style rendering of pagemap flags (unknown bits as hex). */
export function pagemapFlagsToString(flags: number): string {
  const parts: string[] = [];
  if (flags & PE_PARENT) parts.push('PE_PARENT');
  if (flags & PE_LAZY) parts.push('PE_LAZY');
  if (flags & PE_PRESENT) parts.push('PE_PRESENT');
  const rest = flags & ~PE_KNOWN_FLAGS;
  if (rest) parts.push(`0x${rest.toString(16)}`);
  return parts.length ? parts.join('|') : '0';
}

/** VmaEntry.status bits (CRIU VMA_AREA_* / VMA_*), the ones this project looks at. */
export const VMA_AREA_REGULAR = 1 << 0;
export const VMA_AREA_STACK = 1 << 1;
export const VMA_AREA_VSYSCALL = 1 << 2;
export const VMA_AREA_VDSO = 1 << 3;
export const VMA_AREA_HEAP = 1 << 5;
export const VMA_FILE_PRIVATE = 1 << 6;
export const VMA_FILE_SHARED = 1 << 7;
export const VMA_ANON_SHARED = 1 << 8;
export const VMA_ANON_PRIVATE = 1 << 9;
export const VMA_AREA_VVAR = 1 << 12;
/**
 * CRIU >= 4.2: a fake VMA describing a MADV_GUARD_INSTALL range inside a real VMA. These are appended after
 * the real VMAs in mm-<pid>.img and are not address-sorted with them.
 */
export const VMA_AREA_GUARD = 1 << 16;

/** CoreEntry.tc.task_state values as stored in images. */
export const TASK_ALIVE = 1;
export const TASK_DEAD = 2;
export const TASK_STOPPED = 3;

/** InventoryEntry.img_version values. */
export const CRTOOLS_IMAGES_V1 = 1;
export const CRTOOLS_IMAGES_V1_1 = 2;

export { DEFAULT_PAGE_SIZE } from '../protocol/constants.js';

/** Name of the symlink to the previous images dir (parent chain). */
export const PARENT_LINK = 'parent';

export function hex(v: number | bigint): string {
  return `0x${v.toString(16)}`;
}
