// The page hashing lazyd replicate did before the addon took it over (native/core/util/page_hashes.h): node:crypto,
// one createHash per page, 1 MiB preads. Kept as the reference the unit test checks the addon against and the
// baseline of bench/replicate.ts's hash micro-benchmark, not as product code.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import type { PageHashes } from '../../src/replicate/page-delta.js';

const CHUNK_PAGES = 256;

export function hashPagesNodeCrypto(file: string, pageSize: number): PageHashes {
  const size = fs.statSync(file).size;
  const pages = Math.ceil(size / pageSize);
  const hashes = Buffer.alloc(pages * 32);
  const whole = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  const buffer = Buffer.alloc(CHUNK_PAGES * pageSize);
  try {
    for (let page = 0; page < pages; page += CHUNK_PAGES) {
      const got = fs.readSync(fd, buffer, 0, buffer.length, page * pageSize);
      whole.update(buffer.subarray(0, got));
      for (let off = 0; off < got; off += pageSize) {
        createHash('sha256').update(buffer.subarray(off, Math.min(off + pageSize, got))).digest().copy(hashes, (page + off / pageSize) * 32);
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return { size, hashes, sha256: whole.digest('hex') };
}
