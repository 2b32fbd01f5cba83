// Child processes for the harness: run to completion with a timeout, or start in the background and wait for a
// `--status-fd` readiness byte, the way zdtm drives criu. Every error names the command and its log file.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import fs from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

export interface ExitInfo {
  /** Exit code, or null when killed by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Wall time from spawn to exit. */
  ms: number;
}

export interface CommandSpec {
  /** Short human name used in messages, e.g. "criu 4.1.1 dump". */
  name: string;
  file: string;
  args: string[];
  cwd?: string;
  /** Log file written by the command (for error messages); absolute or relative to cwd. */
  logFile?: string;
  env?: NodeJS.ProcessEnv;
  /**
   * Run it in this named network namespace (/run/netns/<name>, `ip netns add`): `nsenter --net=...` execs the
   * command, so the pid is the command's. Only the network namespace changes (`ip netns exec` would also give it
   * a mount namespace of its own, and criu refuses to dump a task whose mount namespace differs from its own).
   */
  netns?: string;
}

/**
 * CPUs a network namespace's commands run on (taskset -c), when set: two "hosts" on one machine then have CPUs of
 * their own, as two machines have (bench/migration.ts, LAZYD_BENCH_CPUS). Unset: any CPU.
 */
export const NETNS_CPUS = new Map<string, string>();

/** The file and argv that run a spec, in its network namespace if it names one (on that namespace's CPUs). */
export function spawnArgs(spec: CommandSpec): { file: string; args: string[] } {
  if (!spec.netns) return { file: spec.file, args: spec.args };
  const nsenter = [`--net=/run/netns/${spec.netns}`, '--', spec.file, ...spec.args];
  const cpus = NETNS_CPUS.get(spec.netns);
  // taskset execs nsenter, which execs the command: the pid stays the command's.
  if (cpus) return { file: 'taskset', args: ['-c', cpus, 'nsenter', ...nsenter] };
  return { file: 'nsenter', args: nsenter };
}

const OUTPUT_LIMIT = 64 * 1024;
/**
 * After a process exits, how long to wait for its stdout/stderr pipes to reach end-of-file. They normally do at
 * once (every byte it wrote is already in the pipe); only a descendant that inherited them keeps them open.
 */
const OUTPUT_DRAIN_MS = 5000;

/** The last lines of a log that look like errors ("Error" / "ERROR"), or the last lines at all. */
export function logTail(file: string | undefined, maxLines = 6): string {
  if (!file) return '';
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    return `(no log: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`;
  }
  const lines = text.split('\n').filter((line) => line.trim() !== '');
  const errors = lines.filter((line) => /\berror\b/i.test(line));
  const picked = (errors.length ? errors : lines).slice(-maxLines);
  return picked.map((line) => '    ' + line).join('\n');
}

function describeExit(info: ExitInfo): string {
  return info.signal ? `killed by ${info.signal}` : `exit ${info.code}`;
}

export function failureText(spec: CommandSpec, what: string, output = ''): string {
  const log = spec.logFile ? resolveIn(spec.cwd, spec.logFile) : undefined;
  let text = `${spec.name} ${what}`;
  if (log) text += ` — log ${log}:\n${logTail(log)}`;
  const trimmed = output.trim();
  if (trimmed) text += `\n  output:\n${trimmed.split('\n').slice(-6).map((l) => '    ' + l).join('\n')}`;
  return text;
}

function resolveIn(cwd: string | undefined, file: string): string {
  return file.startsWith('/') || !cwd ? file : `${cwd}/${file}`;
}

/** A started process: its pid, its captured output, and a promise of its exit. */
export class Proc {
  readonly child: ChildProcess;
  readonly spec: CommandSpec;
  readonly startedAt: number;
  readonly exited: Promise<ExitInfo>;
  exitInfo: ExitInfo | undefined;
  private output = '';

  constructor(spec: CommandSpec, stdio: SpawnOptions['stdio'], detached = false) {
    this.spec = spec;
    this.startedAt = performance.now();
    const { file, args } = spawnArgs(spec);
    this.child = spawn(file, args, { cwd: spec.cwd, env: spec.env ?? process.env, stdio, detached });
    const collect = (chunk: Buffer) => {
      this.output += chunk.toString('utf8');
      if (this.output.length > OUTPUT_LIMIT) this.output = this.output.slice(-OUTPUT_LIMIT);
    };
    this.child.stdout?.on('data', collect);
    this.child.stderr?.on('data', collect);
    // 'exit' can come before the last 'data' of stdout/stderr: `exited` waits for both pipes to end too, so what
    // the process wrote just before it exited (a summary, its error line) is in outputText once it resolves.
    const pipes = [this.child.stdout, this.child.stderr].filter((pipe) => pipe !== null);
    const drained = Promise.all(pipes.map((pipe) => new Promise<void>((resolve) => pipe.once('close', () => resolve()))));
    this.exited = new Promise<ExitInfo>((resolve) => {
      let settled = false;
      const done = (info: ExitInfo) => {
        if (settled) return;
        settled = true;
        this.exitInfo = info;
        resolve(info);
      };
      // 'error' without 'exit' happens when the file cannot be executed at all.
      this.child.on('error', (error) => {
        this.output += `\nspawn error: ${error.message}`;
        if (this.child.pid === undefined) done({ code: 127, signal: null, ms: performance.now() - this.startedAt });
      });
      this.child.on('exit', (code, signal) => {
        const info = { code, signal, ms: performance.now() - this.startedAt };
        this.exitInfo = info; // not running any more, whatever its pipes do
        void Promise.race([drained, sleep(OUTPUT_DRAIN_MS, undefined, { ref: false })]).then(() => done(info));
      });
    });
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error(failureText(this.spec, 'could not be started', this.output));
    return this.child.pid;
  }

