// What the relay's copy of the lazy pages needs on the source (src/migrate/relay-source.ts), checked before the
// freeze: the tree's resident memory (an upper bound of its lazy pages) against MemAvailable.
import fs from 'node:fs';

/** The pid and its descendants (/proc/PID/task/TID/children). */
export function treePids(root: number): number[] {
  const out: number[] = [];
  const queue = [root];
  while (queue.length) {
    const pid = queue.shift()!;
    out.push(pid);
    let tids: string[] = [];
    try {
      tids = fs.readdirSync(`/proc/${pid}/task`);
    } catch {
      continue; // gone meanwhile
    }
    for (const tid of tids) {
      try {
        const children = fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim();
        if (children) queue.push(...children.split(/\s+/).map(Number));
      } catch {
        // the thread ended
      }
    }
  }
  return out;
}

function kib(text: string, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
  return m ? Number(m[1]) * 1024 : 0;
}

/** Resident bytes of the tree (smaps_rollup's Rss, summed). */
export function treeResidentBytes(root: number): number {
  let total = 0;
  for (const pid of treePids(root)) {
    try {
      total += kib(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'), 'Rss');
    } catch {
      // gone meanwhile
    }
  }
  return total;
}

export function memAvailableBytes(): number {
  return kib(fs.readFileSync('/proc/meminfo', 'utf8'), 'MemAvailable');
}
