/** core-<pid>.img: only CoreEntry.tc (task_state, exit_code, comm). */
import { ImageError } from './errors.js';
import { IMAGE_KINDS, decodeRecord, readImageBytes, splitImage } from './image-file.js';
import { TASK_ALIVE, TASK_DEAD, TASK_STOPPED } from './magic.js';
import { CoreEntryType, has, type Decoded } from './schema.js';

/** 'alive' (1), 'zombie' (2, "dead" in images), 'stopped' (3), or the raw value if unknown. */
export type TaskState = 'alive' | 'zombie' | 'stopped' | number;

export function taskStateFromCode(code: number): TaskState {
  switch (code) {
    case TASK_ALIVE: return 'alive';
    case TASK_DEAD: return 'zombie';
    case TASK_STOPPED: return 'stopped';
    default: return code;
  }
}

export interface CoreInfo {
  /** CoreEntry.mtype (architecture), when present. */
  mtype?: number;
  /** Whether CoreEntry.tc is present (it is in the core of a thread-group leader, not in other threads' cores). */
  hasTaskCore: boolean;
  /** Raw task_state, when present. */
  taskStateCode?: number;
  state?: TaskState;
  exitCode?: number;
  comm?: string;
}

export function parseCore(buf: Buffer, file: string): CoreInfo {
  const records = splitImage(buf, IMAGE_KINDS.core, file);
  if (records.length !== 1) {
    throw new ImageError({
      file, entry: records.length ? 1 : 0, offset: records.length ? records[1]!.offset : buf.length,
      reason: `expected exactly one CoreEntry, found ${records.length}`,
      hint: records.length ? 'the image is corrupt' : 'the image is incomplete; copy it again from the source',
    });
  }
  const msg = decodeRecord(CoreEntryType, records[0]!, file);
  const info: CoreInfo = { hasTaskCore: has(msg, 'tc') };
  if (has(msg, 'mtype')) info.mtype = msg.mtype as number;
  if (info.hasTaskCore) {
    const tc = msg.tc as Decoded;
    if (has(tc, 'task_state')) {
      info.taskStateCode = tc.task_state as number;
      info.state = taskStateFromCode(info.taskStateCode);
    }
    if (has(tc, 'exit_code')) info.exitCode = tc.exit_code as number;
    if (has(tc, 'comm')) info.comm = tc.comm as string;
  }
  return info;
}

export async function readCore(file: string): Promise<CoreInfo> {
  return parseCore(await readImageBytes(file), file);
}
