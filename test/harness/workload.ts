// The self-verifying workload (test/workload/workload.c): build it, start it as pid 1 of its own pid namespace,
// read what it reports (ready, log, hb), wait for clean verify passes, and kill whole pid namespaces.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { repoRoot } from '../../src/paths.js';
import { Proc, runCommand, pollFor, logTail, processAlive, killQuietly } from './process.js';

export type PageOrder = 'seq' | 'random';

export interface WorkloadOptions {
  /** Data area size in MiB (256 pages of 4 KiB each). */
  mib: number;
  order?: PageOrder;
  seed?: number;
  /** Extra verifier threads. */
  threads?: number;
  /** Forked children, each with its own data area and log dir <dir>/c<i>/. */
  children?: number;
  /** Pause between verify passes. */
  intervalMs?: number;
  /** Heartbeat period. */
  hbMs?: number;
  /** Leave an unreaped (zombie) child in the tree (workload --zombie 1; logs "zombie pid <pid>"). */
  zombie?: boolean;
  /** Passes read only this fixed, scattered percentage of the pages (workload --hot-pct; 0 = idle; default 100). */
  hotPct?: number;
}

export const WORKLOAD_DEFAULTS = { order: 'seq' as PageOrder, seed: 1, threads: 0, children: 0, intervalMs: 50, hbMs: 5 };

export const PAGE_SIZE = 4096;
export const PAGES_PER_MIB = 256;
export type ControlFile = 'do-fork' | 'do-munmap' | 'do-mremap' | 'do-dontneed' | 'do-verify-all';

/** How buildWorkload() compiles the workload (scripts/record-fixtures.sh records them too). */
export const WORKLOAD_CFLAGS = ['-O2', '-Wall', '-pthread'];

// The wall clock at performance.now() = 0. performance.timeOrigin is read once, at start; if the wall clock is
// stepped later (a VM paused and resumed, a time sync), the workload's CLOCK_REALTIME stamps follow the step and
// timeOrigin + now() does not: every heartbeat then falls on the wrong side of a restore's start (one bench run lost
// the downtime of every later run, as such a step would make it). Date.now() has ms resolution, so the origin is
// moved only when the two disagree by more than a few ms.
let wallOriginMs = performance.timeOrigin;
const WALL_STEP_MS = 5;

/** Realtime clock in ns, comparable with the workload's CLOCK_REALTIME stamps (sub-ms between wall-clock steps). */
export function nowNs(): bigint {
  const sinceStart = performance.now();
  const wall = Date.now();
  if (Math.abs(wall - (wallOriginMs + sinceStart)) > WALL_STEP_MS) wallOriginMs = wall - sinceStart;
  return BigInt(Math.round((wallOriginMs + sinceStart) * 1e6));
}

// ---------------------------------------------------------------- build

export function workloadSource(): string {
  return path.join(repoRoot(), 'test', 'workload', 'workload.c');
}

/** Compiles the workload once per source version into build/workload/ and returns the binary's path. */
export async function buildWorkload(): Promise<string> {
  const source = workloadSource();
  const text = fs.readFileSync(source);
  const hash = createHash('sha256').update(text).update(WORKLOAD_CFLAGS.join(' ')).digest('hex').slice(0, 12);
  const outDir = path.join(repoRoot(), 'build', 'workload');
  const binary = path.join(outDir, `workload-${hash}`);
  if (fs.existsSync(binary)) return binary;
  fs.mkdirSync(outDir, { recursive: true });
  const tmp = `${binary}.tmp-${process.pid}`;
  await runCommand({ name: 'gcc (workload)', file: 'gcc', args: [...WORKLOAD_CFLAGS, '-o', tmp, source] }, 120_000);
  fs.renameSync(tmp, binary);
  return binary;
}

// ---------------------------------------------------------------- start

export interface ReadyInfo {
  /** getpid() inside its pid namespace (1 when it is the namespace's init). */
  nsPid: number;
  /** Its pid as the host's /proc saw it. */
  hostPid: number;
  pages: number;
  base: string;
  children: number;
}

