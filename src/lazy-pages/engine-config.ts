// Turns a checkpoint's images into the native fault engine's configuration: per task, its lazy ranges (pagemap
// PE_LAZY entries split at VMA ends, docs/protocol.md §4.3), and for a local restore the pages file and offset of each.
import fs from 'node:fs';
import type { Checkpoint } from '../images/index.js';
import { lazyRanges } from '../images/index.js';

const NO_FD = (1n << 64n) - 1n;

export interface EngineTask {
  pid: number;
  runs: BigUint64Array;
}

export interface EngineTasks {
  nrTasks: number;
  tasks: EngineTask[];
  lazyPages: number;
  /** Pages files opened for a local restore; close them after the engine is gone. */
  openFds: number[];
}

/** `local`: the lazy pages' bytes must be in the local images (a plain dump). */
export function engineTasks(checkpoint: Checkpoint, local: boolean): EngineTasks {
  const openFds: number[] = [];
  const fdByPath = new Map<string, number>();
  const tasks: EngineTask[] = [];
  let lazyPages = 0;
  try {
    for (const task of checkpoint.tasks) {
      if (!task.pagemap) continue;
      const ranges = lazyRanges(task);
      if (ranges.length === 0) continue;
      const runs = new BigUint64Array(ranges.length * 4);
      ranges.forEach((range, i) => {
        let fd = NO_FD;
        if (local) {
          if (!range.hasData || !range.pagesPath) {
            throw new Error(
              `${checkpoint.dir}: task ${task.pid} has lazy pages without data in the local images (dumped with ` +
                '`criu dump --lazy-pages`): pass --page-server --address SRC --port P to fetch them from the source',
            );
          }
          let opened = fdByPath.get(range.pagesPath);
          if (opened === undefined) {
            opened = fs.openSync(range.pagesPath, 'r');
            openFds.push(opened);
            fdByPath.set(range.pagesPath, opened);
          }
          fd = BigInt(opened);
        }
        runs.set([range.start, BigInt(range.nrPages), fd, local ? range.pagesOffset ?? 0n : 0n], i * 4);
        lazyPages += range.nrPages;
      });
      tasks.push({ pid: task.pid, runs });
    }
  } catch (error) {
    for (const fd of openFds) fs.closeSync(fd);
    throw error;
  }
  return { nrTasks: checkpoint.tasks.length, tasks, lazyPages, openFds };
}

/** The page-server header layout implied by the images: CRIU >= 4.2 writes field 5 of PagemapEntry (§0). */
export function formatFromImages(checkpoint: Checkpoint): 24 | 32 | undefined {
  const encodings = new Set(checkpoint.tasks.map((t) => t.pagemap?.encoding).filter((e) => e === '4.1' || e === '4.2'));
  if (encodings.size !== 1) return undefined;
  return encodings.has('4.2') ? 32 : 24;
}
