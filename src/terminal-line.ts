// One live status line at the bottom of a terminal (stderr), redrawn in place with "\r" + erase-line. Only ever
// drawn when stderr is a terminal; log lines written to stderr take it down and draw it again under themselves.
import fs from 'node:fs';

const ERASE = '\r\x1b[2K';

export class TerminalLine {
  private text = '';
  constructor(
    private readonly fd: number,
    readonly enabled: boolean,
  ) {}

  /** Shows (or replaces) the line. Nothing happens when not on a terminal. */
  show(text: string): void {
    if (!this.enabled) return;
    const columns = process.stderr.columns || 80;
    this.text = text.length >= columns ? text.slice(0, columns - 1) : text;
    this.write(ERASE + this.text);
  }

  /** Takes the line down for good. */
  clear(): void {
    if (!this.enabled || !this.text) return;
    this.text = '';
    this.write(ERASE);
  }

  /** Runs `print` (which writes whole lines to the same terminal) with the line taken down, then redraws it. */
  around(print: () => void): void {
    if (!this.enabled || !this.text) {
      print();
      return;
    }
    this.write(ERASE);
    print();
    this.write(this.text);
  }

  private write(data: string): void {
    try {
      fs.writeSync(this.fd, data);
    } catch {
      // A terminal that went away: nothing to show any more.
    }
  }
}

export const stderrLine = new TerminalLine(2, process.stderr.isTTY === true);
