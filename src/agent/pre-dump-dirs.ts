// The pre-dump iterations of one migration on the agent (`lazyd migrate --pre-copy`): iteration n's images go
// into <state dir>/<id>.pre-<n>, a sibling of the migration's directory <state dir>/<id>. The `parent` links are
// made here, never taken from the source: <id>.pre-<n>/parent → ../<id>.pre-<n-1>, and the final directory's
// <id>/parent → ../<id>.pre-<last>. Relative, as CRIU resolves `parent` against the directory holding it; the
// restore and the lazy-pages engine read the in-parent pages through them (docs/protocol.md §2.7).
import fs from 'node:fs';
import path from 'node:path';
import { PARENT_LINK } from '../images/magic.js';

export class PreDumpDirs {
  readonly dirs: string[] = [];
  private current: { n: number; dir: string; files: number } | undefined;

  constructor(
    private readonly stateDir: string,
    private readonly id: string,
  ) {}

  private name(n: number): string {
    return `${this.id}.pre-${n}`;
  }

  /** Opens iteration n (the next one in order); throws one line otherwise. */
  begin(n: number): void {
    if (this.current) throw new Error(`pre-dump ${n} began while pre-dump ${this.current.n} was still open`);
    if (n !== this.dirs.length + 1) throw new Error(`pre-dump ${n} out of order: ${this.dirs.length} stored so far`);
    const dir = path.join(this.stateDir, this.name(n));
    fs.mkdirSync(dir, { mode: 0o700 });
    if (n > 1) fs.symlinkSync(`../${this.name(n - 1)}`, path.join(dir, PARENT_LINK));
    this.dirs.push(dir);
    this.current = { n, dir, files: 0 };
  }

  /** Where a file of the open iteration goes; undefined when none is open (the file is one of the final images). */
  target(name: string): string | undefined {
    if (!this.current) return undefined;
    this.current.files++;
    return path.join(this.current.dir, name);
  }

  /** Closes iteration n; the counts must match what arrived. Returns the bytes stored. */
  end(n: number, files: number): number {
    const open = this.current;
    if (!open || open.n !== n) throw new Error(`pre-dump-end ${n} without its pre-dump`);
    if (files !== open.files) throw new Error(`pre-dump ${n}: ${open.files} image files arrived, the source sent ${files}`);
    this.current = undefined;
    let bytes = 0;
    for (const name of fs.readdirSync(open.dir)) {
      if (name !== PARENT_LINK) bytes += fs.statSync(path.join(open.dir, name)).size;
    }
    return bytes;
  }

  /** Links the final images in `dir` to the last iteration; `preDumps` (from the source) must be what was stored. */
  linkFinal(dir: string, preDumps: number): void {
    if (this.current) throw new Error(`the restore was asked for while pre-dump ${this.current.n} was still open`);
    if (preDumps !== this.dirs.length) throw new Error(`the final dump was made on ${preDumps} pre-dumps, ${this.dirs.length} arrived here`);
    if (preDumps > 0) fs.symlinkSync(`../${this.name(preDumps)}`, path.join(dir, PARENT_LINK));
  }

  remove(): void {
    for (const dir of this.dirs) fs.rmSync(dir, { recursive: true, force: true });
  }
}
