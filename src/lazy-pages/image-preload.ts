// Reading the images before the restore needs them. `criu restore --lazy-pages` hands a task's userfaultfd over
// and lets the task run on at once: its restorer's next steps (rseq registration, the threads' clone) already
// touch lazy pages, and wait for this daemon. Images read only then put their read (10-30 ms) inside the
// downtime. So they are read as soon as they are there: at start, and again whenever an image file in the dir
// changes (a daemon started before the dump or the copy). What was read is used at hand-over only if no image
// file changed since (imagesSignature); else the images are read again then. A read that fails here is forgotten:
// the hand-over's own read reports the error.
import fs from 'node:fs';
import path from 'node:path';
import { LINK_FILE_NAME } from '../link/capability-file.js';

/** The files a checkpoint is read from: every image, the lazyd link file, the parent link. */
function isImageFile(name: string): boolean {
  return name.endsWith('.img') || name === LINK_FILE_NAME || name === 'parent';
}

/** A pre-dump chain is at most this deep (CRIU itself has no limit; a loop of links ends here). */
const MAX_CHAIN_DIRS = 64;

/**
 * Names, inodes, sizes and change times of the image files of dir and of every dir its `parent` links lead to:
 * equal signatures, same bytes (a file rewritten in place changes its ctime; one replaced, its inode).
 */
export function imagesSignature(dir: string): string {
  const parts: string[] = [];
  let current = path.resolve(dir);
  for (let depth = 0; depth < MAX_CHAIN_DIRS; depth++) {
    let names: string[];
    try {
      names = fs.readdirSync(current).filter(isImageFile).sort();
    } catch (error) {
      parts.push(`${current}: ${(error as NodeJS.ErrnoException).code}`);
      break;
    }
    for (const name of names) {
      try {
        const st = fs.lstatSync(path.join(current, name), { bigint: true });
        parts.push(`${current}/${name} ${st.ino} ${st.size} ${st.mtimeNs} ${st.ctimeNs}`);
      } catch {
        // gone between the listing and the stat: not part of the images
      }
    }
    let target: string;
    try {
      target = fs.readlinkSync(path.join(current, 'parent'));
    } catch {
      break;
    }
    parts.push(`${current}/parent -> ${target}`);
    current = path.resolve(current, target);
  }
  return parts.join('\n');
}

/** How long the images dir must be quiet after a change before it is read again. */
const SETTLE_MS = 5;

export class ImagePreloader<T> {
  private read?: Promise<{ value: T; signature: string } | undefined>;
  private timer?: NodeJS.Timeout;
  private watcher?: fs.FSWatcher;
  private stopped = false;

  /** load: what the hand-over needs from the images (it may throw: the read is then dropped); onRead: each kept read. */
  constructor(
    private readonly dir: string,
    private readonly load: () => Promise<T>,
    private readonly onRead: (value: T) => void = () => undefined,
  ) {}

  start(): void {
    if (this.stopped) return;  // the restore connected first
    this.schedule(0);
    try {
      this.watcher = fs.watch(this.dir, { persistent: false }, (_event, name) => {
        if (name === null || isImageFile(name.toString())) this.schedule(SETTLE_MS);
      });
      this.watcher.on('error', () => this.watcher?.close());
    } catch {
      // no inotify (or no dir yet): the read at start, if any, is all there is
    }
  }

  /** At hand-over: what was read, if the image files are still those it was read from; else undefined. */
  async take(): Promise<T | undefined> {
    this.stop();
    const read = await this.read;
    if (!read) return undefined;
    return imagesSignature(this.dir) === read.signature ? read.value : undefined;
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.watcher?.close();
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.run(), ms);
    this.timer.unref();
  }

  private run(): void {
    if (this.stopped) return;
    if (!fs.existsSync(path.join(this.dir, 'inventory.img'))) return;  // not an images dir (yet)
    const before = imagesSignature(this.dir);
    // Files that changed while they were read may have been read half-written: such a read is not kept.
    this.read = this.load().then(
      (value) => {
        if (imagesSignature(this.dir) !== before) return undefined;
        this.onRead(value);
        return { value, signature: before };
      },
      () => undefined,
    );
  }
}
