// Reads a checkpoint's images and hands the native page server, per task, every pagemap entry with the file
// and offset of its bytes. Only PE_LAZY|PE_PRESENT entries are served; the others are passed too, so that a
// request for them is refused with the precise reason.
import type { Logger } from '../log.js';
import type { PageServer } from '../native.js';
import { loadCheckpoint } from '../images/index.js';
import { PE_LAZY, PE_PRESENT } from '../protocol/constants.js';

const NO_FILE = (1n << 64n) - 1n;

export interface PageIndexSummary {
  tasks: number;
  lazyPages: number;
  lazyPagesWithoutData: number;
}

/** What the index is handed to: the native page server before it listens. */
export type NativeIndexSink = Pick<PageServer, 'addFile' | 'addTask'>;

export async function buildPageIndex(imagesDir: string, sink: NativeIndexSink, logger: Logger): Promise<PageIndexSummary> {
  const checkpoint = await loadCheckpoint(imagesDir);
  const fileIndex = new Map<string, number>();
  const summary: PageIndexSummary = { tasks: 0, lazyPages: 0, lazyPagesWithoutData: 0 };

  for (const task of checkpoint.tasks) {
    const pagemap = task.pagemap;
    if (!pagemap) continue; // zombies have no memory
    const runs = new BigUint64Array(pagemap.entries.length * 5);
    pagemap.entries.forEach((entry, i) => {
      let file = NO_FILE;
      if (entry.flags & PE_PRESENT) {
        let index = fileIndex.get(pagemap.pagesPath);
        if (index === undefined) {
          index = sink.addFile(pagemap.pagesPath);
          fileIndex.set(pagemap.pagesPath, index);
        }
        file = BigInt(index);
      }
      if (entry.flags & PE_LAZY) {
        if (entry.flags & PE_PRESENT) summary.lazyPages += entry.nrPages;
        else summary.lazyPagesWithoutData += entry.nrPages;
      }
      runs.set([entry.vaddr, BigInt(entry.nrPages), BigInt(entry.flags), file, entry.pagesOffset ?? 0n], i * 5);
    });
    sink.addTask(task.pid, runs);
    summary.tasks++;
  }

  if (summary.lazyPagesWithoutData > 0) {
    logger.warn(
      `${imagesDir}: ${summary.lazyPagesWithoutData} lazy pages have no data in the images (written by ` +
        '`criu dump --lazy-pages`); requests for them are refused — serve the images of a plain `criu dump`',
    );
  }
  if (summary.lazyPages === 0) logger.warn(`${imagesDir}: the checkpoint has no lazy pages to serve`);
  logger.info(summary, `Loaded checkpoint ${imagesDir}`);
  return summary;
}
