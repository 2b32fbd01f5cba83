/**
 * pagemap-<id>.img: which address ranges were dumped and where their data is.
 *
 * Record 0 is PagemapHead {pages_id}; every further record is a PagemapEntry. Two encodings exist:
 *   - CRIU <= 4.1: the page count is field 2;
 *   - CRIU >= 4.2: field 2 is written as 0 and the count is field 5.
 * Reading normalises both (field 5 wins when present; in_parent adds PE_PARENT; no flags means PE_PRESENT)
 * and computes, for every PE_PRESENT entry, its byte offset in pages-<pages_id>.img (the sum of the sizes of
 * the earlier present entries).
 */
import { stat } from 'node:fs/promises';
import * as path from 'node:path';
import { ImageError } from './errors.js';
import { IMAGE_KINDS, decodeRecord, imageFileName, readImageBytes, splitImage, encodeImage } from './image-file.js';
import { fromBigInt, toBigInt } from './int64.js';
import {
  DEFAULT_PAGE_SIZE, PE_KNOWN_FLAGS, PE_LAZY, PE_PARENT, PE_PRESENT, hex, pagemapFlagsToString,
} from './magic.js';
import { PagemapEntryType, PagemapHeadType, encodeMessage, has } from './schema.js';

export type PagemapEncoding = '4.1' | '4.2' | 'both';

export interface PagemapEntry {
  /** 0-based index among the entries (the head record is not counted). */
  index: number;
  vaddr: bigint;
  nrPages: number;
  /** Normalised PE_* flags. */
  flags: number;
  /** Byte offset of this entry's data in pages-<pages_id>.img; set only for PE_PRESENT entries. */
  pagesOffset?: bigint;
  /** Byte offset of the record (its length prefix) in the pagemap file. */
  recordOffset: number;
  /** The fields as found on the wire, before normalisation. */
  wire: { compatNrPages?: number; nrPages?: bigint; inParent?: boolean; flags?: number };
}

export interface PagemapTotals {
  entries: number;
  pages: number;
  /** Pages with PE_PRESENT (their data is in the pages file). */
  presentPages: number;
  /** Pages with PE_LAZY. */
  lazyPages: number;
  /** Pages with PE_LAZY and without PE_PRESENT (data only at the source / page server). */
  lazyOnlyPages: number;
  /** Pages with PE_PARENT (data in the parent images). */
  parentPages: number;
}

export interface Pagemap {
  /** Path of the pagemap file. */
  file: string;
  pagesId: number;
  /** pages-<pages_id>.img next to the pagemap. */
  pagesPath: string;
  pageSize: number;
  entries: PagemapEntry[];
  /** Encoding detected from the entries; 'mixed' if they disagree, 'empty' with no entries. */
  encoding: PagemapEncoding | 'mixed' | 'empty';
  totals: PagemapTotals;
  /** Size the pages file must have at least: presentPages * pageSize. */
  pagesBytes: bigint;
  /** Actual size of the pages file when it was checked. */
  pagesFileSize?: number;
  /** The same pagemap in the parent images dir, when loaded by the parent-chain code. */
  parent?: Pagemap;
}

export interface ParsePagemapOptions {
  /** Path used in error messages and to locate the pages file. */
  file: string;
  pageSize?: number;
  /** Size of pages-<pages_id>.img; when given, every present entry must lie inside it. */
  pagesFileSize?: number;
}

const TRUNCATED_HINT = 'the image is incomplete; copy it again from the source';
const CORRUPT_HINT = 'the pagemap is corrupt or was not written by CRIU';

function entryLabel(recordIndex: number): number | string {
  return recordIndex === 0 ? 'head' : recordIndex - 1;
}

/** End address (exclusive) of an entry. */
export function entryEnd(e: Pick<PagemapEntry, 'vaddr' | 'nrPages'>, pageSize: number = DEFAULT_PAGE_SIZE): bigint {
  return e.vaddr + BigInt(e.nrPages) * BigInt(pageSize);
}

