// What `lazyd migrate --pre-copy` leaves on a kernel that tracks dirty memory, made from a real plain dump on one
// that does not (this one: `criu pre-dump` aborts with soft-dirty off, README "--pre-copy"). A plain dump's images
// are what a pre-dump writes (pagemap entries PE_PRESENT|PE_LAZY with their data, PE_PRESENT for the eager ones);
// finalDumpOnParent() writes, beside them, the images the final `criu dump --lazy-pages --track-mem
// --prev-images-dir` would write had the tree dirtied the second half of every lazy-capable entry since: the
// first half PE_PARENT (no data: the restore reads it from the parent), the second PE_LAZY (no data: fetched),
// the eager entries PE_PRESENT with their data copied. Every other image is copied as it is.
import fs from 'node:fs';
import path from 'node:path';
import { encodePagemap, readPagemap, type PagemapEntryInput } from '../../src/images/pagemap.js';
import { PE_LAZY, PE_PARENT, PE_PRESENT } from '../../src/images/magic.js';

export interface FinalOnParent {
  /** Pages marked PE_PARENT: already on the destination, never fetched. */
  parentPages: number;
  /** Pages marked PE_LAZY without data: the ones the destination's lazy-pages fetches. */
  lazyPages: number;
  eagerPages: number;
}

const PAGE = 4096;

export async function finalDumpOnParent(plainDir: string, finalDir: string, encoding: '4.1' | '4.2'): Promise<FinalOnParent> {
  fs.mkdirSync(finalDir, { recursive: true });
  const totals: FinalOnParent = { parentPages: 0, lazyPages: 0, eagerPages: 0 };
  for (const name of fs.readdirSync(plainDir)) {
    if (name.startsWith('pagemap-shmem-')) throw new Error(`${plainDir}/${name}: shared memory is not part of this fixture's set-up`);
    if (/^pages-\d+\.img$/.test(name) || !name.endsWith('.img')) continue;
    if (!/^pagemap-\d+\.img$/.test(name)) {
      fs.copyFileSync(path.join(plainDir, name), path.join(finalDir, name));
      continue;
    }
    const pm = await readPagemap(path.join(plainDir, name));
    const fd = fs.openSync(pm.pagesPath, 'r');
    const entries: PagemapEntryInput[] = [];
    const data: Buffer[] = [];
    try {
      for (const e of pm.entries) {
        if (!(e.flags & PE_PRESENT)) throw new Error(`${pm.file} entry ${e.index}: not a plain dump (flags ${e.flags})`);
        if (!(e.flags & PE_LAZY)) {
          const bytes = Buffer.alloc(e.nrPages * PAGE);
          fs.readSync(fd, bytes, 0, bytes.length, Number(e.pagesOffset!));
          data.push(bytes);
          entries.push({ vaddr: e.vaddr, nrPages: e.nrPages, flags: PE_PRESENT });
          totals.eagerPages += e.nrPages;
          continue;
        }
        const inParent = Math.ceil(e.nrPages / 2);
        entries.push({ vaddr: e.vaddr, nrPages: inParent, flags: PE_PARENT });
        totals.parentPages += inParent;
        if (e.nrPages > inParent) {
          entries.push({ vaddr: e.vaddr + BigInt(inParent * PAGE), nrPages: e.nrPages - inParent, flags: PE_LAZY });
          totals.lazyPages += e.nrPages - inParent;
        }
      }
    } finally {
      fs.closeSync(fd);
    }
    fs.writeFileSync(path.join(finalDir, name), encodePagemap({ pagesId: pm.pagesId }, entries, { encoding }));
    fs.writeFileSync(path.join(finalDir, path.basename(pm.pagesPath)), Buffer.concat(data));
  }
  return totals;
}
