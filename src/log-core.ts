// Logging (pino), in one of two formats:
//   json  one JSON object per line: {"level":"info","time":<ms since the epoch>,"msg":"...",...fields}
//   text  criu's log line: "(SS.uuuuuu) Error: message key=value ...", seconds since the process started. Tools that
//         drive criu grep its logs for "Error" and "Warn": those two words appear only on real errors and warnings.
// Which one (--log-format auto|json|text): the drop-in commands (`lazyd page-server`, `lazyd lazy-pages`) write text,
// as criu does, wherever the log goes; the daemon (`lazyd --page-server`) writes text on a terminal and JSON
// otherwise (a file, a pipe, journald). Levels follow criu's -v0..-v4: 0 fatal only, 1 errors, 2 warnings (criu's
// default), 3 info (one line per session start and end), 4 debug.
//
// pino costs ~15-50 ms to load, so this module does not import it: src/log.ts gives the daemon a logger with pino
// loaded; `lazyd lazy-pages`, which must be ready quickly (a restore waits for it), takes createDeferredLogger():
// until load() (called once the restored tasks run: after RSTF) has imported pino, each line is written at once, in the shape
// pino gives it (pinoShapedLine), through the same destination. So every line logged before the status byte is
// in the log when the byte is written (a tool may read "Metrics on <url>" then), in order, nothing kept back.
import fs from 'node:fs';
import path from 'node:path';
import type pino from 'pino';
import { stderrLine } from './terminal-line.js';
import { DEFAULT_VERBOSITY, LOG_FORMATS } from './config/flags.js';

type LogFn = { (message: string): void; (fields: object, message: string): void };

/** What lazyd logs through (pino's logger has these; so has the deferred one). */
export interface Logger {
  fatal: LogFn;
  error: LogFn;
  warn: LogFn;
  info: LogFn;
  debug: LogFn;
}

type LevelName = keyof Logger;
const LEVELS: readonly LevelName[] = ['fatal', 'error', 'warn', 'info', 'debug'];


export { DEFAULT_VERBOSITY, LOG_FORMATS };

const LEVEL_BY_VERBOSITY = ['fatal', 'error', 'warn', 'info', 'debug'] as const;

export function levelForVerbosity(verbosity: number): pino.LevelWithSilent {
  const clamped = Math.max(0, Math.min(LEVEL_BY_VERBOSITY.length - 1, Math.trunc(verbosity)));
  return LEVEL_BY_VERBOSITY[clamped];
}

export type LogFormatOption = (typeof LOG_FORMATS)[number];
export type LogFormat = Exclude<LogFormatOption, 'auto'>;

const PREFIX_BY_LEVEL: Record<string, string> = { fatal: 'Error: ', error: 'Error: ', warn: 'Warn: ' };