/** Parses a pagemap image held in memory. */
export function parsePagemap(buf: Buffer, opts: ParsePagemapOptions): Pagemap {
  const { file } = opts;
  const pageSize = opts.pageSize ?? DEFAULT_PAGE_SIZE;
  const ps = BigInt(pageSize);
  const records = splitImage(buf, IMAGE_KINDS.pagemap, file, { label: entryLabel });
  if (records.length === 0) {
    throw new ImageError({
      file, entry: 'head', offset: buf.length,
      reason: 'no PagemapHead record after the magic', hint: TRUNCATED_HINT,
    });
  }
  const head = decodeRecord(PagemapHeadType, records[0]!, file, 'head');
  if (!has(head, 'pages_id')) {
    throw new ImageError({
      file, entry: 'head', offset: records[0]!.offset,
      reason: 'PagemapHead has no pages_id (field 1)', hint: CORRUPT_HINT,
    });
  }
  const pagesId = head.pages_id as number;

  const entries: PagemapEntry[] = [];
  const totals: PagemapTotals = { entries: 0, pages: 0, presentPages: 0, lazyPages: 0, lazyOnlyPages: 0, parentPages: 0 };
  const seen = { v41: 0, v42: 0, both: 0 };
  let nextPagesOffset = 0n;
  let prevEnd = -1n;

  for (const rec of records.slice(1)) {
    const index = rec.index - 1;
    const fail = (reason: string, hint = CORRUPT_HINT): ImageError =>
      new ImageError({ file, entry: index, offset: rec.offset, reason, hint });
    const msg = decodeRecord(PagemapEntryType, rec, file, index);

    if (!has(msg, 'vaddr')) throw fail('PagemapEntry has no vaddr (field 1)');
    const vaddr = toBigInt(msg.vaddr);
    const wire: PagemapEntry['wire'] = {};
    if (has(msg, 'compat_nr_pages')) wire.compatNrPages = msg.compat_nr_pages as number;
    if (has(msg, 'nr_pages')) wire.nrPages = toBigInt(msg.nr_pages);
    if (has(msg, 'in_parent')) wire.inParent = msg.in_parent as boolean;
    if (has(msg, 'flags')) wire.flags = msg.flags as number;

    let count: bigint;
    if (wire.nrPages !== undefined) {
      count = wire.nrPages;
      if (wire.compatNrPages === 0 || wire.compatNrPages === undefined) seen.v42++;
      else seen.both++;
    } else if (wire.compatNrPages !== undefined) {
      count = BigInt(wire.compatNrPages);
      seen.v41++;
    } else {
      throw fail('PagemapEntry has no page count (neither field 2 nor field 5)');
    }
    if (count === 0n) {
      throw fail('entry has 0 pages', wire.nrPages === undefined
        ? 'field 2 is 0 and field 5 is absent: a CRIU >= 4.2 pagemap whose field 5 was lost, or a corrupt pagemap'
        : CORRUPT_HINT);
    }
    if (count > BigInt(Number.MAX_SAFE_INTEGER)) throw fail(`page count ${count} is too large`);
    const nrPages = Number(count);

    let flags = wire.flags ?? (wire.inParent ? 0 : PE_PRESENT);
    if (wire.inParent) flags |= PE_PARENT;
    if (flags & ~PE_KNOWN_FLAGS) throw fail(`unknown flags ${hex(flags)} (${pagemapFlagsToString(flags)})`);
    if (flags === 0) throw fail('flags are 0: the entry says neither where its data is nor that it is lazy');

    if (vaddr % ps !== 0n) throw fail(`vaddr ${hex(vaddr)} is not aligned to the page size ${pageSize}`);
    const end = vaddr + count * ps;
    if (end > 1n << 64n) throw fail(`range ${hex(vaddr)} + ${nrPages} pages goes past the end of the address space`);
    if (vaddr < prevEnd) {
      const prev = entries[entries.length - 1]!;
      throw fail(
        `vaddr ${hex(vaddr)} is below the end ${hex(prevEnd)} of entry ${prev.index} (${hex(prev.vaddr)} +${prev.nrPages} pages); ` +
        'entries must be sorted by address without overlap',
      );
    }
    prevEnd = end;

    const entry: PagemapEntry = { index, vaddr, nrPages, flags, recordOffset: rec.offset, wire };
    if (flags & PE_PRESENT) {
      entry.pagesOffset = nextPagesOffset;
      nextPagesOffset += count * ps;
      totals.presentPages += nrPages;
    }
    if (flags & PE_LAZY) {
      totals.lazyPages += nrPages;
      if (!(flags & PE_PRESENT)) totals.lazyOnlyPages += nrPages;
    }
    if (flags & PE_PARENT) totals.parentPages += nrPages;
    totals.pages += nrPages;
    entries.push(entry);
  }
  totals.entries = entries.length;

  let encoding: Pagemap['encoding'] = 'empty';
  const kinds = [seen.v41 && '4.1', seen.v42 && '4.2', seen.both && 'both'].filter(Boolean) as PagemapEncoding[];
  if (kinds.length === 1) encoding = kinds[0]!;
  else if (kinds.length > 1) encoding = 'mixed';

  const pm: Pagemap = {
    file, pagesId, pagesPath: path.join(path.dirname(file), imageFileName.pages(pagesId)), pageSize,
    entries, encoding, totals, pagesBytes: nextPagesOffset,
  };
  if (opts.pagesFileSize !== undefined) checkPagesFileSize(pm, opts.pagesFileSize);
  return pm;
}

