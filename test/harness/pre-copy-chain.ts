// What `lazyd migrate --pre-copy` leaves on a kernel that tracks dirty memory, made from a real plain dump on one
// that does not (this one: `criu pre-dump` aborts with soft-dirty off, README "--pre-copy"). A plain dump's images
// are what a first pre-dump writes (pagemap entries PE_PRESENT|PE_LAZY with their data, PE_PRESENT for the eager
// ones). dumpOnParent() writes, beside such images, the ones the next `criu pre-dump` ('pre-dump') or the final
// `criu dump --lazy-pages` ('final', both with --track-mem --prev-images-dir) would write had the tree dirtied
// the second half of every lazy-capable entry since: the first half PE_PARENT (no data: read from the parent),
// the second written again (pre-dump: PE_PRESENT|PE_LAZY with its data) or left to post-copy (final: PE_LAZY, no
// data); entries already PE_PARENT stay so, eager entries keep their data. Every other image is copied as it is.
import fs from 'node:fs';
import path from 'node:path';
import { encodePagemap, readPagemap, type PagemapEntryInput } from '../../src/images/pagemap.js';
import { PE_LAZY, PE_PARENT, PE_PRESENT } from '../../src/images/magic.js';

export interface DumpOnParent {
  /** Pages marked PE_PARENT: already on the destination, never fetched. */
  parentPages: number;
  /** Pages marked PE_LAZY without data ('final'): the ones the destination's lazy-pages fetches. */
  lazyPages: number;
  /** Pages written with their data. */
  writtenPages: number;
}

const PAGE = 4096;

export async function dumpOnParent(
  parentDir: string,
  dir: string,
  kind: 'pre-dump' | 'final',
  encoding: '4.1' | '4.2',
): Promise<DumpOnParent> {
  fs.mkdirSync(dir, { recursive: true });
  const totals: DumpOnParent = { parentPages: 0, lazyPages: 0, writtenPages: 0 };
  for (const name of fs.readdirSync(parentDir)) {
    if (name.startsWith('pagemap-shmem-')) throw new Error(`${parentDir}/${name}: shared memory is not part of this fixture's set-up`);
    if (/^pages-\d+\.img$/.test(name) || !name.endsWith('.img')) continue;
    if (!/^pagemap-\d+\.img$/.test(name)) {
      fs.copyFileSync(path.join(parentDir, name), path.join(dir, name));
      continue;
    }
    const pm = await readPagemap(path.join(parentDir, name));
    const fd = fs.openSync(pm.pagesPath, 'r');
    const entries: PagemapEntryInput[] = [];
    const data: Buffer[] = [];
    try {
      const written = (vaddr: bigint, nrPages: number, flags: number, offset: bigint) => {
        const bytes = Buffer.alloc(nrPages * PAGE);
        fs.readSync(fd, bytes, 0, bytes.length, Number(offset));
        data.push(bytes);
        entries.push({ vaddr, nrPages, flags });
        totals.writtenPages += nrPages;
      };
      for (const e of pm.entries) {
        if (!(e.flags & PE_PRESENT)) {
          if (e.flags !== PE_PARENT) throw new Error(`${pm.file} entry ${e.index}: flags ${e.flags}, neither data nor in-parent`);
          entries.push({ vaddr: e.vaddr, nrPages: e.nrPages, flags: PE_PARENT });
          totals.parentPages += e.nrPages;
          continue;
        }
        if (!(e.flags & PE_LAZY)) {
          written(e.vaddr, e.nrPages, PE_PRESENT, e.pagesOffset!);
          continue;
        }
        const inParent = Math.ceil(e.nrPages / 2);
        entries.push({ vaddr: e.vaddr, nrPages: inParent, flags: PE_PARENT });
        totals.parentPages += inParent;
        const rest = e.nrPages - inParent;
        if (rest === 0) continue;
        const at = e.vaddr + BigInt(inParent * PAGE);
        if (kind === 'pre-dump') {
          written(at, rest, PE_PRESENT | PE_LAZY, e.pagesOffset! + BigInt(inParent * PAGE));
        } else {
          entries.push({ vaddr: at, nrPages: rest, flags: PE_LAZY });
          totals.lazyPages += rest;
        }
      }
    } finally {
      fs.closeSync(fd);
    }
    fs.writeFileSync(path.join(dir, name), encodePagemap({ pagesId: pm.pagesId }, entries, { encoding }));
    fs.writeFileSync(path.join(dir, path.basename(pm.pagesPath)), Buffer.concat(data));
  }
  return totals;
}