  /** stdout and stderr, interleaved, the last 64 KiB. */
  get outputText(): string {
    return this.output;
  }

  get running(): boolean {
    return this.exitInfo === undefined && this.child.pid !== undefined;
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    if (this.running) {
      try {
        this.child.kill(signal);
      } catch {
        // already gone
      }
    }
  }

  /** Waits for the exit; on timeout kills the process (SIGKILL) and throws. */
  async wait(timeoutMs: number): Promise<ExitInfo> {
    const timer = sleep(timeoutMs, 'timeout' as const, { ref: false });
    const outcome = await Promise.race([this.exited, timer]);
    if (outcome === 'timeout') {
      this.kill('SIGKILL');
      await this.exited;
      throw new Error(failureText(this.spec, `did not exit within ${timeoutMs} ms (killed)`, this.output));
    }
    return outcome;
  }

  /** Waits for the exit and requires exit code 0. */
  async waitOk(timeoutMs: number): Promise<ExitInfo> {
    const info = await this.wait(timeoutMs);
    if (info.code !== 0) throw new Error(failureText(this.spec, `failed (${describeExit(info)})`, this.output));
    return info;
  }

  /** SIGTERM, then SIGKILL after graceMs; resolves with the exit. */
  async stop(graceMs = 5000): Promise<ExitInfo> {
    if (!this.running) return this.exited;
    this.kill('SIGTERM');
    const outcome = await Promise.race([this.exited, sleep(graceMs, 'timeout' as const, { ref: false })]);
    if (outcome !== 'timeout') return outcome;
    this.kill('SIGKILL');
    return this.exited;
  }
}

/** Runs a command to completion; throws on a non-zero exit or on timeout (the process is killed). */
export async function runCommand(spec: CommandSpec, timeoutMs: number): Promise<ExitInfo> {
  const proc = new Proc(spec, ['ignore', 'pipe', 'pipe']);
  return proc.waitOk(timeoutMs);
}

/**
 * Starts a command whose args already contain `--status-fd 3` (fd 3 is a pipe to us) and resolves once the
 * readiness byte '\0' arrives. A command that daemonizes (criu -d) may exit 0 first: then the byte is still
 * awaited from whoever holds fd 3. Rejects, naming the log, if the process fails first, fd 3 closes without the
 * byte, or nothing arrives in time (then it is killed). `onStdout` sees stdout as it arrives.
 */
export async function startWithStatusFd(
  spec: CommandSpec,
  readyTimeoutMs: number,
  onStdout?: (text: string) => void,
): Promise<Proc> {
  const proc = new Proc(spec, ['ignore', 'pipe', 'pipe', 'pipe']);
  if (onStdout) proc.child.stdout?.on('data', (chunk: Buffer) => onStdout(chunk.toString('utf8')));
  const status = proc.child.stdio[3] as NodeJS.ReadableStream | null;
  const ready = new Promise<'ready' | 'eof'>((resolve) => {
    status?.on('data', (chunk: Buffer) => {
      if (chunk.includes(0)) resolve('ready');
    });
    status?.on('end', () => resolve('eof'));
    status?.on('close', () => resolve('eof'));
    status?.on('error', () => resolve('eof'));
  });
  const failed = proc.exited.then((info) => (info.code === 0 ? new Promise<never>(() => undefined) : ('exited' as const)));
  const outcome = await Promise.race([ready, failed, sleep(readyTimeoutMs, 'timeout' as const, { ref: false })]);
  if (outcome === 'ready') {
    (status as unknown as { destroy?: () => void })?.destroy?.();
    return proc;
  }
  if (outcome === 'timeout') {
    proc.kill('SIGKILL');
    await proc.exited;
    throw new Error(failureText(spec, `sent no readiness byte on --status-fd within ${readyTimeoutMs} ms (killed)`, proc.outputText));
  }
  // Failed, or fd 3 closed without the byte: report the exit if there is one.
  const info = await Promise.race([proc.exited, sleep(2000, undefined, { ref: false })]);
  if (!info) proc.kill('SIGKILL');
  const how = info ? describeExit(info) : 'still running, killed';
  throw new Error(failureText(spec, `closed --status-fd without signalling readiness (${how})`, proc.outputText));
}

/** Polls `check` every `intervalMs` until it returns a value other than undefined, or throws on timeout. */
export async function pollFor<T>(
  what: string,
  timeoutMs: number,
  check: () => T | undefined | Promise<T | undefined>,
  intervalMs = 10,
): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

/** True while the pid exists and is not a zombie. */
export function processAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

/** SIGKILL (or `signal`) to a pid, ignoring ESRCH. */
export function killQuietly(pid: number, signal: NodeJS.Signals = 'SIGKILL'): void {
  try {
    process.kill(pid, signal);
  } catch {
    // gone
  }
}