/**
 * Checks that every present entry's data lies inside the pages file. Throws ImageError naming the pagemap,
 * the first entry that does not fit and its record offset.
 */
export function checkPagesFileSize(pm: Pagemap, size: number): void {
  const ps = BigInt(pm.pageSize);
  const pagesName = path.basename(pm.pagesPath);
  for (const e of pm.entries) {
    if (e.pagesOffset === undefined) continue;
    const end = e.pagesOffset + BigInt(e.nrPages) * ps;
    if (end > BigInt(size)) {
      throw new ImageError({
        file: pm.file, entry: e.index, offset: e.recordOffset,
        reason: `data of ${hex(e.vaddr)} +${e.nrPages} pages is at bytes ${e.pagesOffset}..${end} of ${pagesName}, ` +
          `which has only ${size} bytes (the pagemap needs ${pm.pagesBytes})`,
        hint: `${pagesName} is truncated or belongs to another dump; copy it again from the source`,
      });
    }
  }
  pm.pagesFileSize = size;
}

export interface ReadPagemapOptions {
  pageSize?: number;
  /** Check the pages file size against the entries (default true). A missing pages file is an error only if some entry is PE_PRESENT. */
  checkPages?: boolean;
}

/** Reads and validates pagemap-<id>.img (and, by default, the size of its pages file). */
export async function readPagemap(file: string, opts: ReadPagemapOptions = {}): Promise<Pagemap> {
  const buf = await readImageBytes(file);
  const pm = parsePagemap(buf, { file, pageSize: opts.pageSize });
  if (opts.checkPages ?? true) {
    let size: number | undefined;
    try {
      size = (await stat(pm.pagesPath)).size;
    } catch (err) {
      const first = pm.entries.find((e) => e.flags & PE_PRESENT);
      if (first) {
        throw new ImageError({
          file: pm.file, entry: first.index, offset: first.recordOffset,
          reason: `the entry has data (PE_PRESENT) but ${path.basename(pm.pagesPath)} cannot be opened: ${(err as Error).message}`,
          hint: `copy ${path.basename(pm.pagesPath)} into ${path.dirname(pm.pagesPath)} together with the pagemap`,
          cause: err,
        });
      }
    }
    if (size !== undefined) checkPagesFileSize(pm, size);
  }
  return pm;
}

