// `lazyd migrate --pre-copy`: the pre-dump iterations before the final lazy dump (README "--pre-copy").
// Iteration k runs `criu pre-dump --track-mem` (from the second on with `--prev-images-dir ../<iteration k-1>`)
// into <images dir>.pre-<k>, a sibling of the final dump's directory; the tasks run on as soon as their memory is
// drained into pipes, and the iteration's images are streamed to the agent while they run. The stop rules are in
// pre-copy-rules.ts. The final `criu dump --lazy-pages --track-mem --prev-images-dir ../<last>` then marks every
// page not dirtied since the last iteration PE_PARENT: neither lazy nor fetched again, the restore reads it from
// the parent images on the destination (docs/protocol.md §2.7).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Channel } from './channel.js';
import { criuLogErrors } from './lazy-dump.js';
import { PRE_COPY_LIMITS, preCopyStop, type PreCopyLimits, type PreCopyStop } from './pre-copy-rules.js';
import { readPagemap } from '../images/pagemap.js';

export interface PreCopyIteration {
  n: number;
  /** Pages in the iteration's pages-*.img files (what the pre-dump wrote). */
  pagesWritten: number;
  /** The pre-dump's run (the tasks are frozen for part of it). */
  dumpMs: number;
  /** Streaming its images to the agent, until the agent said it had them all. */
  sendMs: number;
  bytes: number;
}

/** The directory name of iteration n, a sibling of the final dump's directory. */
export function preDumpDirName(imagesDir: string, n: number): string {
  return `${path.basename(imagesDir)}.pre-${n}`;
}

/** Pages in a directory's pages-*.img files. */
export function pagesWritten(dir: string, pageSize: number): number {
  let bytes = 0;
  for (const name of fs.readdirSync(dir)) {
    if (/^pages-\d+\.img$/.test(name)) bytes += fs.statSync(path.join(dir, name)).size;
  }
  return Math.floor(bytes / pageSize);
}

/** Pages of the task pagemaps in `dir` marked PE_PARENT: the ones the destination has from an iteration. */
export async function pagesInParent(dir: string, pageSize: number): Promise<number> {
  let pages = 0;
  for (const name of fs.readdirSync(dir)) {
    if (!/^pagemap-\d+\.img$/.test(name)) continue;
    const pm = await readPagemap(path.join(dir, name), { pageSize, checkPages: false });
    pages += pm.totals.parentPages;
  }
  return pages;
}

/** `criu pre-dump -t PID -D dir --track-mem [--prev-images-dir PARENT]`; rejects with one line from its log. */
export function runPreDump(criu: string, pid: number, dir: string, parent: string | undefined): Promise<void> {
  const args = ['pre-dump', '-t', String(pid), '-D', dir, '-v4', '-o', 'pre-dump.log', '--track-mem', ...(parent ? ['--prev-images-dir', parent] : [])];
  const child = spawn(criu, args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve, reject) => {
    child.on('error', (error) => reject(new Error(`cannot run ${criu}: ${error.message} — point --criu at CRIU`)));
    child.on('exit', (code, signal) => {
      if (code === 0) return resolve();
      const log = path.join(dir, 'pre-dump.log');
      reject(new Error(`criu pre-dump -t ${pid} failed (${signal ?? `exit ${code}`}): ${criuLogErrors(log)}${stderr.trim() ? ` (${stderr.trim().split('\n').pop()})` : ''}; log ${log}`));
    });
  });
}

/**
 * Streams iteration n's images to the agent (pre-dump, its files, pre-dump-end) and resolves with their bytes once
 * `stored` (the agent's pre-dump-stored, waited for from before the first byte) has come.
 */
export async function sendIteration(channel: Channel, n: number, dir: string, stored: () => Promise<unknown>): Promise<number> {
  const answer = stored();
  answer.catch(() => undefined); // seen below, or through the caller's abort
  channel.send({ t: 'pre-dump', n });
  const sent = await channel.sendImages(dir);
  channel.send({ t: 'pre-dump-end', n, files: sent.files, bytes: sent.bytes });
  await answer;
  return sent.bytes;
}

export interface PreCopyOptions {
  /** The final dump's directory; the iterations go into its siblings. */
  imagesDir: string;
  pageSize: number;
  limits?: PreCopyLimits;
  /** Runs one pre-dump into `dir` (`parent`: --prev-images-dir, relative to dir). */
  dump: (dir: string, parent: string | undefined) => Promise<void>;
  /** Streams iteration n's images to the agent; resolves once the agent has them all. */
  send: (n: number, dir: string) => Promise<number>;
  onIteration?: (iteration: PreCopyIteration) => void;
}

export interface PreCopyResult {
  iterations: PreCopyIteration[];
  stop: PreCopyStop;
  /** --prev-images-dir for the final dump (relative to imagesDir). */
  parent: string;
  /** The iterations' directories, first to last. */
  dirs: string[];
}

/** Runs the iterations until a stop rule holds. */
export async function preCopy(options: PreCopyOptions): Promise<PreCopyResult> {
  const limits = options.limits ?? PRE_COPY_LIMITS;
  const base = path.dirname(options.imagesDir);
  const iterations: PreCopyIteration[] = [];
  const dirs: string[] = [];
  for (let n = 1; ; n++) {
    const dir = path.join(base, preDumpDirName(options.imagesDir, n));
    fs.mkdirSync(dir, { mode: 0o700 });
    dirs.push(dir);
    const parent = n > 1 ? `../${preDumpDirName(options.imagesDir, n - 1)}` : undefined;
    const dumpStart = performance.now();
    await options.dump(dir, parent);
    const sendStart = performance.now();
    const bytes = await options.send(n, dir);
    const iteration: PreCopyIteration = {
      n,
      pagesWritten: pagesWritten(dir, options.pageSize),
      dumpMs: sendStart - dumpStart,
      sendMs: performance.now() - sendStart,
      bytes,
    };
    iterations.push(iteration);
    options.onIteration?.(iteration);
    const stop = preCopyStop(iterations.map((i) => i.pagesWritten), limits);
    if (stop) return { iterations, stop, parent: `../${preDumpDirName(options.imagesDir, n)}`, dirs };
  }
}