/** One text line per record: `(SS.uuuuuu) Error: message key=value ...`, seconds since startedAt (ms). */
export function criuLine(record: Record<string, unknown>, startedAt: number): string {
  const { level, time, msg, pid: _pid, hostname: _hostname, ...rest } = record;
  const elapsed = Math.max(0, (Number(time) - startedAt) / 1000);
  const seconds = Math.floor(elapsed);
  const micros = Math.round((elapsed - seconds) * 1e6);
  const stamp = `(${String(seconds).padStart(2, '0')}.${String(Math.min(micros, 999999)).padStart(6, '0')})`;
  const extras = Object.entries(rest)
    .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`)
    .join(' ');
  return `${stamp} ${PREFIX_BY_LEVEL[String(level)] ?? ''}${String(msg ?? '')}${extras ? ' ' + extras : ''}\n`;
}

/** Where the lines go (a file opened for appending, or stderr) and in which format. */
class LogDestination {
  private fd: number;
  // Seconds since the process started, as criu stamps its log lines.
  private readonly startedAt = performance.timeOrigin;
  constructor(
    private readonly file: string | undefined,
    readonly format: LogFormat,
  ) {
    this.fd = file ? openLogFile(file) : 2;
  }
  write(chunk: string): void {
    let out = '';
    for (const line of chunk.split('\n')) {
      if (!line) continue;
      if (this.format === 'json') {
        out += line + '\n';
        continue;
      }
      try {
        out += criuLine(JSON.parse(line), this.startedAt);
      } catch {
        out += line + '\n';
      }
    }
    if (!out) return;
    // A live progress line on the terminal is taken down for the log line and drawn again under it.
    if (this.fd === 2) stderrLine.around(() => fs.writeSync(2, out));
    else fs.writeSync(this.fd, out);
  }
  /** SIGHUP: reopen the file by name, so log rotation (rename, then HUP) works. */
  reopen(): void {
    if (!this.file) return;
    const fresh = openLogFile(this.file);
    fs.closeSync(this.fd);
    this.fd = fresh;
  }
}

function openLogFile(file: string): number {
  try {
    return fs.openSync(file, 'a');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const fix =
      code === 'ENOENT' ? 'create its directory' : code === 'EACCES' ? 'make it writable for this user' : 'pass another -o';
    throw new Error(`cannot open the log file ${file}: ${(error as Error).message} — ${fix}`);
  }
}

export interface LogOptions {
  verbosity?: number;
  /** criu's -o: relative paths are resolved in the work dir, as criu does after its chdir. */
  logFile?: string;
  workDir?: string;
  /** --log-format; 'auto' (the default) means `autoFormat`. */
  format?: LogFormatOption;
  /** What 'auto' means for this command: 'text' always (the drop-ins), or 'tty' (text on a terminal, else json). */
  autoFormat?: 'text' | 'tty';
}

export interface LogHandle {
  logger: Logger;
  logFile?: string;
  format: LogFormat;
  reopen(): void;
  /** Loads pino, which writes the lines from then on (a deferred logger); resolves at once otherwise. */
  load(): Promise<void>;
}

const now = () => performance.timeOrigin + performance.now();

/** pino's options for lazyd: criu's level names as labels, no pid/hostname, the time with microseconds. */
export function pinoOptions(level: LevelName, time: () => number = now): pino.LoggerOptions {
  return {
    level,
    base: undefined,
    formatters: { level: (label) => ({ level: label }) },
    // Milliseconds since the epoch with a microsecond fraction (criu's (SS.uuuuuu) stamps need them).
    timestamp: () => `,"time":${time().toFixed(3)}`,
  };
}

/**
 * One record as pino writes it with pinoOptions(): level, time, the fields in their order, msg last. For the
 * records lazyd logs (a message, or flat fields and a message) it is byte for byte pino's line
 * (test/unit/log-core.test.ts).
 */
export function pinoShapedLine(level: LevelName, time: number, args: readonly unknown[]): string {
  const [first, second] = args;
  const fields = typeof first === 'object' && first !== null ? (first as Record<string, unknown>) : {};
  const msg = typeof first === 'string' ? first : second;
  let line = `{"level":"${level}","time":${time.toFixed(3)}`;
  for (const [key, value] of Object.entries(fields)) {
    if (value !== undefined) line += `,${JSON.stringify(key)}:${JSON.stringify(value)}`;
  }
  if (msg !== undefined) line += `,"msg":${JSON.stringify(String(msg))}`;
  return line + '}\n';
}

/** Writes each line at once in pino's shape until load() has pino, then hands every line to pino. */
class EarlyLogger implements Logger {
  private real: Logger | undefined;
  private loading: Promise<void> | undefined;
  private readonly enabled: ReadonlySet<LevelName>;
  constructor(
    private readonly make: () => Promise<Logger>,
    level: LevelName,
    private readonly write: (line: string) => void,
  ) {
    this.enabled = new Set(LEVELS.slice(0, LEVELS.indexOf(level) + 1));
  }
  load(): Promise<void> {
    this.loading ??= this.make().then((real) => {
      this.real = real;
    });
    return this.loading;
  }
  private log(level: LevelName, args: [unknown, unknown?]): void {
    if (this.real) return (this.real[level] as (...a: unknown[]) => void)(...args);
    if (this.enabled.has(level)) this.write(pinoShapedLine(level, now(), args));
  }
  fatal: LogFn = (...args: [unknown, unknown?]) => this.log('fatal', args);
  error: LogFn = (...args: [unknown, unknown?]) => this.log('error', args);
  warn: LogFn = (...args: [unknown, unknown?]) => this.log('warn', args);
  info: LogFn = (...args: [unknown, unknown?]) => this.log('info', args);
  debug: LogFn = (...args: [unknown, unknown?]) => this.log('debug', args);
}

export function resolveLogFormat(options: Pick<LogOptions, 'format' | 'autoFormat'>, toTerminal: boolean): LogFormat {
  const format = options.format ?? 'auto';
  if (!(LOG_FORMATS as readonly string[]).includes(format)) {
    throw new Error(`--log-format must be one of ${LOG_FORMATS.join(', ')}, not ${JSON.stringify(format)}`);
  }
  if (format !== 'auto') return format;
  if ((options.autoFormat ?? 'tty') === 'text') return 'text';
  return toTerminal ? 'text' : 'json';
}

/** The handle over one destination: pino given (loaded already), or imported by load() (deferred). */
export function logHandle(options: LogOptions, source: { pino: typeof pino } | { deferred: true }): LogHandle {
  const logFile = resolveLogFile(options.logFile, options.workDir);
  const format = resolveLogFormat(options, !logFile && process.stderr.isTTY === true);
  const destination = new LogDestination(logFile, format);
  const level = levelForVerbosity(options.verbosity ?? DEFAULT_VERBOSITY);
  const make = (pinoFn: typeof pino): Logger => pinoFn(pinoOptions(level as LevelName), destination as unknown as pino.DestinationStream);
  let load = () => Promise.resolve();
  let logger: Logger;
  if ('deferred' in source) {
    const early = new EarlyLogger(async () => make((await import('pino')).default), level as LevelName, (line) => destination.write(line));
    logger = early;
    load = () => early.load();
  } else {
    logger = make(source.pino);
  }
  const reopen = () => {
    try {
      destination.reopen();
    } catch (error) {
      // A failed reopen (its directory gone, a full disk) must not take the daemon down: keep the old file.
      logger.warn(`SIGHUP: ${(error as Error).message}; still writing to the file opened before`);
    }
  };
  return { logger, logFile, format, reopen, load };
}

/** A deferred logger (see the top of this file): lines in pino's shape until load() has imported pino. */
export function createDeferredLogger(options: LogOptions = {}): LogHandle {
  return logHandle(options, { deferred: true });
}

/** `-o -` and no -o mean stderr; a relative name lives in the work dir (criu: -W, else -D, else cwd). */
export function resolveLogFile(logFile: string | undefined, workDir: string | undefined): string | undefined {
  if (!logFile || logFile === '-') return undefined;
  return path.resolve(workDir ?? '.', logFile);
}