export function workloadArgs(dir: string, options: WorkloadOptions): string[] {
  const o = { ...WORKLOAD_DEFAULTS, ...options };
  return [
    dir,
    String(o.mib),
    o.order,
    String(o.seed),
    '--threads',
    String(o.threads),
    '--children',
    String(o.children),
    '--interval-ms',
    String(o.intervalMs),
    '--hb-ms',
    String(o.hbMs),
    ...(o.zombie ? ['--zombie', '1'] : []),
    ...(options.hotPct !== undefined && options.hotPct !== 100 ? ['--hot-pct', String(options.hotPct)] : []),
  ];
}

function shQuote(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}

/** A workload started by startWorkload(): pid 1 of its own pid namespace, in its own session. */
export interface Workload {
  dir: string;
  binary: string;
  options: WorkloadOptions;
  /** The `unshare` process (our child); it exits when the namespace's init does. */
  unshare: Proc;
  /** Host pid of the workload (the child of unshare): the pid to dump. */
  pid: number;
  ready: ReadyInfo;
}

/**
 * Starts `unshare -p -f -- sh -c 'exec setsid <binary> <dir> ...'` with stdio on /dev/null and cwd = dir, finds
 * the workload's host pid, and waits for <dir>/ready.
 */
export async function startWorkload(
  binary: string,
  dir: string,
  options: WorkloadOptions,
  readyTimeoutMs = 30_000,
  /** Start it in this network namespace (see CommandSpec.netns). */
  netns?: string,
): Promise<Workload> {
  fs.mkdirSync(dir, { recursive: true });
  const command = ['exec', 'setsid', binary, ...workloadArgs(dir, options)].map(shQuote).join(' ');
  const unshare = new Proc(
    { name: 'workload', file: 'unshare', args: ['-p', '-f', '--', 'sh', '-c', command], cwd: dir, logFile: path.join(dir, 'log'), netns },
    'ignore',
    true,
  );
  try {
    const pid = await pollFor('the workload (child of unshare)', readyTimeoutMs, () => {
      if (!unshare.running) throw new Error(`workload exited at once: unshare ${JSON.stringify(unshare.exitInfo)}`);
      return childrenOf(unshare.pid)[0];
    });
    const ready = await waitForReady(dir, readyTimeoutMs, () => unshare.running);
    if (ready.hostPid !== pid) {
      throw new Error(`workload in ${dir}: ready says host pid ${ready.hostPid}, but the child of unshare is ${pid}`);
    }
    return { dir, binary, options, unshare, pid, ready };
  } catch (error) {
    unshare.kill('SIGKILL');
    for (const pid of childrenOf(unshare.child.pid ?? -1)) killQuietly(pid);
    throw error;
  }
}

/** The pids listed in /proc/<pid>/task/<tid>/children for every thread. */
export function childrenOf(pid: number): number[] {
  const pids: number[] = [];
  let tasks: string[];
  try {
    tasks = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return pids;
  }
  for (const tid of tasks) {
    try {
      const text = fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8');
      for (const word of text.split(/\s+/)) if (word) pids.push(Number(word));
    } catch {
      // thread gone
    }
  }
  return pids;
}

export function parseReady(text: string): ReadyInfo {
  const m = text.match(/^pid (\d+) host (-?\d+) pages (\d+) base (\S+) children (\d+)/);
  if (!m) throw new Error(`unexpected ready file content: ${JSON.stringify(text)}`);
  return { nsPid: Number(m[1]), hostPid: Number(m[2]), pages: Number(m[3]), base: m[4], children: Number(m[5]) };
}

