/**
 * Framing of CRIU protobuf images: magic, then length-prefixed records until a clean EOF.
 *
 *   [u32 IMG_COMMON_MAGIC] u32 type-magic { u32 length, <length bytes of a proto2 message> }*
 *
 * All u32 are native byte order. inventory.img has only its type magic. Raw images (pages-*.img) have no
 * framing and are not handled here.
 */
import { endianness } from 'node:os';
import { readFile, writeFile, rename, unlink } from 'node:fs/promises';
import * as path from 'node:path';
import type { MessageType } from './proto-wire.js';
import { ImageError, describeCause, type ImageEntryRef } from './errors.js';
import {
  CORE_MAGIC, IDS_MAGIC, IMG_COMMON_MAGIC, INVENTORY_MAGIC, KNOWN_MAGICS, MM_MAGIC,
  PAGEMAP_MAGIC, PSTREE_MAGIC, hex,
} from './magic.js';
import type { Decoded } from './schema.js';

export interface ImageKind {
  /** Short name used in messages ("pagemap"). */
  name: string;
  /** The per-type magic. */
  magic: number;
  /** The magic before it: IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC, or null (inventory.img). */
  common: number | null;
}

export const IMAGE_KINDS = {
  inventory: { name: 'inventory', magic: INVENTORY_MAGIC, common: null },
  pstree: { name: 'pstree', magic: PSTREE_MAGIC, common: IMG_COMMON_MAGIC },
  core: { name: 'core', magic: CORE_MAGIC, common: IMG_COMMON_MAGIC },
  ids: { name: 'ids', magic: IDS_MAGIC, common: IMG_COMMON_MAGIC },
  mm: { name: 'mm', magic: MM_MAGIC, common: IMG_COMMON_MAGIC },
  pagemap: { name: 'pagemap', magic: PAGEMAP_MAGIC, common: IMG_COMMON_MAGIC },
} as const satisfies Record<string, ImageKind>;

/** File names of the images (ids are decimal). */
export const imageFileName = {
  inventory: (): string => 'inventory.img',
  pstree: (): string => 'pstree.img',
  core: (pid: number): string => `core-${pid}.img`,
  ids: (pid: number): string => `ids-${pid}.img`,
  mm: (pid: number): string => `mm-${pid}.img`,
  pagemap: (pid: number): string => `pagemap-${pid}.img`,
  pages: (pagesId: number): string => `pages-${pagesId}.img`,
};

export const NATIVE_LITTLE_ENDIAN = endianness() === 'LE';

export function readU32(buf: Uint8Array, offset: number): number {
  const b = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  return NATIVE_LITTLE_ENDIAN ? b.readUInt32LE(offset) : b.readUInt32BE(offset);
}

export function writeU32(buf: Buffer, value: number, offset: number): void {
  if (NATIVE_LITTLE_ENDIAN) buf.writeUInt32LE(value >>> 0, offset);
  else buf.writeUInt32BE(value >>> 0, offset);
}

