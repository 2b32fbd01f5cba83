// Real CRIU, as installed by scripts/install-criu.sh: finding the binaries, checking the host, and running criu
// actions (to completion with a timeout, or in the background until their --status-fd byte).
import fs from 'node:fs';
import path from 'node:path';
import { runCommand, startWithStatusFd, type ExitInfo, type Proc } from './process.js';

export const CRIU_VERSIONS = ['4.1.1', '4.2.1'] as const;
export type CriuVersion = (typeof CRIU_VERSIONS)[number];

/** The page_server_iov header size each version speaks on the wire. */
export const HEADER_SIZE: Record<CriuVersion, 24 | 32> = { '4.1.1': 24, '4.2.1': 32 };

export const PIPE_MAX_SIZE = 4 * 1024 * 1024;
const PIPE_MAX_SIZE_FILE = '/proc/sys/fs/pipe-max-size';
const INSTALL_HINT = 'install it with `scripts/install-criu.sh` (as root; LAZYD_CRIU_PREFIX overrides the prefix)';

export interface Criu {
  version: CriuVersion;
  path: string;
}

export function criuPrefix(): string {
  return process.env.LAZYD_CRIU_PREFIX || '/opt/lazyd-criu';
}

export function criuPath(version: CriuVersion): string {
  return path.join(criuPrefix(), version, 'criu');
}

export function isCriuVersion(text: string): text is CriuVersion {
  return (CRIU_VERSIONS as readonly string[]).includes(text);
}

/** The CRIU binary of a version; throws a message naming scripts/install-criu.sh when it is missing. */
export function findCriu(version: CriuVersion): Criu {
  const file = criuPath(version);
  try {
    fs.accessSync(file, fs.constants.X_OK);
  } catch {
    throw new Error(`CRIU ${version} is not installed: ${file} is missing or not executable — ${INSTALL_HINT}`);
  }
  return { version, path: file };
}

/** Makes sure fs.pipe-max-size is at least 4 MiB (criu page-server --lazy-pages needs it); throws if it cannot. */
export function ensurePipeMaxSize(bytes = PIPE_MAX_SIZE): number {
  const read = () => Number(fs.readFileSync(PIPE_MAX_SIZE_FILE, 'utf8').trim());
  let current: number;
  try {
    current = read();
  } catch (error) {
    throw new Error(`cannot read ${PIPE_MAX_SIZE_FILE}: ${(error as Error).message}`);
  }
  if (current >= bytes) return current;
  try {
    fs.writeFileSync(PIPE_MAX_SIZE_FILE, `${bytes}\n`);
  } catch (error) {
    throw new Error(
      `cannot raise fs.pipe-max-size from ${current} to ${bytes} (${(error as Error).message}); ` +
        `criu's lazy page server needs it — run \`sysctl -w fs.pipe-max-size=${bytes}\` as root`,
    );
  }
  const now = read();
  if (now < bytes) throw new Error(`fs.pipe-max-size is still ${now} after writing ${bytes}`);
  return now;
}

/**
 * Everything an end-to-end run needs: root, /dev/userfaultfd (or a uffd-capable kernel), the CRIU versions, and
 * fs.pipe-max-size. Throws one message listing every problem.
 */
export function checkHost(versions: readonly CriuVersion[] = CRIU_VERSIONS): Criu[] {
  const problems: string[] = [];
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    problems.push(`must run as root (uid is ${process.getuid()}): criu dump/restore need it`);
  }
  const found: Criu[] = [];
  for (const version of versions) {
    try {
      found.push(findCriu(version));
    } catch (error) {
      problems.push((error as Error).message);
    }
  }
  if (problems.length === 0) {
    try {
      ensurePipeMaxSize();
    } catch (error) {
      problems.push((error as Error).message);
    }
  }
  if (problems.length) throw new Error('end-to-end prerequisites missing:\n  - ' + problems.join('\n  - '));
  return found;
}

export interface CriuActionOptions {
  /** Working directory; relative -o/--pidfile paths in criu are resolved against -D/-W anyway. */
  cwd?: string;
  /** The -o log file as given (relative to the images dir, like criu), for error messages. */
  logFile?: string;
  /** The images dir, to locate a relative log file. */
  imagesDir?: string;
  /**
   * Run criu in a mount namespace of its own (`unshare -m --propagation private`) with source bind-mounted over
   * target: a restored tree that shares criu's mount namespace then reads and writes source where its images
   * name target (e.g. its own copy of the workload dir, so two restores of one checkpoint keep apart).
   */
  privateBind?: { source: string; target: string };
  /** Run criu in this network namespace (see CommandSpec.netns). */
  netns?: string;
}

function commandSpec(criu: Criu, action: string, args: string[], options: CriuActionOptions) {
  const log = options.logFile && !path.isAbsolute(options.logFile) && options.imagesDir
    ? path.join(options.imagesDir, options.logFile)
    : options.logFile;
  const bind = options.privateBind;
  return {
    name: `criu ${criu.version} ${action}`,
    ...(bind
      ? {
          file: 'unshare',
          args: ['-m', '--propagation', 'private', '--', 'sh', '-c', 'mount --bind "$1" "$2" && shift 2 && exec "$@"', 'sh', bind.source, bind.target, criu.path, action, ...args],
        }
      : { file: criu.path, args: [action, ...args] }),
    cwd: options.cwd ?? options.imagesDir,
    logFile: log,
    netns: options.netns,
  };
}

/** `criu <action> <args>` to completion; throws (naming the action and its log's Error lines) unless it exits 0. */
export function runCriu(
  criu: Criu,
  action: string,
  args: string[],
  timeoutMs: number,
  options: CriuActionOptions = {},
): Promise<ExitInfo> {
  return runCommand(commandSpec(criu, action, args, options), timeoutMs);
}

/** `criu <action> <args> --status-fd 3` in the background; resolves once it has written its '\0'. */
export function startCriu(
  criu: Criu,
  action: string,
  args: string[],
  readyTimeoutMs: number,
  options: CriuActionOptions = {},
): Promise<Proc> {
  return startWithStatusFd(commandSpec(criu, action, [...args, '--status-fd', '3'], options), readyTimeoutMs);
}

export interface LazyPagesSummary {
  /** Per task: pages installed by the daemon, out of the lazy pages it expected ("UFFD transferred pages"). */
  tasks: { copied: number; total: number }[];
  copied: number;
  total: number;
  /** Log timestamp (seconds since the daemon started logging) of the last task's summary line: all pages in. */
  doneAtSec: number | undefined;
}

/** Reads the "(SS.uuuuuu) ... UFFD transferred pages: (copied/total)" lines of a `criu lazy-pages` -v4 log. */
export function readLazyPagesSummary(logFile: string): LazyPagesSummary {
  let text = '';
  try {
    text = fs.readFileSync(logFile, 'utf8');
  } catch {
    // no log: no tasks
  }
  const matches = [...text.matchAll(/^\((\d+\.\d+)\).*UFFD transferred pages: \((\d+)\/(\d+)\)/gm)];
  const tasks = matches.map((m) => ({ copied: Number(m[2]), total: Number(m[3]) }));
  return {
    tasks,
    copied: tasks.reduce((sum, task) => sum + task.copied, 0),
    total: tasks.reduce((sum, task) => sum + task.total, 0),
    doneAtSec: matches.length ? Number(matches[matches.length - 1][1]) : undefined,
  };
}