/** Finds the entry containing `vaddr` (binary search), or undefined. */
export function findEntry(pm: Pick<Pagemap, 'entries' | 'pageSize'>, vaddr: bigint): PagemapEntry | undefined {
  const i = firstEntryEndingAfter(pm, vaddr);
  const e = pm.entries[i];
  return e && e.vaddr <= vaddr ? e : undefined;
}

/** Index of the first entry whose end is above `vaddr` (entries.length if none). */
export function firstEntryEndingAfter(pm: Pick<Pagemap, 'entries' | 'pageSize'>, vaddr: bigint): number {
  let lo = 0;
  let hi = pm.entries.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (entryEnd(pm.entries[mid]!, pm.pageSize) <= vaddr) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export interface PagemapEntryInput {
  vaddr: bigint;
  nrPages: number | bigint;
  flags: number;
}

export interface EncodePagemapOptions {
  /**
   * '4.1': count in field 2 only, as CRIU <= 4.1 writes (CRIU >= 4.2 falls back to field 2 when field 5 is absent);
   * '4.2': field 2 = 0 and count in field 5, as CRIU >= 4.2 writes;
   * 'both' (default): field 2 = count (0 if it does not fit in 32 bits) and field 5 = count, readable by every version.
   */
  encoding?: PagemapEncoding;
  pageSize?: number;
}

/**
 * Encodes a pagemap image (magic, PagemapHead, entries). Flags are written as given (always present, like CRIU);
 * in_parent is never written. Entries must be page-aligned, non-empty, sorted and non-overlapping.
 */
export function encodePagemap(head: { pagesId: number }, entries: readonly PagemapEntryInput[], opts: EncodePagemapOptions = {}): Buffer {
  const encoding = opts.encoding ?? 'both';
  const ps = BigInt(opts.pageSize ?? DEFAULT_PAGE_SIZE);
  if (!Number.isInteger(head.pagesId) || head.pagesId < 0 || head.pagesId > 0xffffffff) {
    throw new RangeError(`pages_id ${head.pagesId} is not a u32`);
  }
  const records: Uint8Array[] = [encodeMessage(PagemapHeadType, { pages_id: head.pagesId })];
  let prevEnd = -1n;
  entries.forEach((e, i) => {
    const count = BigInt(e.nrPages);
    if (count <= 0n || count >= 1n << 64n) throw new RangeError(`entry ${i}: bad page count ${count}`);
    if (e.vaddr < 0n || e.vaddr % ps !== 0n) throw new RangeError(`entry ${i}: vaddr ${hex(e.vaddr)} is not page-aligned`);
    if (e.vaddr < prevEnd) throw new RangeError(`entry ${i}: vaddr ${hex(e.vaddr)} overlaps or precedes the previous entry (ends ${hex(prevEnd)})`);
    if (!Number.isInteger(e.flags) || e.flags <= 0 || e.flags & ~PE_KNOWN_FLAGS) throw new RangeError(`entry ${i}: bad flags ${e.flags}`);
    prevEnd = e.vaddr + count * ps;
    const fields: Record<string, unknown> = { vaddr: fromBigInt(e.vaddr) };
    const fits32 = count <= 0xffffffffn;
    switch (encoding) {
      case '4.1':
        if (!fits32) throw new RangeError(`entry ${i}: ${count} pages do not fit the 4.1 encoding (u32 field 2)`);
        fields.compat_nr_pages = Number(count);
        break;
      case '4.2':
        fields.compat_nr_pages = 0;
        fields.nr_pages = fromBigInt(count);
        break;
      case 'both':
        fields.compat_nr_pages = fits32 ? Number(count) : 0;
        fields.nr_pages = fromBigInt(count);
        break;
      default:
        throw new RangeError(`unknown pagemap encoding ${String(encoding)}`);
    }
    fields.flags = e.flags;
    records.push(encodeMessage(PagemapEntryType, fields));
  });
  return encodeImage(IMAGE_KINDS.pagemap, records);
}
