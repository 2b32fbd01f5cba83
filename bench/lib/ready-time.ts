// A daemon's ready time: from exec (just before spawn) to its --status-fd byte, and to its socket listening.
// "Listening" is read from the kernel, not by connecting (a connection would be the restore's to a lazy-pages
// daemon): the socket inodes among /proc/<pid>/fd, looked up in /proc/net/unix (flag __SO_ACCEPTCON) or
// /proc/net/tcp{,6} (state 0A, LISTEN), polled every millisecond from the moment of the spawn.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';

export type ListenKind = 'unix' | 'tcp';

export interface ReadySpec {
  file: string;
  args: string[];
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** The socket whose listening counts: lazy-pages.socket (unix) or a page server's port (tcp). */
  listen: ListenKind;
  timeoutMs?: number;
}

export interface ReadyTime {
  /** exec → the --status-fd byte (ms). */
  statusMs: number;
  /** exec → its socket listening (ms, to the polling's 1 ms). */
  listenMs: number;
}

export interface StartedDaemon {
  child: ChildProcess;
  ready: ReadyTime;
  /** stdout and stderr so far (for error messages). */
  output(): string;
}

/** Flags of a listening socket in /proc/net/unix (__SO_ACCEPTCON). */
const SO_ACCEPTCON = 0x10000;
const TCP_LISTEN = '0A';

function socketInodes(pid: number): Set<string> {
  const inodes = new Set<string>();
  let fds: string[];
  try {
    fds = fs.readdirSync(`/proc/${pid}/fd`);
  } catch {
    return inodes;
  }
  for (const fd of fds) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]);
    } catch {
      // closed meanwhile
    }
  }
  return inodes;
}

function listeningInodes(kind: ListenKind): Set<string> {
  const out = new Set<string>();
  const files = kind === 'unix' ? ['/proc/net/unix'] : ['/proc/net/tcp', '/proc/net/tcp6'];
  for (const file of files) {
    let lines: string[];
    try {
      lines = fs.readFileSync(file, 'utf8').split('\n').slice(1);
    } catch {
      continue;
    }
    for (const line of lines) {
      const f = line.trim().split(/\s+/);
      if (kind === 'unix' && f.length >= 7 && (parseInt(f[3], 16) & SO_ACCEPTCON) !== 0) out.add(f[6]);
      if (kind === 'tcp' && f.length >= 10 && f[3] === TCP_LISTEN) out.add(f[9]);
    }
  }
  return out;
}

/** Whether the process holds a listening socket of this kind now. */
export function isListening(pid: number, kind: ListenKind): boolean {
  const mine = socketInodes(pid);
  if (!mine.size) return false;
  for (const inode of listeningInodes(kind)) if (mine.has(inode)) return true;
  return false;
}

/**
 * Starts the daemon with a pipe on fd 3 (give it `--status-fd 3`) and resolves once it has written its status
 * byte and listens, with both times. Rejects, with its output, when it exits or times out first (it is killed).
 */
export function startTimed(spec: ReadySpec): Promise<StartedDaemon> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(spec.file, spec.args, { cwd: spec.cwd, env: spec.env, stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (out += d));
    let statusMs: number | undefined;
    let listenMs: number | undefined;
    let settled = false;
    const finish = (error?: Error) => {
      if (settled) return;
      settled = true;
      clearInterval(poll);
      clearTimeout(timer);
      if (error) {
        child.kill('SIGKILL');
        reject(error);
      } else {
        resolve({ child, ready: { statusMs: statusMs!, listenMs: listenMs! }, output: () => out });
      }
    };
    const check = () => {
      if (listenMs === undefined && child.pid !== undefined && isListening(child.pid, spec.listen)) listenMs = performance.now() - t0;
      if (statusMs !== undefined && listenMs !== undefined) finish();
    };
    const poll = setInterval(check, 1);
    const timer = setTimeout(() => finish(new Error(`${spec.file} ${spec.args.join(' ')}: not ready within ${spec.timeoutMs ?? 10_000} ms\n${out}`)), spec.timeoutMs ?? 10_000);
    const status = child.stdio[3] as NodeJS.ReadableStream;
    status.once('data', () => {
      statusMs = performance.now() - t0;
      // Listening comes before the status byte for both daemons; look once more before the next tick.
      check();
    });
    status.on('error', () => {});
    child.once('error', (error) => finish(error));
    child.once('exit', (code, signal) => finish(new Error(`${spec.file} ${spec.args.join(' ')} exited (${signal ?? code}) before it was ready\n${out}`)));
  });
}

/** Stops a daemon started by startTimed (SIGKILL: it has nothing to finish) and waits for its exit. */
export async function stopTimed(daemon: StartedDaemon): Promise<void> {
  const { child } = daemon;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

/** The ready time of one start of a daemon: starts it, times it, stops it. */
export async function readyTime(spec: ReadySpec): Promise<ReadyTime> {
  const daemon = await startTimed(spec);
  await stopTimed(daemon);
  return daemon.ready;
}
