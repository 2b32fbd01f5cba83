// The live progress line of a restore on a terminal: pages present / total, rate, ETA. Sampled from the engine's
// counters a few times a second; never drawn when stderr is not a terminal (see TerminalLine).
import type { TerminalLine } from '../terminal-line.js';

export interface ProgressSample {
  /** Lazy pages in place (installed, or found present). */
  present: number;
  total: number;
  /** When the sample was taken (ms, any monotonic clock). */
  atMs: number;
}

function formatSeconds(seconds: number): string {
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 120) return `${Math.round(seconds)} s`;
  return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
}

/** "restore: 1200/16461 pages (7%), 150.0 MiB/s, ETA 0.4 s" from two samples (rate over the interval). */
export function progressText(previous: ProgressSample | undefined, now: ProgressSample, pageSize: number): string {
  const percent = now.total ? Math.floor((100 * now.present) / now.total) : 100;
  let rate = '';
  let eta = '';
  if (previous && now.atMs > previous.atMs) {
    const pagesPerSecond = ((now.present - previous.present) * 1000) / (now.atMs - previous.atMs);
    rate = `, ${((pagesPerSecond * pageSize) / (1024 * 1024)).toFixed(1)} MiB/s`;
    const left = now.total - now.present;
    eta = left === 0 ? ', ETA 0 s' : pagesPerSecond > 0 ? `, ETA ${formatSeconds(left / pagesPerSecond)}` : ', ETA -';
  }
  return `restore: ${now.present}/${now.total} pages (${percent}%)${rate}${eta}`;
}

/** Draws the line as soon as the restore runs, then redraws it at most every intervalMs, until stop(). */
export class RestoreProgress {
  private timer: NodeJS.Timeout | undefined;
  private previous: ProgressSample | undefined;
  private static readonly POLL_MS = 50;

  constructor(
    private readonly line: TerminalLine,
    private readonly sample: () => ProgressSample | undefined,
    private readonly pageSize: number,
    private readonly intervalMs = 250,
  ) {}

  start(): void {
    if (!this.line.enabled || this.timer) return;
    this.timer = setInterval(() => this.tick(), RestoreProgress.POLL_MS);
    this.timer.unref();
  }

  private tick(force = false): void {
    const now = this.sample();
    if (!now || now.total === 0) return;
    if (!force && this.previous && now.atMs - this.previous.atMs < Math.max(this.intervalMs, 200)) return;
    this.line.show(progressText(this.previous, now, this.pageSize));
    this.previous = now;
  }

  /** Draws at once (the restore reached a milestone), if drawing at all. */
  drawNow(): void {
    if (this.timer) this.tick(true);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.line.clear();
  }
}
