/**
 * The lazy ranges of a task: every PE_LAZY pagemap entry, split at every VMA end (a pagemap entry may span
 * adjacent VMAs, and UFFDIO_COPY must stay inside one VMA). VMA_AREA_GUARD pseudo-VMAs are not used for
 * splitting.
 */
import { isGuardVma, findVma, type Vma } from './mm.js';
import { PE_LAZY, PE_PRESENT } from './magic.js';
import { entryEnd, type Pagemap } from './pagemap.js';

export interface LazyRange {
  start: bigint;
  nrPages: number;
  /** PE_PRESENT: the data is in the local pages file. */
  hasData: boolean;
  pagesPath?: string;
  /** Byte offset of `start` in pagesPath (only with hasData). */
  pagesOffset?: bigint;
  /** Index of the pagemap entry this range comes from. */
  entryIndex: number;
  /** The VMA containing the range, if any. */
  vma?: Vma;
}

/** Splits the PE_LAZY entries of `pm` at the ends of `vmas` (sorted; guard VMAs are ignored). */
export function splitLazyRanges(pm: Pagemap, vmas: readonly Vma[]): LazyRange[] {
  const real = vmas.filter((v) => !isGuardVma(v));
  const ends = real.map((v) => v.end);
  const ps = BigInt(pm.pageSize);
  const out: LazyRange[] = [];
  let k = 0; // first VMA end above the current position; entries are sorted so this only moves forward
  for (const e of pm.entries) {
    if (!(e.flags & PE_LAZY)) continue;
    const hasData = (e.flags & PE_PRESENT) !== 0;
    const end = entryEnd(e, pm.pageSize);
    let cur = e.vaddr;
    while (cur < end) {
      while (k < ends.length && ends[k]! <= cur) k++;
      const cut = k < ends.length && ends[k]! < end ? ends[k]! : end;
      const r: LazyRange = { start: cur, nrPages: Number((cut - cur) / ps), hasData, entryIndex: e.index };
      if (hasData) {
        r.pagesPath = pm.pagesPath;
        r.pagesOffset = e.pagesOffset! + (cur - e.vaddr);
      }
      const vma = findVma(real, cur);
      if (vma) r.vma = vma;
      out.push(r);
      cur = cut;
    }
  }
  return out;
}

/** Lazy ranges of a loaded task (empty when it has no pagemap, e.g. a zombie). */
export function lazyRanges(task: { pagemap?: Pagemap; vmas: readonly Vma[] }): LazyRange[] {
  return task.pagemap ? splitLazyRanges(task.pagemap, task.vmas) : [];
}
