/**
 * The one error type of the image readers and writers.
 *
 * Every problem found in an image names the file, the entry (a record index or a name such as "magic",
 * "head" or "vma 5") and the byte offset in that file, so that a message in a log is enough to find the bad
 * bytes with a hex dump. The message is a single line:
 *
 *   pagemap-1.img: entry 3 at byte 58: truncated record (needs 14 bytes, 6 left) — the image is incomplete; copy it again from the source
 */

export type ImageEntryRef = number | string;

export interface ImageErrorInit {
  /** Path of the image file (as the caller gave it). */
  file: string;
  /** Record/entry index (0-based) or a name such as "magic", "head", "vma 5". */
  entry?: ImageEntryRef;
  /** Byte offset in `file` where the problem is. */
  offset?: number;
  /** What is wrong. */
  reason: string;
  /** How to fix it, when that is obvious. */
  hint?: string;
  /** The underlying error (protobuf decode error, fs error, ...). */
  cause?: unknown;
}

function describeEntry(entry: ImageEntryRef): string {
  return typeof entry === 'number' ? `entry ${entry}` : entry;
}

/** Builds the one-line message: "<file>: <entry> at byte <offset>: <reason> — <hint>". */
export function formatImageError(init: ImageErrorInit): string {
  let where = init.file;
  if (init.entry !== undefined && init.offset !== undefined) {
    where += `: ${describeEntry(init.entry)} at byte ${init.offset}`;
  } else if (init.entry !== undefined) {
    where += `: ${describeEntry(init.entry)}`;
  } else if (init.offset !== undefined) {
    where += `: at byte ${init.offset}`;
  }
  const reason = init.reason.replace(/\s*\n\s*/g, ' ');
  return `${where}: ${reason}${init.hint ? ` — ${init.hint}` : ''}`;
}

export class ImageError extends Error {
  readonly file: string;
  readonly entry: ImageEntryRef | undefined;
  readonly offset: number | undefined;
  readonly reason: string;
  readonly hint: string | undefined;

  constructor(init: ImageErrorInit) {
    super(formatImageError(init), init.cause === undefined ? undefined : { cause: init.cause });
    this.name = 'ImageError';
    this.file = init.file;
    this.entry = init.entry;
    this.offset = init.offset;
    this.reason = init.reason;
    this.hint = init.hint;
  }
}

/** Short description of an unknown thrown value, for use inside a `reason`. */
export function describeCause(err: unknown): string {
  if (err instanceof Error) return err.message.replace(/\s*\n\s*/g, ' ');
  return String(err);
}