/** Waits for <dir>/ready (written once, atomically). `alive` lets it fail early when the process died. */
export async function waitForReady(dir: string, timeoutMs: number, alive: () => boolean = () => true): Promise<ReadyInfo> {
  const file = path.join(dir, 'ready');
  return pollFor(`${file}`, timeoutMs, () => {
    try {
      return parseReady(fs.readFileSync(file, 'utf8'));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
    if (!alive()) throw new Error(`the workload exited before writing ${file}; its log:\n${logTail(path.join(dir, 'log'))}`);
    return undefined;
  });
}

/** Creates a control file (do-fork, do-munmap, ..., do-verify-all); the workload acts on it next pass. */
export function touchControl(dir: string, name: ControlFile): void {
  fs.writeFileSync(path.join(dir, name), '');
}

/** SIGUSR1: the workload ends its pause between passes now (and so acts on control files at once). */
export function wakeWorkload(pid: number): void {
  process.kill(pid, 'SIGUSR1');
}

// ---------------------------------------------------------------- log

export interface PassLine {
  pass: number;
  pid: number;
  ok: number;
  bad: number;
  /** "0x" + 16 hex digits: u64 sum of every word read. */
  sum: string;
  /** End and start of the pass, CLOCK_REALTIME ns. */
  t: bigint;
  start: bigint;
  us: number;
}

export interface LogScan {
  passes: PassLine[];
  /** "BAD page ..." and "fork-bad ..." lines. */
  bad: string[];
  /** "ERROR ..." lines. */
  errors: string[];
  forkOk: string[];
  ops: string[];
  reaped: { pid: number; status: number }[];
  /** "verify-all" lines: a check of every mapped page (control file do-verify-all). */
  verifyAll: { pid: number; ok: number; bad: number; sum: string; us: number }[];
  /** Byte offset just after the last complete line read. */
  offset: number;
}

const VERIFY_ALL_RE = /^verify-all pid (\d+) ok (\d+) bad (\d+) sum (0x[0-9a-f]+) us (\d+)$/;
const PASS_RE = /^pass (\d+) pid (\d+) ok (\d+) bad (\d+) sum (0x[0-9a-f]+) t (\d+) start (\d+) us (\d+)$/;

export function parseLog(text: string, baseOffset = 0): LogScan {
  const complete = text.lastIndexOf('\n') + 1;
  const scan: LogScan = { passes: [], bad: [], errors: [], forkOk: [], ops: [], reaped: [], verifyAll: [], offset: baseOffset };
  scan.offset = baseOffset + Buffer.byteLength(text.slice(0, complete));
  for (const line of text.slice(0, complete).split('\n')) {
    let m: RegExpMatchArray | null;
    if ((m = line.match(PASS_RE))) {
      scan.passes.push({
        pass: Number(m[1]),
        pid: Number(m[2]),
        ok: Number(m[3]),
        bad: Number(m[4]),
        sum: m[5],
        t: BigInt(m[6]),
        start: BigInt(m[7]),
        us: Number(m[8]),
      });
    } else if (line.startsWith('BAD ') || line.startsWith('fork-bad ')) scan.bad.push(line);
    else if (line.startsWith('ERROR')) scan.errors.push(line);
    else if (line.startsWith('fork-ok ')) scan.forkOk.push(line);
    else if (line.startsWith('op ')) scan.ops.push(line);
    else if ((m = line.match(/^reaped pid (\d+) status (-?\d+)$/))) scan.reaped.push({ pid: Number(m[1]), status: Number(m[2]) });
    else if ((m = line.match(VERIFY_ALL_RE))) {
      scan.verifyAll.push({ pid: Number(m[1]), ok: Number(m[2]), bad: Number(m[3]), sum: m[4], us: Number(m[5]) });
    }
  }
  return scan;
}

/** Reads <dir>/log from a byte offset (only complete lines). */
export function readLog(dir: string, fromOffset = 0): LogScan {
  let buffer: Buffer;
  try {
    const fd = fs.openSync(path.join(dir, 'log'), 'r');
    try {
      const size = fs.fstatSync(fd).size;
      buffer = Buffer.alloc(Math.max(0, size - fromOffset));
      if (buffer.length) fs.readSync(fd, buffer, 0, buffer.length, fromOffset);
    } finally {
      fs.closeSync(fd);
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    buffer = Buffer.alloc(0);
  }
  return parseLog(buffer.toString('latin1'), fromOffset);
}

/** Current size of <dir>/log: pass it as `fromOffset` to look only at what comes later. */
export function logOffset(dir: string): number {
  try {
    return fs.statSync(path.join(dir, 'log')).size;
  } catch {
    return 0;
  }
}

/** The log dirs of a workload: <dir> and <dir>/c<i> for each of its --children. */
export function instanceDirs(dir: string, children = 0): string[] {
  return [dir, ...Array.from({ length: children }, (_, i) => path.join(dir, `c${i}`))];
}

export interface WaitForPassesOptions {
  /** Only look at log bytes after this offset (default 0). */
  fromOffset?: number;
  /** Count only passes that started at or after this CLOCK_REALTIME ns (earlier ones are checked, not counted). */
  sinceNs?: bigint;
  /** Every counted pass must report this sum. */
  expectSum?: string;
  /** Fail early when this host pid is gone (the workload died). */
  pid?: number;
  pollMs?: number;
  /** Stop watching (rejects with the signal's reason). */
  signal?: AbortSignal;
}

/**
 * Resolves with the counted passes once `n` complete passes after the given point all report bad 0. Rejects at
 * once on a BAD, fork-bad or ERROR line, or on any pass after fromOffset with bad > 0 or a wrong sum; rejects on
 * timeout with the log tail.
 */
export async function waitForPasses(
  dir: string,
  n: number,
  timeoutMs: number,
  options: WaitForPassesOptions = {},
): Promise<PassLine[]> {
  const deadline = performance.now() + timeoutMs;
  let offset = options.fromOffset ?? 0;
  const counted: PassLine[] = [];
  const logFile = path.join(dir, 'log');
  for (;;) {
    const scan = readLog(dir, offset);
    offset = scan.offset;
    const problems = [...scan.bad, ...scan.errors];
    if (problems.length) throw new Error(`workload in ${dir} reported errors:\n  ${problems.slice(0, 8).join('\n  ')}`);
    for (const pass of scan.passes) {
      // Every pass after fromOffset must be clean; only those begun at or after sinceNs count.
      if (pass.bad > 0) throw new Error(`workload in ${dir}: pass ${pass.pass} found ${pass.bad} bad pages`);
      if (options.expectSum && pass.sum !== options.expectSum) {
        throw new Error(`workload in ${dir}: pass ${pass.pass} sum ${pass.sum}, expected ${options.expectSum}`);
      }
      if (options.sinceNs !== undefined && pass.start < options.sinceNs) continue;
      counted.push(pass);
      if (counted.length >= n) return counted;
    }
    if (options.pid !== undefined && !processAlive(options.pid)) {
      throw new Error(`workload pid ${options.pid} (${dir}) is gone after ${counted.length}/${n} passes; log:\n${logTail(logFile)}`);
    }
    if (performance.now() > deadline) {
      throw new Error(`workload in ${dir}: only ${counted.length}/${n} clean passes within ${timeoutMs} ms; log:\n${logTail(logFile)}`);
    }
    options.signal?.throwIfAborted();
    await sleep(options.pollMs ?? 20);
  }
}

/** waitForPasses() for a workload and each of its --children, in parallel. */
export async function waitForAllPasses(
  dir: string,
  children: number,
  n: number,
  timeoutMs: number,
  options: Omit<WaitForPassesOptions, 'fromOffset' | 'expectSum'> & { fromOffsets?: number[]; expectSums?: (string | undefined)[] } = {},
): Promise<PassLine[][]> {
  const dirs = instanceDirs(dir, children);
  return Promise.all(
    dirs.map((d, i) =>
      waitForPasses(d, n, timeoutMs, {
        ...options,
        pid: i === 0 ? options.pid : undefined,
        fromOffset: options.fromOffsets?.[i],
        expectSum: options.expectSums?.[i],
      }),
    ),
  );
}

/** The sum of the last complete pass in <dir>/log (undefined before the first pass). */
export function lastPassSum(dir: string): string | undefined {
  const passes = readLog(dir).passes;
  return passes.at(-1)?.sum;
}

// ---------------------------------------------------------------- first-read latency ("touch" file)

export interface TouchLine {
  pid: number;
  pass: number;
  slow: number;
  /** [bucket upper bound µs, count] */
  buckets: [number, number][];
}

export interface SlowRead {
  pid: number;
  /** CLOCK_REALTIME ns when the read ended, and its duration. */
  endNs: bigint;
  ns: number;
}

/** The workload's <dir>/touch file: per pass, a histogram of page first reads slower than 2 µs; reads over 20 ms. */
export function readTouches(dir: string): TouchLine[];
export function readTouches(dir: string, slow: SlowRead[]): TouchLine[];
export function readTouches(dir: string, slow?: SlowRead[]): TouchLine[] {
  let text = '';
  try {
    text = fs.readFileSync(path.join(dir, 'touch'), 'latin1');
  } catch {
    return [];
  }
  const out: TouchLine[] = [];
  for (const line of text.split('\n')) {
    const s = line.match(/^slowread pid (\d+) end (\d+) ns (\d+)$/);
    if (s) {
      slow?.push({ pid: Number(s[1]), endNs: BigInt(s[2]), ns: Number(s[3]) });
      continue;
    }
    const m = line.match(/^touch pid (\d+) pass (\d+) slow (\d+)((?: \d+:\d+)*)$/);
    if (!m) continue;
    const buckets = m[4]
      .trim()
      .split(' ')
      .filter(Boolean)
      .map((b) => b.split(':').map(Number) as [number, number]);
    out.push({ pid: Number(m[1]), pass: Number(m[2]), slow: Number(m[3]), buckets });
  }
  return out;
}

// ---------------------------------------------------------------- heartbeat

/** All heartbeat stamps (CLOCK_REALTIME ns) of <dir>/hb. */
export function readHeartbeats(dir: string): bigint[] {
  let text = '';
  try {
    text = fs.readFileSync(path.join(dir, 'hb'), 'latin1');
  } catch {
    return [];
  }
  const complete = text.slice(0, text.lastIndexOf('\n') + 1);
  return complete
    .split('\n')
    .filter((line) => /^\d+$/.test(line))
    .map((line) => BigInt(line));
}

export interface HeartbeatStats {
  beats: number;
  /** Largest gap between consecutive beats, and when the beat ending it was written. */
  maxGapMs: number;
  maxGapEndNs: bigint | undefined;
  p50GapMs: number;
  p99GapMs: number;
}

/** Gap statistics over the beats in [fromNs, toNs]. */
export function heartbeatStats(beats: readonly bigint[], fromNs?: bigint, toNs?: bigint): HeartbeatStats {
  const picked = beats.filter((b) => (fromNs === undefined || b >= fromNs) && (toNs === undefined || b <= toNs));
  const gaps: number[] = [];
  let maxGapMs = 0;
  let maxGapEndNs: bigint | undefined;
  for (let i = 1; i < picked.length; i++) {
    const gap = Number(picked[i] - picked[i - 1]) / 1e6;
    gaps.push(gap);
    if (gap > maxGapMs) {
      maxGapMs = gap;
      maxGapEndNs = picked[i];
    }
  }
  gaps.sort((a, b) => a - b);
  const quantile = (q: number) => (gaps.length ? gaps[Math.min(gaps.length - 1, Math.floor(q * gaps.length))] : 0);
  return { beats: picked.length, maxGapMs, maxGapEndNs, p50GapMs: quantile(0.5), p99GapMs: quantile(0.99) };
}

// ---------------------------------------------------------------- processes and pid namespaces

/** The pids whose pid namespace is `nsLink` (a readlink of /proc/<pid>/ns/pid). */
export function pidNamespaceMembers(nsLink: string): number[] {
  const members: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (fs.readlinkSync(`/proc/${entry}/ns/pid`) === nsLink && processAlive(Number(entry))) members.push(Number(entry));
    } catch {
      // gone, or a kernel thread
    }
  }
  return members;
}

