// Logging with pino. The log file (-o) and stderr speak CRIU's vocabulary, because tools that drive criu grep
// its logs for "Error" and "Warn": those two words appear only on real errors and warnings. Levels follow
// criu's -v0..-v4 (0 messages only, 1 errors, 2 warnings — the default, 3 info, 4 debug).
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';

export type Logger = pino.Logger;

export const DEFAULT_VERBOSITY = 2;

const LEVEL_BY_VERBOSITY = ['fatal', 'error', 'warn', 'info', 'debug'] as const;

export function levelForVerbosity(verbosity: number): pino.LevelWithSilent {
  const clamped = Math.max(0, Math.min(LEVEL_BY_VERBOSITY.length - 1, Math.trunc(verbosity)));
  return LEVEL_BY_VERBOSITY[clamped];
}

const PREFIX_BY_LEVEL: Record<number, string> = { 60: 'Error: ', 50: 'Error: ', 40: 'Warn: ' };

/** One text line per record: `(SS.uuuuuu) Error: message key=value ...`, seconds since the logger started. */
export function criuLine(record: Record<string, unknown>, startedAt: number): string {
  const { level, time, msg, pid: _pid, hostname: _hostname, ...rest } = record;
  const elapsed = Math.max(0, (Number(time) - startedAt) / 1000);
  const seconds = Math.floor(elapsed);
  const micros = Math.round((elapsed - seconds) * 1e6);
  const stamp = `(${String(seconds).padStart(2, '0')}.${String(Math.min(micros, 999999)).padStart(6, '0')})`;
  const extras = Object.entries(rest)
    .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`)
    .join(' ');
  return `${stamp} ${PREFIX_BY_LEVEL[Number(level)] ?? ''}${String(msg ?? '')}${extras ? ' ' + extras : ''}\n`;
}

class CriuTextDestination {
  private fd: number;
  // Seconds since the process started, as criu stamps its log lines.
  private readonly startedAt = performance.timeOrigin;
  constructor(private readonly file: string | undefined) {
    this.fd = file ? fs.openSync(file, 'a') : 2;
  }
  write(chunk: string): void {
    for (const line of chunk.split('\n')) {
      if (!line) continue;
      let text: string;
      try {
        text = criuLine(JSON.parse(line), this.startedAt);
      } catch {
        text = line + '\n';
      }
      fs.writeSync(this.fd, text);
    }
  }
  /** SIGHUP: reopen the file, so log rotation works. */
  reopen(): void {
    if (!this.file) return;
    const fresh = fs.openSync(this.file, 'a');
    fs.closeSync(this.fd);
    this.fd = fresh;
  }
}

export interface LogOptions {
  verbosity?: number;
  /** criu's -o: relative paths are resolved in the work dir, as criu does after its chdir. */
  logFile?: string;
  workDir?: string;
}

export interface LogHandle {
  logger: Logger;
  logFile?: string;
  reopen(): void;
}

export function createLogger(options: LogOptions = {}): LogHandle {
  const logFile = resolveLogFile(options.logFile, options.workDir);
  const destination = new CriuTextDestination(logFile);
  const logger = pino(
    {
      level: levelForVerbosity(options.verbosity ?? DEFAULT_VERBOSITY),
      base: undefined,
      // Milliseconds with a microsecond fraction, for criu's (SS.uuuuuu) stamps.
      timestamp: () => `,"time":${(performance.timeOrigin + performance.now()).toFixed(3)}`,
    },
    destination as unknown as pino.DestinationStream,
  );
  return { logger, logFile, reopen: () => destination.reopen() };
}

/** `-o -` and no -o mean stderr; a relative name lives in the work dir (criu: -W, else -D, else cwd). */
export function resolveLogFile(logFile: string | undefined, workDir: string | undefined): string | undefined {
  if (!logFile || logFile === '-') return undefined;
  return path.resolve(workDir ?? '.', logFile);
}
