// Page comparison between epochs: a SHA-256 per page of a pages-*.img file (the addon's, GnuTLS/nettle on a worker
// thread: native/core/util/page_hashes.h), and the delta that carries only the pages whose hash changed. Pages are
// compared at the same offset of the same file: CRIU writes a pages file in the pagemap's (address) order, so while
// the memory layout stays the same the offsets line up; when it changes, the pages after the change differ by
// offset and are sent (correct, only less saving). The standby rebuilds the file from its committed copy and
// checks the whole file's SHA-256 (sha256File, node:crypto: one stream, no per-page cost).
//
// Delta file layout (little-endian): u32 runs, runs × (u32 first page, u32 pages), then the runs' pages in order.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { loadNative } from '../native.js';

const CHUNK_PAGES = 256;

export interface PageHashes {
  size: number;
  /** 32 bytes per page. */
  hashes: Buffer;
  sha256: string;
}

/** Hashes every page of a file, and the whole file, off the JavaScript thread. */
export function hashPages(file: string, pageSize: number): Promise<PageHashes> {
  if (!(pageSize > 0)) return Promise.reject(new RangeError(`hashPages: page size ${pageSize}`));
  return loadNative().hashPages(file, pageSize);
}

/** The whole file's SHA-256 (hex), off the JavaScript thread. */
export async function sha256FileAsync(file: string): Promise<string> {
  return (await loadNative().hashPages(file, 0)).sha256;
}

/** Runs [first, count] of pages that differ from `previous` (all of them without one). */
export function changedRuns(current: PageHashes, previous: PageHashes | undefined): [number, number][] {
  const pages = current.hashes.length / 32;
  const runs: [number, number][] = [];
  for (let page = 0; page < pages; page++) {
    const same = previous !== undefined && page * 32 + 32 <= previous.hashes.length && current.hashes.compare(previous.hashes, page * 32, page * 32 + 32, page * 32, page * 32 + 32) === 0;
    if (same) continue;
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === page) last[1]++;
    else runs.push([page, 1]);
  }
  return runs;
}

/** Writes the delta of `file` (its changed runs) to `out`; returns the pages it holds. */
export function writeDelta(file: string, runs: [number, number][], pageSize: number, out: string): number {
  const header = Buffer.alloc(4 + runs.length * 8);
  header.writeUInt32LE(runs.length, 0);
  runs.forEach(([first, count], i) => {
    header.writeUInt32LE(first, 4 + i * 8);
    header.writeUInt32LE(count, 8 + i * 8);
  });
  const input = fs.openSync(file, 'r');
  const output = fs.openSync(out, 'w', 0o600);
  const buffer = Buffer.alloc(CHUNK_PAGES * pageSize);
  let pages = 0;
  try {
    fs.writeSync(output, header);
    for (const [first, count] of runs) {
      for (let done = 0; done < count; done += CHUNK_PAGES) {
        const n = Math.min(CHUNK_PAGES, count - done);
        const got = fs.readSync(input, buffer, 0, n * pageSize, (first + done) * pageSize);
        fs.writeSync(output, buffer, 0, got);
        pages += n;
      }
    }
  } finally {
    fs.closeSync(input);
    fs.closeSync(output);
  }
  return pages;
}

/**
 * Rebuilds a file of `size` bytes at `out` from `base` (the committed epoch's copy, or none) and a delta file;
 * throws one line when the delta is malformed. The caller checks the result's SHA-256.
 */
export function applyDelta(base: string | undefined, delta: string, size: number, pageSize: number, out: string): void {
  if (base && fs.existsSync(base)) fs.copyFileSync(base, out);
  else fs.writeFileSync(out, '', { mode: 0o600 });
  fs.truncateSync(out, size);
  const input = fs.openSync(delta, 'r');
  const output = fs.openSync(out, 'r+');
  try {
    const head = Buffer.alloc(4);
    if (fs.readSync(input, head, 0, 4, 0) !== 4) throw new Error('a delta without its header');
    const runs = head.readUInt32LE(0);
    const table = Buffer.alloc(runs * 8);
    if (fs.readSync(input, table, 0, table.length, 4) !== table.length) throw new Error('a delta cut short in its run table');
    let at = 4 + table.length;
    const buffer = Buffer.alloc(CHUNK_PAGES * pageSize);
    for (let i = 0; i < runs; i++) {
      const first = table.readUInt32LE(i * 8);
      const count = table.readUInt32LE(i * 8 + 4);
      for (let done = 0; done < count; done += CHUNK_PAGES) {
        const offset = (first + done) * pageSize;
        const want = Math.min(Math.min(CHUNK_PAGES, count - done) * pageSize, size - offset);
        if (want <= 0) throw new Error(`a delta run past the end of the file (page ${first + done})`);
        const got = fs.readSync(input, buffer, 0, want, at);
        if (got !== want) throw new Error('a delta cut short in its pages');
        fs.writeSync(output, buffer, 0, got, offset);
        at += got;
      }
    }
  } finally {
    fs.closeSync(input);
    fs.closeSync(output);
  }
}

export function sha256File(file: string): string {
  const hash = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buffer = Buffer.alloc(1 << 20);
  try {
    for (let got; (got = fs.readSync(fd, buffer, 0, buffer.length, null)) > 0; ) hash.update(buffer.subarray(0, got));
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest('hex');
}