function byteSwap32(v: number): number {
  return (((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24)) >>> 0;
}

/** One record of an image: where it is and its message bytes. */
export interface ImageRecord {
  /** 0-based record index (the first record after the magic is 0). */
  index: number;
  /** Byte offset of the record's length prefix in the file. */
  offset: number;
  /** The message bytes (a view into the file buffer). */
  data: Buffer;
}

export interface SplitOptions {
  /** How errors name record i (default: the index itself, printed as "entry i"). */
  label?: (index: number) => ImageEntryRef;
}

function describeMagic(v: number): string {
  const known = KNOWN_MAGICS.get(v);
  return known ? `${hex(v)} (${known})` : hex(v);
}

function magicError(file: string, offset: number, kind: ImageKind, expected: number, got: number): ImageError {
  let hint = `this is not a ${kind.name} image`;
  if (byteSwap32(got) === expected) {
    hint = 'the image was written on a host with the other byte order; images are native-endian and cannot be read here';
  } else if (offset === 0 && kind.common !== null && got === kind.magic) {
    hint = 'the image has no common magic: images of img_version 1 (very old CRIU) are not supported; dump again with a current CRIU';
  } else if (KNOWN_MAGICS.has(got) && got !== IMG_COMMON_MAGIC) {
    hint = `this looks like a ${KNOWN_MAGICS.get(got)} image, not a ${kind.name} image; check the file name`;
  }
  return new ImageError({
    file, entry: 'magic', offset,
    reason: `wrong magic ${describeMagic(got)}, expected ${describeMagic(expected)}`,
    hint,
  });
}

/** Size of the magic header of an image of this kind. */
export function magicSize(kind: ImageKind): number {
  return kind.common === null ? 4 : 8;
}

/**
 * Checks the magic and splits the rest of the buffer into records.
 * Throws ImageError on a wrong magic, a truncated length or a truncated record.
 */
export function splitImage(buf: Buffer, kind: ImageKind, file: string, opts: SplitOptions = {}): ImageRecord[] {
  const label = opts.label ?? ((i: number) => i);
  const expected = kind.common === null ? [kind.magic] : [kind.common, kind.magic];
  let pos = 0;
  for (const want of expected) {
    if (buf.length - pos < 4) {
      throw new ImageError({
        file, entry: 'magic', offset: pos,
        reason: buf.length === 0 ? 'empty file, no magic' : `truncated magic (needs 4 bytes, ${buf.length - pos} left)`,
        hint: 'the image is incomplete; copy it again from the source',
      });
    }
    const got = readU32(buf, pos);
    if (got !== want) throw magicError(file, pos, kind, want, got);
    pos += 4;
  }

  const records: ImageRecord[] = [];
  while (pos < buf.length) {
    const index = records.length;
    const left = buf.length - pos;
    if (left < 4) {
      throw new ImageError({
        file, entry: label(index), offset: pos,
        reason: `truncated record length (needs 4 bytes, ${left} left)`,
        hint: 'the image is incomplete; copy it again from the source',
      });
    }
    const len = readU32(buf, pos);
    if (len > left - 4) {
      throw new ImageError({
        file, entry: label(index), offset: pos,
        reason: `truncated record (needs ${len} bytes, ${left - 4} left)`,
        hint: 'the image is incomplete; copy it again from the source',
      });
    }
    records.push({ index, offset: pos, data: buf.subarray(pos + 4, pos + 4 + len) });
    pos += 4 + len;
  }
  return records;
}

/** Decodes one record with `type`; a decode failure becomes an ImageError naming file, entry and offset. */
export function decodeRecord(type: MessageType, rec: ImageRecord, file: string, entry: ImageEntryRef = rec.index): Decoded {
  try {
    return type.decode(rec.data) as unknown as Decoded;
  } catch (err) {
    throw new ImageError({
      file, entry, offset: rec.offset,
      reason: `cannot decode ${type.name} (${rec.data.length} bytes): ${describeCause(err)}`,
      hint: 'the image is corrupt or is not a CRIU image of this type',
      cause: err,
    });
  }
}

function isNotFound(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as NodeJS.ErrnoException).code === 'ENOENT';
}

/** Reads a whole file; an fs error becomes an ImageError naming the file. */
export async function readImageBytes(file: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (err) {
    throw new ImageError({
      file,
      reason: isNotFound(err) ? 'file not found' : `cannot read: ${describeCause(err)}`,
      cause: err,
    });
  }
}

/**
 * Reads an image file and splits it into records. With `optional`, a missing file gives `undefined` (CRIU
 * treats a missing image as an empty one); otherwise it is an ImageError.
 */
export async function readImageRecords(
  file: string, kind: ImageKind, opts: SplitOptions & { optional?: boolean } = {},
): Promise<ImageRecord[] | undefined> {
  let buf: Buffer;
  try {
    buf = await readFile(file);
  } catch (err) {
    if (opts.optional && isNotFound(err)) return undefined;
    throw new ImageError({
      file,
      reason: isNotFound(err) ? `${kind.name} image not found` : `cannot read: ${describeCause(err)}`,
      cause: err,
    });
  }
  return splitImage(buf, kind, file, opts);
}

/** Encodes an image: magic(s) and one length-prefixed record per message. */
export function encodeImage(kind: ImageKind, messages: readonly Uint8Array[]): Buffer {
  const head = magicSize(kind);
  let total = head;
  for (const m of messages) total += 4 + m.length;
  const out = Buffer.alloc(total);
  let pos = 0;
  if (kind.common !== null) {
    writeU32(out, kind.common, pos);
    pos += 4;
  }
  writeU32(out, kind.magic, pos);
  pos += 4;
  for (const m of messages) {
    writeU32(out, m.length, pos);
    pos += 4;
    out.set(m, pos);
    pos += m.length;
  }
  return out;
}

/**
 * Writes bytes to `file` atomically: a temporary file in the same directory, then rename. A reader never sees
 * a half-written image.
 */
export async function writeFileAtomic(file: string, data: Uint8Array): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`);
  try {
    // 0600 whatever the umask: images hold process state (and the pages images process memory).
    await writeFile(tmp, data, { mode: 0o600, flag: 'wx' });
    await rename(tmp, file);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw new ImageError({ file, reason: `cannot write: ${describeCause(err)}`, cause: err });
  }
}

/** Encodes and writes an image file atomically. */
export async function writeImageFile(file: string, kind: ImageKind, messages: readonly Uint8Array[]): Promise<void> {
  await writeFileAtomic(file, encodeImage(kind, messages));
}
