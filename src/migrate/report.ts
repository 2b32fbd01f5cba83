// What a person sees of a migration: a live line on a terminal (phase, pages present / total, rate, ETA), JSON
// lines otherwise, and at the end the report (frozen, downtime, time to all pages, bytes, each stage's time).
import { stderrLine } from '../terminal-line.js';
import type { PreCopyIteration } from './pre-copy.js';
import type { PreCopyStop } from './pre-copy-rules.js';

export type MigratePhase = 'check' | 'pre-copy' | 'dump' | 'copy' | 'restore' | 'pages' | 'finish' | 'rollback';

/** Exit codes of `lazyd migrate`: which side owns the process. */
export const EXIT = {
  /** Migrated: the process runs on the destination, the original is gone. */
  migrated: 0,
  /** Nothing was frozen or changed (refused, a check failed, the dump failed): the original runs on the source. */
  untouched: 1,
  /** A failure after the freeze was rolled back: the original was resumed on the source. */
  rolledBack: 2,
  /** The process may be lost (a failure after the point of no return with nothing to roll back to). */
  lost: 3,
} as const;

export interface Stage {
  name: string;
  ms: number;
}

export interface MigrationReport {
  outcome: 'migrated' | 'untouched' | 'rolled-back' | 'lost';
  exitCode: number;
  /** The one line that says what happened and who owns the process. */
  message: string;
  pid: number;
  destination: string;
  restoredPid?: number;
  criu: { source?: string; destination?: string };
  /** Freeze (dump start) → the original tasks were killed or resumed (the dump exited): with the relay, until
   * the destination's restore succeeded and every page was held, so a failure before can still roll back. */
  frozenMs?: number;
  /** Freeze → every lazy page was held in the source's relay (its copy in memory). */
  heldMs?: number;
  /** Freeze → the destination's restore returned (the process runs again there), as the source learns it. */
  downtimeMs?: number;
  /** Freeze → the destination's lazy-pages daemon had every page. */
  allPagesMs?: number;
  lazyPages?: number;
  /** --pre-copy: pages of the final dump marked in-parent (on the destination from an iteration, never fetched). */
  pagesInParent?: number;
  pagesServed?: number;
  bytes: { images: number; pages: number; requests: number; control: number; total: number };
  stages: Stage[];
  /** --pre-copy: what became of it, in words (not available here, or the iterations and the rule that stopped them). */
  preCopy?: string;
  preCopyIterations?: PreCopyIteration[];
  preCopyStop?: PreCopyStop;
  /** How the destination fetched its pages: 'lazyd' over the lazyd link (docs/protocol.md §7: bound to the relayed
   * checkpoint, every page checksummed), 'criu' with CRIU's bytes only (an agent of an earlier lazyd). */
  pageLink?: 'lazyd' | 'criu';
}

function ms(value: number | undefined): string {
  return value === undefined ? '-' : `${value.toFixed(0)} ms`;
}

function mib(bytes: number): string {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}

export function formatReport(r: MigrationReport): string {
  const lines = [
    r.message,
    `  frozen ${ms(r.frozenMs)}, downtime ${ms(r.downtimeMs)}, all pages present ${ms(r.allPagesMs)}` +
      (r.heldMs !== undefined ? `, all pages held here ${ms(r.heldMs)}` : '') +
      (r.restoredPid ? `, restored as pid ${r.restoredPid} on ${r.destination}` : ''),
    `  bytes: ${mib(r.bytes.total)} in all (images ${mib(r.bytes.images)}, pages ${mib(r.bytes.pages)}, requests ${r.bytes.requests}, control ${r.bytes.control})` +
      (r.lazyPages !== undefined ? `; lazy pages ${r.pagesServed ?? 0} served of ${r.lazyPages}` : '') +
      (r.pagesInParent !== undefined ? `, ${r.pagesInParent} in-parent pages not fetched` : ''),
    `  stages: ${r.stages.map((s) => `${s.name} ${ms(s.ms)}`).join(', ')}`,
  ];
  if (r.criu.source || r.criu.destination) lines.push(`  CRIU ${r.criu.source ?? '?'} → ${r.criu.destination ?? '?'}`);
  if (r.pageLink === 'lazyd') lines.push('  pages over the lazyd link: bound to the relayed checkpoint, every page checksummed');
  if (r.pageLink === 'criu') lines.push("  pages over CRIU's protocol: the agent's lazyd takes no lazyd-link.json, so no per-page checksums");
  if (r.preCopy) lines.push(`  pre-copy: ${r.preCopy}`);
  for (const it of r.preCopyIterations ?? []) {
    lines.push(`    pre-dump ${it.n}: ${it.pagesWritten} pages written, ${mib(it.bytes)} streamed, dump ${ms(it.dumpMs)}, on the destination ${ms(it.sendMs)} later`);
  }
  return lines.join('\n');
}

export interface ProgressState {
  phase: MigratePhase;
  present?: number;
  total?: number;
  /** The pre-dump iteration running (phase pre-copy). */
  iteration?: number;
}

/** Progress: one redrawn line on a terminal, else one JSON object per change (at most every 250 ms for pages). */
export class MigrationProgress {
  private last: { present: number; atMs: number } | undefined;
  private lastJsonAt = 0;
  private lastPhase: MigratePhase | undefined;
  private lastIteration: number | undefined;
  constructor(private readonly pageSize: number, private readonly tty = stderrLine.enabled) {}

  update(state: ProgressState): void {
    const now = performance.now();
    const phaseChanged = state.phase !== this.lastPhase || state.iteration !== this.lastIteration;
    this.lastIteration = state.iteration;
    this.lastPhase = state.phase;
    let rate: number | undefined;
    let eta: number | undefined;
    if (state.present !== undefined && state.total !== undefined) {
      if (this.last && now > this.last.atMs) rate = ((state.present - this.last.present) * 1000) / (now - this.last.atMs);
      if (rate && rate > 0) eta = (state.total - state.present) / rate;
      if (!this.last || now - this.last.atMs >= 250) this.last = { present: state.present, atMs: now };
    }
    if (this.tty) {
      let text = `migrate: ${state.phase}`;
      if (state.iteration !== undefined) text += ` (iteration ${state.iteration})`;
      if (state.present !== undefined && state.total) {
        text += ` ${state.present}/${state.total} pages (${Math.floor((100 * state.present) / state.total)}%)`;
        if (rate !== undefined) text += `, ${((rate * this.pageSize) / 1048576).toFixed(1)} MiB/s`;
        if (eta !== undefined) text += `, ETA ${eta.toFixed(1)} s`;
      }
      stderrLine.show(text);
      return;
    }
    if (!phaseChanged && now - this.lastJsonAt < 250) return;
    this.lastJsonAt = now;
    const line: Record<string, unknown> = { progress: state.phase, t: Number(now.toFixed(1)) };
    if (state.iteration !== undefined) line.iteration = state.iteration;
    if (state.present !== undefined) Object.assign(line, { present: state.present, total: state.total });
    if (rate !== undefined) line.pagesPerSecond = Math.round(rate);
    if (eta !== undefined) line.etaSeconds = Number(eta.toFixed(2));
    process.stderr.write(JSON.stringify(line) + '\n');
  }

  /** One line of its own (a note, a warning): above the live line, or as JSON. */
  note(text: string): void {
    if (this.tty) stderrLine.around(() => process.stderr.write(`lazyd migrate: ${text}\n`));
    else process.stderr.write(JSON.stringify({ note: text }) + '\n');
  }

  stop(): void {
    if (this.tty) stderrLine.clear();
  }
}
