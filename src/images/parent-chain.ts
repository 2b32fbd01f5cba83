/**
 * Parent chains and page lookup.
 *
 * With pre-dumps (--prev-images-dir, --track-mem) an images dir has a `parent` symlink to the previous images
 * dir (relative to the images dir). A PE_PARENT entry carries no data: the same address range is looked up in
 * parent/pagemap-<same id>.img, recursively; a parent entry may be shorter, in which case the lookup continues
 * with the next parent entry. Parents are always local.
 */
import { access, realpath, readlink } from 'node:fs/promises';
import * as path from 'node:path';
import { ImageError } from './errors.js';
import { DEFAULT_PAGE_SIZE, PARENT_LINK, PE_PARENT, PE_PRESENT, hex } from './magic.js';
import {
  entryEnd, firstEntryEndingAfter, readPagemap, type Pagemap, type PagemapEntry, type ReadPagemapOptions,
} from './pagemap.js';

export interface LoadParentChainOptions extends ReadPagemapOptions {
  /** Stop after this many parent levels (default 64). */
  maxDepth?: number;
}

function needsParent(e: PagemapEntry): boolean {
  return (e.flags & PE_PARENT) !== 0 && (e.flags & PE_PRESENT) === 0;
}

/** Where `parent` in an images dir points, resolved relative to that dir; undefined if there is no link. */
export async function parentDirOf(dir: string): Promise<string | undefined> {
  const link = path.join(dir, PARENT_LINK);
  try {
    return path.resolve(dir, await readlink(link));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'EINVAL') return link; // a real directory named "parent"
    throw err;
  }
}

/**
 * Loads the parent pagemaps that `pm` needs (only if it has PE_PARENT entries), recursively, sets `pm.parent`
 * along the chain, and checks that every PE_PARENT page is backed by data somewhere in the chain.
 */
export async function loadParentChain(pm: Pagemap, opts: LoadParentChainOptions = {}): Promise<Pagemap> {
  const maxDepth = opts.maxDepth ?? 64;
  const visited = new Set<string>();
  let cur: Pagemap = pm;
  for (let depth = 0; ; depth++) {
    const first = cur.entries.find(needsParent);
    if (!first) break;
    const dir = path.dirname(cur.file);
    const fail = (reason: string, hint: string, cause?: unknown): ImageError =>
      new ImageError({ file: cur.file, entry: first.index, offset: first.recordOffset, reason, hint, cause });
    if (depth >= maxDepth) throw fail(`parent chain is deeper than ${maxDepth} levels`, 'check the parent symlinks for a loop');
    const real = await realpath(dir).catch(() => dir);
    if (visited.has(real)) throw fail(`parent chain loops back to ${dir}`, `fix the ${PARENT_LINK} symlinks`);
    visited.add(real);

    const parentDir = await parentDirOf(dir);
    if (parentDir === undefined) {
      throw fail(
        `entry ${hex(first.vaddr)} +${first.nrPages} pages is PE_PARENT but ${path.join(dir, PARENT_LINK)} does not exist`,
        `these images were dumped against previous images (pre-dump / --prev-images-dir); create the ${PARENT_LINK} symlink to that dir, e.g. ln -s ../1 ${path.join(dir, PARENT_LINK)}`,
      );
    }
    const parentFile = path.join(parentDir, path.basename(cur.file));
    try {
      await access(parentFile);
    } catch (err) {
      throw fail(
        `entry ${hex(first.vaddr)} +${first.nrPages} pages is PE_PARENT but ${parentFile} cannot be opened (${(err as Error).message})`,
        `the ${PARENT_LINK} symlink must point to the previous images dir (resolved relative to ${dir}; it points to ${parentDir})`,
        err,
      );
    }
    const parent = await readPagemap(parentFile, opts);
    if (parent.pageSize !== cur.pageSize) throw fail('parent pagemap uses another page size', 'use one page size for the chain');
    cur.parent = parent;
    cur = parent;
  }
  validateParentChain(pm);
  return pm;
}

/** Throws ImageError if some PE_PARENT range of `pm` is not backed by data in the (already loaded) chain. */
export function validateParentChain(pm: Pagemap): void {
  for (const e of pm.entries) {
    if (needsParent(e)) resolveRange(pm, e.vaddr, e.nrPages);
  }
}

/** A piece of an address range and where its data is. */
export type PageSegment =
  /** Data in a pages file: `offset` is the byte offset of `start` in `pagesPath`; depth 0 = this dump, 1 = parent, ... */
  | { kind: 'data'; start: bigint; nrPages: number; pagesPath: string; offset: bigint; depth: number }
  /** PE_LAZY without PE_PRESENT: the data exists only at the source (page server). */
  | { kind: 'remote'; start: bigint; nrPages: number }
  /** Not in the pagemap: never dumped (zero page / untouched). */
  | { kind: 'none'; start: bigint; nrPages: number };

