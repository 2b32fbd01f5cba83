/** mm-<pid>.img: one MmEntry; only its VMAs (field 14) are read. */
import { ImageError } from './errors.js';
import { IMAGE_KINDS, decodeRecord, readImageBytes, splitImage } from './image-file.js';
import { toBigInt } from './int64.js';
import { VMA_AREA_GUARD, hex } from './magic.js';
import { MmEntryType, has, type Decoded } from './schema.js';

export interface Vma {
  /** Index in the image's vmas list. */
  index: number;
  start: bigint;
  /** Exclusive. */
  end: bigint;
  pgoff: bigint;
  shmid: bigint;
  prot: number;
  /** mmap MAP_* flags. */
  flags: number;
  /** CRIU VMA_* status bits. */
  status: number;
  fd: bigint;
  madv?: bigint;
  fdflags?: number;
}

export interface MmImage {
  /** Real VMAs, sorted by address, non-overlapping. */
  vmas: Vma[];
  /** CRIU >= 4.2 VMA_AREA_GUARD pseudo-VMAs (MADV_GUARD_INSTALL ranges inside real VMAs), kept apart. */
  guards: Vma[];
}

export function isGuardVma(v: Pick<Vma, 'status'>): boolean {
  return (v.status & VMA_AREA_GUARD) !== 0;
}

const REQUIRED = ['start', 'end', 'pgoff', 'shmid', 'prot', 'flags', 'status'] as const;

export function parseMm(buf: Buffer, file: string): MmImage {
  const records = splitImage(buf, IMAGE_KINDS.mm, file);
  if (records.length !== 1) {
    throw new ImageError({
      file, entry: records.length ? 1 : 0, offset: records.length ? records[1]!.offset : buf.length,
      reason: `expected exactly one MmEntry, found ${records.length}`,
      hint: records.length ? 'the image is corrupt' : 'the image is incomplete; copy it again from the source',
    });
  }
  const rec = records[0]!;
  const msg = decodeRecord(MmEntryType, rec, file);
  const raw = (msg.vmas as Decoded[] | undefined) ?? [];
  const vmas: Vma[] = [];
  const guards: Vma[] = [];
  raw.forEach((m, index) => {
    const fail = (reason: string): ImageError => new ImageError({
      file, entry: `vma ${index}`, offset: rec.offset, reason, hint: 'the image is corrupt or was not written by CRIU',
    });
    for (const f of REQUIRED) if (!has(m, f)) throw fail(`VmaEntry has no ${f}`);
    const v: Vma = {
      index,
      start: toBigInt(m.start),
      end: toBigInt(m.end),
      pgoff: toBigInt(m.pgoff),
      shmid: toBigInt(m.shmid),
      prot: m.prot as number,
      flags: m.flags as number,
      status: m.status as number,
      fd: has(m, 'fd') ? toBigInt(m.fd, true) : -1n,
    };
    if (has(m, 'madv')) v.madv = toBigInt(m.madv);
    if (has(m, 'fdflags')) v.fdflags = m.fdflags as number;
    if (v.end <= v.start) throw fail(`VMA ${hex(v.start)}-${hex(v.end)} is empty or reversed`);
    if (isGuardVma(v)) {
      guards.push(v);
      return;
    }
    const prev = vmas[vmas.length - 1];
    if (prev && v.start < prev.end) {
      throw fail(`VMA ${hex(v.start)}-${hex(v.end)} starts below the end of vma ${prev.index} (${hex(prev.start)}-${hex(prev.end)}); VMAs must be sorted`);
    }
    vmas.push(v);
  });
  return { vmas, guards };
}

export async function readMm(file: string): Promise<MmImage> {
  return parseMm(await readImageBytes(file), file);
}

/** The VMA containing `addr` (binary search over sorted real VMAs), or undefined. */
export function findVma(vmas: readonly Vma[], addr: bigint): Vma | undefined {
  let lo = 0;
  let hi = vmas.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (vmas[mid]!.end <= addr) lo = mid + 1;
    else hi = mid;
  }
  const v = vmas[lo];
  return v && v.start <= addr ? v : undefined;
}
