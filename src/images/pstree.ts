/** pstree.img: one PstreeEntry per process (zombies included). */
import { ImageError } from './errors.js';
import { IMAGE_KINDS, decodeRecord, readImageBytes, splitImage } from './image-file.js';
import { PstreeEntryType, has } from './schema.js';

export interface PstreeEntry {
  pid: number;
  ppid: number;
  pgid: number;
  sid: number;
  /** Thread ids (virtual); the first is normally the pid itself. */
  threads: number[];
}

export function parsePstree(buf: Buffer, file: string): PstreeEntry[] {
  const out: PstreeEntry[] = [];
  const pids = new Map<number, number>();
  for (const rec of splitImage(buf, IMAGE_KINDS.pstree, file)) {
    const msg = decodeRecord(PstreeEntryType, rec, file);
    for (const f of ['pid', 'ppid', 'pgid', 'sid']) {
      if (!has(msg, f)) {
        throw new ImageError({
          file, entry: rec.index, offset: rec.offset,
          reason: `PstreeEntry has no ${f}`, hint: 'the image is corrupt or was not written by CRIU',
        });
      }
    }
    const pid = msg.pid as number;
    const dup = pids.get(pid);
    if (dup !== undefined) {
      throw new ImageError({
        file, entry: rec.index, offset: rec.offset,
        reason: `pid ${pid} appears twice (also entry ${dup})`, hint: 'the image is corrupt',
      });
    }
    pids.set(pid, rec.index);
    out.push({
      pid,
      ppid: msg.ppid as number,
      pgid: msg.pgid as number,
      sid: msg.sid as number,
      threads: [...((msg.threads as number[] | undefined) ?? [])],
    });
  }
  return out;
}

export async function readPstree(file: string): Promise<PstreeEntry[]> {
  return parsePstree(await readImageBytes(file), file);
}