interface Origin {
  pm: Pagemap;
  entry: PagemapEntry;
}

function push(out: PageSegment[], seg: PageSegment, ps: bigint): void {
  const prev = out[out.length - 1];
  if (prev && prev.kind === seg.kind && prev.start + BigInt(prev.nrPages) * ps === seg.start) {
    if (prev.kind !== 'data' || (seg.kind === 'data' && prev.pagesPath === seg.pagesPath && prev.depth === seg.depth &&
        prev.offset + BigInt(prev.nrPages) * ps === seg.offset)) {
      prev.nrPages += seg.nrPages;
      return;
    }
  }
  out.push(seg);
}

function resolveIn(pm: Pagemap, start: bigint, nrPages: number, depth: number, out: PageSegment[], origin?: Origin): void {
  const ps = BigInt(pm.pageSize);
  const end = start + BigInt(nrPages) * ps;
  let cur = start;
  let i = firstEntryEndingAfter(pm, cur);
  const hole = (from: bigint, to: bigint, why: string): void => {
    if (!origin) {
      push(out, { kind: 'none', start: from, nrPages: Number((to - from) / ps) }, ps);
      return;
    }
    throw new ImageError({
      file: origin.pm.file, entry: origin.entry.index, offset: origin.entry.recordOffset,
      reason: `pages ${hex(from)}..${hex(to)} are PE_PARENT but ${pm.file} ${why}`,
      hint: 'the parent images do not belong to this dump; point the parent symlink to the images dir the dump was made against',
    });
  };
  while (cur < end) {
    const e = pm.entries[i];
    if (!e || e.vaddr >= end) {
      hole(cur, end, 'has no entry for them');
      break;
    }
    if (e.vaddr > cur) {
      hole(cur, e.vaddr, 'has no entry for them');
      cur = e.vaddr;
    }
    const eEnd = entryEnd(e, pm.pageSize);
    const segEnd = eEnd < end ? eEnd : end;
    const n = Number((segEnd - cur) / ps);
    if (e.flags & PE_PRESENT) {
      push(out, { kind: 'data', start: cur, nrPages: n, pagesPath: pm.pagesPath, offset: e.pagesOffset! + (cur - e.vaddr), depth }, ps);
    } else if (e.flags & PE_PARENT) {
      if (!pm.parent) {
        const o = origin ?? { pm, entry: e };
        throw new ImageError({
          file: o.pm.file, entry: o.entry.index, offset: o.entry.recordOffset,
          reason: `pages ${hex(cur)}..${hex(segEnd)} are PE_PARENT but the parent pagemap of ${pm.file} is not loaded`,
          hint: 'load the images with loadCheckpoint() or loadParentChain()',
        });
      }
      resolveIn(pm.parent, cur, n, depth + 1, out, origin ?? { pm, entry: e });
    } else if (origin) {
      hole(cur, segEnd, `has them only as lazy pages without data (entry ${e.index})`);
    } else {
      push(out, { kind: 'remote', start: cur, nrPages: n }, ps);
    }
    cur = segEnd;
    i++;
  }
}

/**
 * Splits [start, start + nrPages pages) by where the data is, following PE_PARENT entries down the loaded chain.
 * `start` must be page-aligned. Throws ImageError if a PE_PARENT range has no data in the chain.
 */
export function resolveRange(pm: Pagemap, start: bigint, nrPages: number): PageSegment[] {
  const ps = BigInt(pm.pageSize);
  if (start % ps !== 0n) throw new RangeError(`start ${hex(start)} is not page-aligned`);
  const out: PageSegment[] = [];
  if (nrPages > 0) resolveIn(pm, start, nrPages, 0, out);
  return out;
}

export interface ResolvedPage {
  /** The page-aligned address looked up. */
  vaddr: bigint;
  pagesPath: string;
  /** Byte offset of the page in pagesPath. */
  offset: bigint;
  /** 0 = this images dir, 1 = its parent, ... */
  depth: number;
}

/**
 * Where the data of the page containing `vaddr` is. undefined when there is no local data: the page is not
 * in the pagemap (never dumped) or is lazy-only (use findEntry() to tell which).
 */
export function resolvePage(src: Pagemap | { pagemap?: Pagemap }, vaddr: bigint): ResolvedPage | undefined {
  const pm = 'entries' in src ? src : src.pagemap;
  if (!pm) return undefined;
  const ps = BigInt(pm.pageSize ?? DEFAULT_PAGE_SIZE);
  const page = vaddr - (vaddr % ps);
  const [seg] = resolveRange(pm, page, 1);
  if (!seg || seg.kind !== 'data') return undefined;
  return { vaddr: page, pagesPath: seg.pagesPath, offset: seg.offset, depth: seg.depth };
}
