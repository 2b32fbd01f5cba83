// `--tracking dirty` (tracking.ts): the primary flattens each epoch CRIU dumped on the previous one. CRIU wrote
// only the dirtied pages; every other page is a pagemap entry flagged in-parent, whose data is in the previous
// epoch's pages file (images/parent-chain.ts finds it). Flattening rewrites each pagemap-*.img and its pages file
// so that every entry has its data here, then removes the `parent` link. Why the primary and not the standby:
//   - CRIU follows the whole parent chain on the next dump (and a restore would too); epochs never stop, so
//     unflattened the primary would have to keep every epoch since the first. Flattened, the previous epoch is
//     self-contained and the chain is one level deep: the primary keeps two epochs, as in compare mode.
//   - A flattened epoch is what the standby already receives in compare mode: the same delta format (runs of
//     page numbers against the committed copy of the same file), the same rebuild and SHA-256 check, the same
//     self-contained epoch to restore at failover. The standby has one code path for every mode.
// The runs come from the pagemap, not from hashes: a page is unchanged when its data comes from the parent's
// file of the same name at the same offset (what the standby holds committed); everything else — dirtied pages,
// and parent pages that moved because the memory layout changed — is sent.
import fs from 'node:fs';
import path from 'node:path';
import { compareVersions } from '../migrate/criu-host.js';
import { loadParentChain, resolveRange } from '../images/parent-chain.js';
import { encodePagemap, findEntry, readPagemap, type Pagemap, type PagemapEncoding, type PagemapEntryInput } from '../images/pagemap.js';
import { PARENT_LINK, PE_LAZY, PE_PARENT, PE_PRESENT, pagemapFlagsToString } from '../images/magic.js';

export interface FlattenedPages {
  /** pages-<id>.img, as the flattened pagemap names it. */
  name: string;
  pages: number;
  /** Runs [first, count] of pages that differ from the parent's file of the same name (all pages without one). */
  runs: [number, number][];
  /** The parent epoch has a pages file of this name: the runs are a delta on it. */
  onParent: boolean;
}

const PAGEMAP = /^pagemap-(shmem-)?\d+\.img$/;
const COPY_BYTES = 1 << 20;

/** The pagemap encoding CRIU `version` writes (images/pagemap.ts). */
export function pagemapEncodingFor(version: string): PagemapEncoding {
  return compareVersions(version, '4.2') >= 0 ? '4.2' : '4.1';
}

function inParent(flags: number): boolean {
  return (flags & PE_PARENT) !== 0 && (flags & PE_PRESENT) === 0;
}

/** The pagemap `depth` levels down the loaded chain. */
function atDepth(pm: Pagemap, depth: number): Pagemap {
  let cur = pm;
  for (let i = 0; i < depth; i++) cur = cur.parent!;
  return cur;
}

interface Piece {
  file: string;
  offset: bigint;
  pages: number;
  depth: number;
}

function addRun(runs: [number, number][], first: number, count: number): void {
  const last = runs[runs.length - 1];
  if (last && last[0] + last[1] === first) last[1] += count;
  else runs.push([first, count]);
}

/** Copies the pieces, in order, into `out`. */
function writePieces(pieces: readonly Piece[], pageSize: number, out: string): void {
  const fds = new Map<string, number>();
  const output = fs.openSync(out, 'w', 0o600);
  const buffer = Buffer.alloc(COPY_BYTES);
  try {
    for (const piece of pieces) {
      let fd = fds.get(piece.file);
      if (fd === undefined) fds.set(piece.file, (fd = fs.openSync(piece.file, 'r')));
      let left = piece.pages * pageSize;
      let at = Number(piece.offset);
      while (left > 0) {
        const want = Math.min(left, buffer.length);
        const got = fs.readSync(fd, buffer, 0, want, at);
        if (got !== want) throw new Error(`${piece.file} ends at byte ${at + got}, but its pagemap has pages up to byte ${at + left}`);
        fs.writeSync(output, buffer, 0, got);
        at += got;
        left -= got;
      }
    }
  } finally {
    for (const fd of fds.values()) fs.closeSync(fd);
    fs.closeSync(output);
  }
}

async function flattenPagemap(file: string, pageSize: number, encoding: PagemapEncoding): Promise<FlattenedPages> {
  const pm = await readPagemap(file, { pageSize });
  const name = path.basename(pm.pagesPath);
  const needsParent = pm.entries.some((e) => inParent(e.flags));
  if (needsParent) await loadParentChain(pm, { pageSize });
  const parentHasFile = pm.parent !== undefined && fs.existsSync(path.join(path.dirname(pm.parent.file), name));
  const entries: PagemapEntryInput[] = [];
  const pieces: Piece[] = [];
  for (const e of pm.entries) {
    if (e.flags & PE_PRESENT) {
      entries.push({ vaddr: e.vaddr, nrPages: e.nrPages, flags: e.flags & ~PE_PARENT });
      pieces.push({ file: pm.pagesPath, offset: e.pagesOffset!, pages: e.nrPages, depth: 0 });
      continue;
    }
    if (!inParent(e.flags)) {
      throw new Error(`${file} entry ${e.index}: ${pagemapFlagsToString(e.flags)} pages without data here or in the parent — not what criu dump --leave-running writes`);
    }
    // resolveRange throws (ImageError) when the chain has no data for a page of an in-parent entry.
    for (const seg of resolveRange(pm, e.vaddr, e.nrPages)) {
      if (seg.kind !== 'data') throw new Error(`${file} entry ${e.index}: in-parent pages at ${seg.start.toString(16)} have no data in the parent`);
      const lazy = (e.flags | (findEntry(atDepth(pm, seg.depth), seg.start)?.flags ?? 0)) & PE_LAZY;
      entries.push({ vaddr: seg.start, nrPages: seg.nrPages, flags: PE_PRESENT | lazy });
      pieces.push({ file: seg.pagesPath, offset: seg.offset, pages: seg.nrPages, depth: seg.depth });
    }
  }
  const runs: [number, number][] = [];
  let page = 0;
  for (const piece of pieces) {
    const same = parentHasFile && piece.depth === 1 && path.basename(piece.file) === name && piece.offset === BigInt(page) * BigInt(pageSize);
    if (!same) addRun(runs, page, piece.pages);
    page += piece.pages;
  }
  if (needsParent) {
    const flat = `${pm.pagesPath}.flat`;
    writePieces(pieces, pageSize, flat);
    fs.renameSync(flat, pm.pagesPath);
    fs.writeFileSync(`${file}.flat`, encodePagemap({ pagesId: pm.pagesId }, entries, { encoding, pageSize }), { mode: 0o600 });
    fs.renameSync(`${file}.flat`, file);
  }
  return { name, pages: page, runs, onParent: parentHasFile };
}

/**
 * Flattens every pagemap of the epoch in `dir` onto its parent (the `parent` link criu dump --prev-images-dir
 * made), then removes the link; returns what changed per pages file. An epoch without a parent is left as it is
 * (every page changed).
 */
export async function flattenEpoch(dir: string, pageSize: number, encoding: PagemapEncoding): Promise<Map<string, FlattenedPages>> {
  const out = new Map<string, FlattenedPages>();
  for (const name of fs.readdirSync(dir).filter((n) => PAGEMAP.test(n)).sort()) {
    const flat = await flattenPagemap(path.join(dir, name), pageSize, encoding);
    out.set(flat.name, flat);
  }
  fs.rmSync(path.join(dir, PARENT_LINK), { force: true });
  return out;
}
