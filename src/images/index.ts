/** CRIU images: reading (and writing pagemaps) in TypeScript. */
export { ImageError, formatImageError, type ImageErrorInit, type ImageEntryRef } from './errors.js';
export * from './magic.js';
export { toBigInt, fromBigInt } from './int64.js';
export { root as criuProtoRoot, CRIU_PROTO, encodeMessage } from './schema.js';
export {
  IMAGE_KINDS, imageFileName, splitImage, decodeRecord, readImageRecords, encodeImage, writeImageFile, writeFileAtomic,
  type ImageKind, type ImageRecord,
} from './image-file.js';
export {
  parsePagemap, readPagemap, encodePagemap, checkPagesFileSize, findEntry, entryEnd,
  type Pagemap, type PagemapEntry, type PagemapEntryInput, type PagemapEncoding, type PagemapTotals,
  type ParsePagemapOptions, type ReadPagemapOptions, type EncodePagemapOptions,
} from './pagemap.js';
export { parsePstree, readPstree, type PstreeEntry } from './pstree.js';
export { parseMm, readMm, findVma, isGuardVma, type Vma, type MmImage } from './mm.js';
export { parseInventory, readInventory, type Inventory } from './inventory.js';
export { parseCore, readCore, taskStateFromCode, type CoreInfo, type TaskState } from './core.js';
export {
  loadParentChain, validateParentChain, parentDirOf, resolveRange, resolvePage,
  type PageSegment, type ResolvedPage, type LoadParentChainOptions,
} from './parent-chain.js';
export { lazyRanges, splitLazyRanges, type LazyRange } from './lazy-ranges.js';
export { loadCheckpoint, type Checkpoint, type CheckpointTask, type LoadCheckpointOptions } from './checkpoint.js';