/**
 * Kills every process of the pid namespace whose init has host pid `initPid` (SIGKILL to the init makes the
 * kernel kill the rest) and waits until none is left. Refuses to act on a pid that is not a namespace init, so a
 * stale pid can never take down something else.
 */
export async function killPidNamespace(initPid: number, timeoutMs = 10_000): Promise<void> {
  let nsLink: string;
  try {
    nsLink = fs.readlinkSync(`/proc/${initPid}/ns/pid`);
  } catch {
    return; // already gone
  }
  const status = fs.readFileSync(`/proc/${initPid}/status`, 'utf8');
  const nspid = status.match(/^NSpid:\s+(.*)$/m)?.[1].trim().split(/\s+/);
  if (!nspid || nspid.at(-1) !== '1') {
    throw new Error(`pid ${initPid} is not the init of a pid namespace (NSpid ${nspid?.join(' ')}); not killing it`);
  }
  killQuietly(initPid);
  await pollFor(`pid namespace of ${initPid} to be empty`, timeoutMs, () =>
    pidNamespaceMembers(nsLink).length === 0 ? true : undefined,
  20);
}

/** Kills a started workload's namespace and reaps its unshare. */
export async function killWorkload(workload: Workload): Promise<void> {
  if (processAlive(workload.pid)) await killPidNamespace(workload.pid);
  workload.unshare.kill('SIGKILL');
  await workload.unshare.exited;
}
