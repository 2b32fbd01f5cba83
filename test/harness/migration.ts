// A whole post-copy migration on loopback, with real CRIU on both ends of lazyd (or of criu's own page server):
//
//   workload ─▶ criu dump -t PID -D src ─▶ page server (-D src) ◀─TCP─ criu lazy-pages --page-server -D dst
//                                             copy src/*.img ─▶ dst      criu restore --lazy-pages -D dst -d
//
// The pieces are exported separately (checkpointWorkload, lazyRestore, startPageServer) so tests can restore one
// checkpoint several times or interfere with the server; runLazyMigration() strings them together.
//
// Two parameters select the pieces:
//   destination daemon  'criu' (criu lazy-pages) or 'lazyd' (lazyd lazy-pages, the drop-in)
//   source              a page server the harness starts on the plain dump (ServerKind: criu page-server
//                       --lazy-pages, lazyd serve mode, lazyd's drop-in), 'criu-dump' (`criu dump --lazy-pages
//                       --port P`: the frozen tasks serve their own memory; the dump exits, killing them, after the
//                       daemon's CLOSE; its images hold PE_LAZY entries without data), or 'local' (no page
//                       server: the daemon reads the lazy pages from the plain dump's pages-*.img);
//                       'lazyd-staging' (`criu dump --page-server` uploads into lazyd) and 'lazyd-relay' (lazyd
//                       pulls the pages of `criu dump --lazy-pages` on 127.0.0.1 into its memory and serves them:
//                       test/harness/relay-staging.ts).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { findCriu, readLazyPagesSummary, runCriu, startCriu, type Criu, type CriuVersion, type LazyPagesSummary } from './criu.js';
import { readPagemap } from '../../src/images/pagemap.js';
import { freePort, lazydBin, startPageServer, type PageServer, type PageServerOptions, type ServerKind } from './page-server.js';
import { pollFor, processAlive, startWithStatusFd, type ExitInfo, type Proc } from './process.js';
import { startRelay } from './relay.js';
import { RELAYED_RE, startRelayCommand, startRelayDaemon, type RelayCommand, type RelayDaemon } from './relay-staging.js';
import {
  buildWorkload,
  heartbeatStats,
  instanceDirs,
  killPidNamespace,
  killWorkload,
  lastPassSum,
  logOffset,
  nowNs,
  PAGES_PER_MIB,
  readHeartbeats,
  readLog,
  startWorkload,
  touchControl,
  wakeWorkload,
  waitForAllPasses,
  waitForPasses,
  type ControlFile,
  type HeartbeatStats,
  type PassLine,
  type Workload,
  type WorkloadOptions,
} from './workload.js';

export interface Timeouts {
  dumpMs: number;
  readyMs: number;
  restoreMs: number;
  /** From the restore's start until the lazy-pages daemon has exited (all pages present). */
  allPagesMs: number;
  passesMs: number;
}

export const DEFAULT_TIMEOUTS: Timeouts = { dumpMs: 60_000, readyMs: 30_000, restoreMs: 60_000, allPagesMs: 120_000, passesMs: 60_000 };

type Progress = (message: string) => void;

/** Who runs on the destination and serves the restored tasks' faults. */
export type DaemonKind = 'criu' | 'lazyd';
export const DAEMON_KINDS: readonly DaemonKind[] = ['criu', 'lazyd'];

/**
 * Where the lazy pages come from: a page server the harness starts on the plain dump, the lazy dump itself,
 * 'lazyd-staging' (`lazyd --page-server` started first; `criu dump --page-server` uploads into its memory, and it
 * serves the pages from there), or the local images.
 */
export type SourceKind = ServerKind | 'criu-dump' | 'lazyd-staging' | 'lazyd-relay' | 'local';

// ---------------------------------------------------------------- run directories and cleanup

/** A fresh /tmp/lazyd-e2e-<tag>-XXXXXX directory. */
export function makeRunDir(tag = 'run'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `lazyd-e2e-${tag.replace(/[^\w.-]+/g, '_')}-`));
}

/**
 * Runs `body` with a fresh run dir and a cleanup stack. On success the cleanups run and the dir is removed (unless
 * `keep`); on failure the cleanups run (kill processes), the dir is kept, and the error says where.
 */
export async function withRunDir<T>(
  tag: string,
  body: (runDir: string, onCleanup: (fn: () => unknown) => void) => Promise<T>,
  keep = false,
): Promise<T> {
  const runDir = makeRunDir(tag);
  const cleanups: (() => unknown)[] = [];
  const runCleanups = async () => {
    const errors: string[] = [];
    for (const fn of cleanups.splice(0).reverse()) {
      try {
        await fn();
      } catch (error) {
        errors.push((error as Error).message);
      }
    }
    return errors;
  };
  try {
    const result = await body(runDir, (fn) => cleanups.push(fn));
    const errors = await runCleanups();
    if (errors.length) throw new Error(`cleanup failed:\n  ${errors.join('\n  ')}`);
    if (!keep) fs.rmSync(runDir, { recursive: true, force: true });
    return result;
  } catch (error) {
    await runCleanups();
    const err = error instanceof Error ? error : new Error(String(error));
    err.message += `\n  (files kept in ${runDir})`;
    throw err;
  }
}

// ---------------------------------------------------------------- checkpoint

export interface Checkpoint {
  criu: Criu;
  runDir: string;
  /** The workload's own dir (cwd, log, hb, ready); the restored workload writes here too. */
  workloadDir: string;
  /** The plain dump. */
  imagesDir: string;
  workload: WorkloadOptions;
  /** Total data pages, children included. */
  dataPages: number;
  /** PE_LAZY pages in the dump's pagemaps (all tasks). */
  lazyPages: number;
  /** Dumps it took (see checkpointWorkload). */
  attempts: number;
  /** Last pass sum of each instance (main, then c0, c1, ...) before the dump. */
  sums: (string | undefined)[];
  dumpStartNs: bigint;
  /** Plain dump: its whole run. Lazy dump: until it signalled readiness (images written, serving). */
  dumpMs: number;
  /** Set for a lazy dump (CheckpointOptions.lazyDump): it serves the pages until the daemon's CLOSE. */
  dumpServer?: DumpServer;
}

/** `criu dump --lazy-pages --address A --port P`, running in the background with the tasks frozen. */
export interface DumpServer {
  address: string;
  port: number;
  proc: Proc;
  /** Waits for the dump to exit 0 (after the daemon's CLOSE it kills the dumped tree, and unshare follows). */
  finish(timeoutMs?: number): Promise<ExitInfo>;
  /** Kills the dump and the frozen originals (cleanup after a failure). */
  kill(): Promise<void>;
}

export interface CheckpointOptions {
  criu: Criu;
  runDir: string;
  workload: WorkloadOptions;
  /** Clean passes to see before dumping (default 1): proves the workload is healthy and gives the reference sum. */
  warmupPasses?: number;
  timeouts?: Partial<Timeouts>;
  progress?: Progress;
  /** Dump right after a pass line appears, so the workload is frozen in its pause between passes. */
  dumpAtPassBoundary?: boolean;
  /** Called just before `criu dump` (e.g. to create control files the restored workload will act on). */
  beforeDump?: (workload: Workload) => Promise<void> | void;
  /** Re-dump a fresh workload when a task's dump has no lazy page (default true), at most `attempts` times. */
  requireLazy?: boolean;
  attempts?: number;
  /** Registers a cleanup (kill the workload if the dump does not). */
  onCleanup?: (fn: () => unknown) => void;
  /**
   * `criu dump --lazy-pages` in the background, serving on address:port (default 127.0.0.1 and a free port):
   * checkpointWorkload returns once it is ready, with checkpoint.dumpServer set. The workload stays frozen until
   * the daemon's CLOSE. The restored tree does not clash with it: the workload is the init of its own pid
   * namespace, and the restore creates a fresh one.
   */
  lazyDump?: { address?: string; port?: number; extraArgs?: string[] };
  /** `criu dump --page-server --address A --port P`: the pages go to this page server (lazyd staging), not to disk. */
  upload?: { address: string; port: number };
  /** Run the workload and criu dump in this network namespace (see CommandSpec.netns). */
  netns?: string;
}

/** Lazy and total pages of every task's pagemap in a dump (pagemap-<pid>.img). */
export async function dumpPageCounts(imagesDir: string): Promise<{ file: string; pages: number; lazyPages: number }[]> {
  const files = fs.readdirSync(imagesDir).filter((name) => /^pagemap-\d+\.img$/.test(name)).sort();
  const counts = [];
  for (const name of files) {
    const pm = await readPagemap(path.join(imagesDir, name), { checkPages: false });
    counts.push({ file: name, pages: pm.totals.pages, lazyPages: pm.totals.lazyPages });
  }
  return counts;
}

/**
 * Builds and starts the workload, waits for clean passes, and dumps it with `criu dump` (which kills it).
 *
 * CRIU quirk: a plain dump marks no page of a task lazy when one of its threads' stack pointer happens to be
 * page-aligned (criu's is_stack() compares only the offset within the page, so every page then looks like a
 * stack page). That happens about once in 256 dumps per thread. Such a checkpoint cannot test lazy restore, so
 * it is thrown away and the workload started afresh (up to `attempts` times, default 3).
 */
export async function checkpointWorkload(options: CheckpointOptions): Promise<Checkpoint> {
  const attempts = options.attempts ?? 3;
  const progress = options.progress ?? (() => undefined);
  for (let attempt = 1; ; attempt++) {
    const checkpoint = await checkpointOnce(options);
    const counts = await dumpPageCounts(checkpoint.imagesDir);
    const eager = counts.filter((c) => c.lazyPages === 0);
    checkpoint.lazyPages = counts.reduce((sum, c) => sum + c.lazyPages, 0);
    checkpoint.attempts = attempt;
    if (!(options.requireLazy ?? true) || (counts.length > 0 && eager.length === 0)) return checkpoint;
    const what = counts.length ? `${eager.map((c) => c.file).join(', ')} has no lazy page` : 'no pagemap was written';
    if (attempt >= attempts) {
      throw new Error(`criu dump in ${checkpoint.imagesDir}: ${what}, ${attempts} times in a row; lazy restore cannot be tested`);
    }
    progress(`criu dump: ${what} (a page-aligned stack pointer; criu is_stack() quirk), dumping a fresh workload`);
    await checkpoint.dumpServer?.kill();
    fs.rmSync(checkpoint.workloadDir, { recursive: true, force: true });
    fs.rmSync(checkpoint.imagesDir, { recursive: true, force: true });
  }
}

async function checkpointOnce(options: CheckpointOptions): Promise<Checkpoint> {
  const timeouts = { ...DEFAULT_TIMEOUTS, ...options.timeouts };
  const progress = options.progress ?? (() => undefined);
  const { criu, runDir } = options;
  const children = options.workload.children ?? 0;
  const binary = await buildWorkload();
  const workloadDir = path.join(runDir, 'w');
  const imagesDir = path.join(runDir, 'src');
  fs.mkdirSync(imagesDir, { recursive: true });

  progress(`starting the workload (${options.workload.mib} MiB${children ? ` x${children + 1} processes` : ''}) in ${workloadDir}`);
  const workload: Workload = await startWorkload(binary, workloadDir, options.workload, timeouts.readyMs, options.netns);
  options.onCleanup?.(() => killWorkload(workload));
  await waitForAllPasses(workloadDir, children, options.warmupPasses ?? 1, timeouts.passesMs, { pid: workload.pid });
  if (options.dumpAtPassBoundary) {
    await waitForPasses(workloadDir, 1, timeouts.passesMs, { fromOffset: logOffset(workloadDir), pid: workload.pid, pollMs: 1 });
  }
  const sums = instanceDirs(workloadDir, children).map((dir) => lastPassSum(dir));
  await options.beforeDump?.(workload);

  const dumpStartNs = nowNs();
  const { dumpMs, dumpServer } = options.lazyDump
    ? await startLazyDump(criu, workload, imagesDir, options.lazyDump, timeouts, progress, options.netns)
    : await plainDump(criu, workload, imagesDir, timeouts, progress, options.upload, options.netns);
  if (dumpServer) options.onCleanup?.(() => dumpServer.kill());
  return checkpointOf({ criu, runDir, workloadDir, imagesDir, workload: options.workload, sums, dumpStartNs, dumpMs, dumpServer });
}

/** `criu dump` to completion; it kills the dumped tree, and unshare follows its child. */
async function plainDump(
  criu: Criu,
  workload: Workload,
  imagesDir: string,
  timeouts: Timeouts,
  progress: Progress,
  to?: CheckpointOptions['upload'],
  netns?: string,
): Promise<{ dumpMs: number; dumpServer?: DumpServer }> {
  const upload = to ? ['--page-server', '--address', to.address, '--port', String(to.port)] : [];
  progress(`criu ${criu.version} dump -t ${workload.pid}${upload.length ? ` ${upload.join(' ')}` : ''}`);
  const dump = await runCriu(criu, 'dump', ['-t', String(workload.pid), '-D', imagesDir, '-v4', '-o', 'dump.log', ...upload], timeouts.dumpMs, {
    imagesDir,
    netns,
  });
  await workload.unshare.wait(10_000);
  return { dumpMs: dump.ms };
}

/** `criu dump --lazy-pages` in the background: resolves once it serves (images written), the tasks frozen. */
async function startLazyDump(
  criu: Criu,
  workload: Workload,
  imagesDir: string,
  where: NonNullable<CheckpointOptions['lazyDump']>,
  timeouts: Timeouts,
  progress: Progress,
  netns?: string,
): Promise<{ dumpMs: number; dumpServer: DumpServer }> {
  const address = where.address ?? '127.0.0.1';
  let port: number;
  let proc: Proc;
  let started: number;
  for (let attempt = 1; ; attempt++) {
    port = where.port || (await freePort(address));
    progress(`criu ${criu.version} dump -t ${workload.pid} --lazy-pages --address ${address} --port ${port} (background)`);
    started = performance.now();
    try {
      proc = await startCriu(
        criu,
        'dump',
        [
          ...['-t', String(workload.pid), '-D', imagesDir, '-v4', '-o', 'dump.log', '--lazy-pages', '--address', address, '--port', String(port)],
          ...(where.extraArgs ?? []),
        ],
        timeouts.dumpMs,
        { imagesDir, netns },
      );
      break;
    } catch (error) {
      // A port picked here is free only until someone else binds it; then criu cannot bind it, fails the dump and
      // resumes the tasks: dump them again on another port (at most 3 times).
      const taken = !where.port && attempt < 3 && /Address already in use/.test((error as Error).message);
      if (!taken || !processAlive(workload.pid)) throw error;
      progress(`criu dump --lazy-pages: port ${port} was taken before criu bound it; dumping again on another port`);
      for (const name of fs.readdirSync(imagesDir)) if (name.endsWith('.img')) fs.rmSync(path.join(imagesDir, name));
    }
  }
  const dumpMs = performance.now() - started;
  const dumpServer: DumpServer = {
    address,
    port,
    proc,
    async finish(timeoutMs = 30_000) {
      const exit = await proc.waitOk(timeoutMs);
      await workload.unshare.wait(10_000);
      return exit;
    },
    async kill() {
      proc.kill('SIGKILL');
      await proc.exited;
      await killWorkload(workload);
    },
  };
  return { dumpMs, dumpServer };
}

/** What a dump of a workload left (or, lazy, serves): the fields a Checkpoint derives from. */
export type DumpRecord = Pick<Checkpoint, 'criu' | 'runDir' | 'workloadDir' | 'imagesDir' | 'workload' | 'sums' | 'dumpStartNs' | 'dumpMs' | 'dumpServer'>;

/** The Checkpoint of one dump: data pages from the workload's size, lazy pages counted later (dumpPageCounts). */
export function checkpointOf(dump: DumpRecord): Checkpoint {
  const children = dump.workload.children ?? 0;
  return { ...dump, dataPages: dump.workload.mib * PAGES_PER_MIB * (children + 1), lazyPages: 0, attempts: 1 };
}

// ---------------------------------------------------------------- restore

export interface RestoreOptions {
  checkpoint: Checkpoint;
  /** Where the page server listens (a started PageServer, checkpoint.dumpServer, ...), or 'local': no page server. */
  server: { address: string; port: number } | 'local';
  /** The destination daemon (default 'criu'). */
  daemon?: DaemonKind;
  /** Extra arguments for the daemon, and extra environment (lazyd reads LAZYD_ON_FAILURE, LAZYD_RSTF_TIMEOUT). */
  daemonArgs?: string[];
  daemonEnv?: NodeJS.ProcessEnv;
  /** Name of the destination dir under the run dir (default "dst"). */
  name?: string;
  /** Clean verify passes to wait for after all pages are present (default 2). */
  passes?: number;
  /** Require every counted pass to report the pre-dump sum (default true). */
  checkSums?: boolean;
  /** Leave the restored workload running (the caller kills it with result.kill()). */
  keepRunning?: boolean;
  /** Called as soon as `criu restore` has returned, while pages are still arriving (e.g. to touch control files). */
  afterResume?: (restoredPid: number) => Promise<void> | void;
  /**
   * Called once the lazy-pages daemon is ready (listening for the restore) and before `criu restore` starts: what
   * runs here sees the daemon before any page is installed.
   */
  onDaemonReady?: (daemon: Proc, dstDir: string) => Promise<void> | void;
  criu?: Criu;
  timeouts?: Partial<Timeouts>;
  progress?: Progress;
  onCleanup?: (fn: () => unknown) => void;
  /**
   * Restore into a private mount namespace in which this directory (a copy of the workload dir as the dump left
   * it) is bind-mounted over checkpoint.workloadDir: the restored workload logs into it, and the passes are read
   * from it. Lets several restores of one checkpoint run at once, each verified on its own.
   */
  privateWorkloadDir?: string;
  /** Run the daemon and criu restore in this network namespace (see CommandSpec.netns). */
  netns?: string;
  /**
   * A `lazyd lazy-pages` already started on the destination dir (empty then: startPreStartedDaemon) before the
   * dump: its start-up is outside the downtime. The images are copied into its dir and the restore hands over to it.
   */
  preStarted?: PreStartedDaemon;
}

/** `lazyd lazy-pages` started on an empty destination dir before the dump (it reads the images at hand-over). */
export interface PreStartedDaemon {
  proc: Proc;
  dstDir: string;
  /** From spawning it until it was ready. */
  startMs: number;
}

/** Starts `lazyd lazy-pages` on <runDir>/<name> (created empty) before there is any image. */
export async function startPreStartedDaemon(options: {
  runDir: string;
  name?: string;
  server: { address: string; port: number } | 'local';
  extraArgs?: string[];
  env?: NodeJS.ProcessEnv;
  readyTimeoutMs?: number;
  netns?: string;
  onCleanup?: (fn: () => unknown) => void;
}): Promise<PreStartedDaemon> {
  const dstDir = path.join(options.runDir, options.name ?? 'dst');
  fs.mkdirSync(dstDir, { recursive: true });
  const start = performance.now();
  const proc = await startLazyPagesDaemon({
    daemon: 'lazyd',
    dstDir,
    server: options.server,
    extraArgs: options.extraArgs,
    env: options.env,
    readyTimeoutMs: options.readyTimeoutMs,
    netns: options.netns,
  });
  options.onCleanup?.(() => proc.kill('SIGKILL'));
  return { proc, dstDir, startMs: performance.now() - start };
}

export interface RestoreResult {
  dstDir: string;
  daemon: DaemonKind;
  /** Host pid of the restored workload (init of its new pid namespace). */
  restoredPid: number;
  copyMs: number;
  copiedBytes: number;
  /** Duration of `criu restore --lazy-pages -d`: time until the workload runs again. */
  restoreMs: number;
  /** From the restore's start until `criu lazy-pages` exited 0: every lazy page installed. */
  allPagesMs: number;
  /** From the restore's start until the daemon logged its last task complete (its exit follows later). */
  pagesInstalledMs: number;
  /** From the lazy-pages exit until the clean passes were seen. */
  verifyMs: number;
  lazyPages: LazyPagesSummary;
  /** Counted passes per instance (main, c0, c1, ...), all begun after every page was present. */
  passes: PassLine[][];
  /** Clean passes of the main instance that ended before the daemon had installed every page. */
  passesWhileLazy: number;
  /** Heartbeat gap spanning the restore start: the workload's downtime for a first restore. */
  resumeGapMs: number;
  /** Heartbeat gaps from the restore's start to the end of verification. */
  heartbeat: HeartbeatStats;
  lazyPagesExit: ExitInfo;
  /** From spawning the lazy-pages daemon until it was ready (listening for the restore). */
  daemonStartMs: number;
  /** CLOCK_REALTIME ns when `criu restore` was started. */
  restoreStartNs: bigint;
  /** lazyd only: the totals of its last stderr line ("lazyd lazy-pages: N pages installed ... of T lazy; ..."). */
  lazydTotals?: LazydTotals;
  /** Log sizes of each instance when the restore began (read the logs from there), and when all pages were present. */
  logOffsets: number[];
  allPagesNs: bigint;
  /** Kills the restored pid namespace (done already unless keepRunning). */
  kill(): Promise<void>;
}

/** What `lazyd lazy-pages` prints on stderr when it is done. */
export interface LazydTotals {
  line: string;
  installed: number;
  zero: number;
  dropped: number;
  total: number;
  faults: number;
  /** Bytes UFFDIO_COPY placed and the ms spent inside it (the install's own cost). */
  copyBytes?: number;
  copyMs?: number;
}

export const LAZYD_SUMMARY_RE = /lazyd lazy-pages: (\d+) pages installed .*?, (\d+) zero pages, (\d+) dropped, of (\d+) lazy; (\d+) faults[^\n]*/;

/** Parses the daemon's summary line out of its output (undefined if there is none). */
export function readLazydTotals(output: string): LazydTotals | undefined {
  const m = LAZYD_SUMMARY_RE.exec(output);
  if (!m) return undefined;
  const copy = /; UFFDIO_COPY (\d+) bytes in (\d+(?:\.\d+)?) ms/.exec(m[0]);
  return {
    line: m[0],
    installed: Number(m[1]),
    zero: Number(m[2]),
    dropped: Number(m[3]),
    total: Number(m[4]),
    faults: Number(m[5]),
    copyBytes: copy ? Number(copy[1]) : undefined,
    copyMs: copy ? Number(copy[2]) : undefined,
  };
}

export interface LazyPagesDaemonOptions {
  daemon: DaemonKind;
  /** For 'criu': which CRIU (unused for lazyd). */
  criu?: Criu;
  /** Images and work dir (lazy-pages.socket, lazy-pages.log). */
  dstDir: string;
  server: { address: string; port: number } | 'local';
  extraArgs?: string[];
  env?: NodeJS.ProcessEnv;
  readyTimeoutMs?: number;
  /** Run the daemon in this network namespace (see CommandSpec.netns). */
  netns?: string;
}

/** Starts `criu lazy-pages` or `lazyd lazy-pages` (-D dstDir -v4 -o lazy-pages.log) and resolves once it listens. */
export function startLazyPagesDaemon(options: LazyPagesDaemonOptions): Promise<Proc> {
  const { dstDir, server } = options;
  const remote = server === 'local' ? [] : ['--page-server', '--address', server.address, '--port', String(server.port)];
  const args = [...remote, '-D', dstDir, '-v4', '-o', 'lazy-pages.log', ...(options.extraArgs ?? [])];
  const readyMs = options.readyTimeoutMs ?? DEFAULT_TIMEOUTS.readyMs;
  if (options.daemon === 'criu') {
    if (options.env) throw new Error('daemon criu: extra environment is not supported');
    if (!options.criu) throw new Error('daemon criu: which CRIU (options.criu) is not given');
    return startCriu(options.criu, 'lazy-pages', args, readyMs, { imagesDir: dstDir, netns: options.netns });
  }
  return startWithStatusFd(
    {
      name: 'lazyd lazy-pages',
      file: lazydBin(),
      args: ['lazy-pages', ...args, '--status-fd', '3'],
      cwd: dstDir,
      logFile: path.join(dstDir, 'lazy-pages.log'),
      env: options.env ? { ...process.env, ...options.env } : undefined,
      netns: options.netns,
    },
    readyMs,
  );
}

/** Copies a checkpoint's *.img files (the destination's local image set); returns the bytes copied. */
export function copyCheckpointImages(from: string, to: string): number {
  return copyImages(from, to);
}

function copyImages(from: string, to: string): number {
  fs.mkdirSync(to, { recursive: true });
  let bytes = 0;
  for (const name of fs.readdirSync(from)) {
    // lazyd-link.json travels with the images (docs/protocol.md §7): a lazyd page server wrote it.
    if (!name.endsWith('.img') && name !== 'lazyd-link.json') continue;
    fs.copyFileSync(path.join(from, name), path.join(to, name));
    bytes += fs.statSync(path.join(to, name)).size;
  }
  return bytes;
}

/** A lazy restore that has resumed the workload: its daemon is still installing pages. */
export interface StartedRestore {
  dstDir: string;
  daemon: DaemonKind;
  /** The lazy-pages daemon. */
  lazyPages: Proc;
  /** Host pid of the restored workload (init of its new pid namespace). */
  restoredPid: number;
  restore: ExitInfo;
  copyMs: number;
  copiedBytes: number;
  /** Log sizes of each instance (in the dir the restored workload writes to) when the restore began. */
  offsets: number[];
  restoreStartNs: bigint;
  /** performance.now() when `criu restore` started. */
  restoreStart: number;
  /** From spawning the lazy-pages daemon until it was ready. */
  daemonStartMs: number;
  /** Kills the restored pid namespace. */
  kill(): Promise<void>;
}

/**
 * The first half of a lazy restore: copy the images, start the daemon (`criu lazy-pages` or `lazyd lazy-pages`,
 * with --page-server unless the source is 'local'), run `criu restore --lazy-pages -d`. Resolves once the
 * workload runs again, while its pages are still arriving.
 */
export async function startLazyRestore(options: RestoreOptions): Promise<StartedRestore> {
  const timeouts = { ...DEFAULT_TIMEOUTS, ...options.timeouts };
  const progress = options.progress ?? (() => undefined);
  const { checkpoint } = options;
  const criu = options.criu ?? checkpoint.criu;
  const children = checkpoint.workload.children ?? 0;
  // Where the restored workload's files are, seen from here.
  const workloadDir = options.privateWorkloadDir ?? checkpoint.workloadDir;
  const dstDir = options.preStarted?.dstDir ?? path.join(checkpoint.runDir, options.name ?? 'dst');
  const pidfile = path.join(dstDir, 'restored.pid');

  const copyStart = performance.now();
  const copiedBytes = copyImages(checkpoint.imagesDir, dstDir);
  const copyMs = performance.now() - copyStart;

  const daemon = options.preStarted ? 'lazyd' : (options.daemon ?? 'criu');
  const server = options.server === 'local' ? 'local' : { address: options.server.address, port: options.server.port };
  const where = server === 'local' ? 'local images' : `--page-server --address ${server.address} --port ${server.port}`;
  let lazyPages: Proc;
  let daemonStartMs: number;
  if (options.preStarted) {
    progress(`lazyd lazy-pages ${where} -D ${dstDir}: started before the dump`);
    lazyPages = options.preStarted.proc;
    daemonStartMs = options.preStarted.startMs;
  } else {
    progress(`${daemon === 'criu' ? `criu ${criu.version}` : 'lazyd'} lazy-pages ${where} -D ${dstDir}`);
    const daemonStart = performance.now();
    lazyPages = await startLazyPagesDaemon({
      daemon,
      criu,
      dstDir,
      server,
      extraArgs: options.daemonArgs,
      env: options.daemonEnv,
      readyTimeoutMs: timeouts.readyMs,
      netns: options.netns,
    });
    daemonStartMs = performance.now() - daemonStart;
  }
  options.onCleanup?.(() => lazyPages.kill('SIGKILL'));
  await options.onDaemonReady?.(lazyPages, dstDir);

  const offsets = instanceDirs(workloadDir, children).map((dir) => logOffset(dir));
  const restoreStartNs = nowNs();
  const restoreStart = performance.now();
  progress(`criu ${criu.version} restore --lazy-pages -D ${dstDir} -d`);
  let restore: ExitInfo;
  try {
    restore = await runCriu(
      criu,
      'restore',
      ['--lazy-pages', '-D', dstDir, '-d', '-v4', '-o', 'restore.log', '--pidfile', pidfile],
      timeouts.restoreMs,
      {
        imagesDir: dstDir,
        privateBind: options.privateWorkloadDir ? { source: options.privateWorkloadDir, target: checkpoint.workloadDir } : undefined,
        netns: options.netns,
      },
    );
  } catch (error) {
    lazyPages.kill('SIGKILL');
    // The restore may have got as far as starting the tree.
    const pid = readPidfile(pidfile);
    if (pid) await killPidNamespace(pid).catch(() => undefined);
    throw error;
  }
  const restoredPid = readPidfile(pidfile);
  if (!restoredPid) throw new Error(`criu restore exited 0 but wrote no pid to ${pidfile}`);
  const kill = () => killPidNamespace(restoredPid);
  options.onCleanup?.(kill);
  return { dstDir, daemon, lazyPages, restoredPid, restore, copyMs, copiedBytes, offsets, restoreStartNs, restoreStart, daemonStartMs, kill };
}

/**
 * Restores a checkpoint lazily (startLazyRestore), waits for the daemon to exit 0, then for clean verify passes.
 */
export async function lazyRestore(options: RestoreOptions): Promise<RestoreResult> {
  const timeouts = { ...DEFAULT_TIMEOUTS, ...options.timeouts };
  const progress = options.progress ?? (() => undefined);
  const { checkpoint } = options;
  const children = checkpoint.workload.children ?? 0;
  const workloadDir = options.privateWorkloadDir ?? checkpoint.workloadDir;
  const { dstDir, daemon, lazyPages, restoredPid, restore, copyMs, copiedBytes, offsets, restoreStartNs, restoreStart, daemonStartMs, kill } =
    await startLazyRestore(options);

  progress(`restored as pid ${restoredPid} after ${restore.ms.toFixed(0)} ms; waiting for the lazy-pages daemon to finish`);
  await options.afterResume?.(restoredPid);
  // While pages arrive, a BAD line or a dead workload fails the restore at once instead of after the timeout.
  const watching = new AbortController();
  const watch = waitForAllPasses(workloadDir, children, Number.MAX_SAFE_INTEGER, timeouts.allPagesMs + 1000, {
    fromOffsets: offsets,
    pid: restoredPid,
    pollMs: 50,
    signal: watching.signal,
  });
  watch.catch(() => undefined);
  let lazyPagesExit: ExitInfo;
  try {
    lazyPagesExit = await Promise.race([lazyPages.waitOk(timeouts.allPagesMs), watch.then(() => never())]);
  } catch (error) {
    lazyPages.kill('SIGKILL');
    throw error;
  } finally {
    watching.abort();
  }
  const allPagesMs = lazyPages.startedAt + lazyPagesExit.ms - restoreStart;

  // Every pass since the restore began must be clean (those ran while pages were still arriving); the counted
  // ones start after the daemon exited, when any page it failed to install would read as zeros.
  const allPagesNs = nowNs();
  const lazySummary = readLazyPagesSummary(path.join(dstDir, 'lazy-pages.log'));
  // The daemon exits a while after its last page (CLOSE handshake); its log says when the last task was done.
  const pagesInstalledMs =
    lazySummary.doneAtSec !== undefined ? Math.min(allPagesMs, lazyPages.startedAt + lazySummary.doneAtSec * 1000 - restoreStart) : allPagesMs;
  const pagesInstalledNs = restoreStartNs + BigInt(Math.round(pagesInstalledMs * 1e6));
  const verifyStart = performance.now();
  const passes = await waitForAllPasses(workloadDir, children, options.passes ?? 2, timeouts.passesMs, {
    sinceNs: allPagesNs,
    fromOffsets: offsets,
    expectSums: options.checkSums === false ? undefined : checkpoint.sums,
    pid: restoredPid,
  });
  const verifyMs = performance.now() - verifyStart;

  const passesWhileLazy = readLog(workloadDir, offsets[0]).passes.filter((p) => p.t < pagesInstalledNs).length;
  const beats = readHeartbeats(workloadDir);
  const before = beats.filter((b) => b < restoreStartNs).at(-1);
  const after = beats.find((b) => b >= restoreStartNs);
  const resumeGapMs = before !== undefined && after !== undefined ? Number(after - before) / 1e6 : NaN;
  const result: RestoreResult = {
    dstDir,
    daemon,
    restoredPid,
    copyMs,
    copiedBytes,
    restoreMs: restore.ms,
    allPagesMs,
    verifyMs,
    pagesInstalledMs,
    lazyPages: lazySummary,
    passes,
    passesWhileLazy,
    resumeGapMs,
    heartbeat: heartbeatStats(beats, after),
    lazyPagesExit,
    daemonStartMs,
    restoreStartNs,
    lazydTotals: daemon === 'lazyd' ? readLazydTotals(lazyPages.outputText) : undefined,
    logOffsets: offsets,
    allPagesNs,
    kill,
  };
  if (!options.keepRunning) await kill();
  return result;
}

function never(): never {
  throw new Error('unreachable');
}

export function readPidfile(file: string): number | undefined {
  try {
    const pid = Number(fs.readFileSync(file, 'utf8').trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------- the whole migration

export interface MigrationOptions {
  criuVersion: CriuVersion;
  /**
   * Where the pages come from: a page server started on the plain dump (criu page-server --lazy-pages, lazyd serve
   * mode, lazyd's drop-in command line), 'criu-dump' (criu dump --lazy-pages --port) or 'local' (no page server).
   */
  server: SourceKind;
  /** The destination daemon (default 'criu'). */
  daemon?: DaemonKind;
  /** Extra daemon arguments / environment, and the hook between the daemon's start and the restore's (see RestoreOptions). */
  daemonArgs?: string[];
  daemonEnv?: NodeJS.ProcessEnv;
  onDaemonReady?: RestoreOptions['onDaemonReady'];
  /** The workload acts on these control files right after the restore (then sums are not checked). */
  controlFiles?: ControlFile[];
  workload: WorkloadOptions;
  passes?: number;
  /** Source 'criu-dump': extra arguments for `criu dump --lazy-pages` (e.g. TLS flags). */
  dumpArgs?: string[];
  /** Extra page-server options (pidfile, extraArgs, verbosity). */
  serverOptions?: Partial<Omit<PageServerOptions, 'kind' | 'imagesDir' | 'criuVersion'>>;
  /** Keep the run dir even on success. */
  keep?: boolean;
  timeouts?: Partial<Timeouts>;
  progress?: Progress;
  /** Called once the server listens, before the restore (e.g. to connect misbehaving clients). Page servers only. */
  beforeRestore?: (server: PageServer, checkpoint: Checkpoint) => Promise<void> | void;
  /** Called after the server has finished (exited, or stopped for serve mode), before the run dir is removed. */
  afterFinish?: (server: PageServer, checkpoint: Checkpoint, restored: RestoreResult) => Promise<void> | void;
  /** Called with the restore's result, for any source, while the restored workload still runs. */
  onRestored?: (restored: RestoreResult, checkpoint: Checkpoint) => Promise<void> | void;
  /**
   * Pass the lazy pages to the daemon through a relay at this many bytes per second (any source but 'local'), so
   * that the lazy phase lasts long enough for the workload to act in it.
   */
  throttleBytesPerSecond?: number;
  /**
   * Called once the source's serving process exists: the page server as soon as it listens (for 'lazyd-staging'
   * before the dump), the lazy dump once it serves. Not called for 'local'.
   */
  onSource?: (source: { pid: number; logFile: string }) => Promise<void> | void;
  /**
   * Two hosts on one machine: the workload, criu dump and the page server run in network namespace `source` and
   * listen on `sourceAddress`; the lazy-pages daemon and criu restore run in `destination` (see netns.ts).
   */
  network?: { source: string; destination: string; sourceAddress: string };
  /** 'lazyd-staging', 'lazyd-relay': lazyd's --staging-max-bytes (default: twice the workload's data, at least 1 GiB). */
  stagingMaxBytes?: number;
  /** 'lazyd-relay': extra arguments of `lazyd staging relay` (--relay-inflight-bytes ...). */
  relayArgs?: string[];
  /**
   * Daemon 'lazyd': start `lazyd lazy-pages` on the empty destination dir before the dump (it reads the images
   * at hand-over), so its start-up is outside the downtime. Sources whose address is known before the dump only
   * ('lazyd-relay', 'lazyd-staging', 'local'); not with throttleBytesPerSecond. (`criu lazy-pages` reads the
   * images at start: it cannot be pre-started.)
   */
  preStartDaemon?: boolean;
}

export interface MigrationResult {
  criuVersion: CriuVersion;
  server: SourceKind;
  daemon: DaemonKind;
  mib: number;
  dataPages: number;
  /** PE_LAZY pages in the dump, and how many dumps it took (see checkpointWorkload). */
  lazyPagesInImages: number;
  dumpAttempts: number;
  runDir: string;
  dumpMs: number;
  serverStartMs: number;
  copyMs: number;
  /** Bytes of the *.img files copied to the destination directory. */
  copiedBytes: number;
  /** Starting the lazy-pages daemon (after the dump, before the restore: inside the downtime). */
  daemonStartMs: number;
  restoreMs: number;
  pagesInstalledMs: number;
  allPagesMs: number;
  verifyMs: number;
  totalMs: number;
  /** Pages installed by the daemon ("UFFD transferred pages" lines of its log), all tasks. */
  lazyPages: LazyPagesSummary;
  /** lazyd's own totals line, when the daemon is lazyd. */
  lazydTotals?: LazydTotals;
  /** Clean passes counted after the restore, per instance. */
  passes: PassLine[][];
  passesWhileLazy: number;
  sums: (string | undefined)[];
  resumeGapMs: number;
  heartbeat: HeartbeatStats;
  /** The page server's or the lazy dump's exit; for 'local', the daemon's. */
  serverExit: ExitInfo;
  /**
   * How long the source tasks stayed frozen, from the dump's start until the dump exited; for 'criu-dump' that is
   * after the daemon's CLOSE (the frozen tasks serve their own memory until then).
   */
  sourceFrozenMs: number;
  /** 'lazyd-relay': the line `lazyd staging relay` printed, and from its start until it exited (the pull's whole time). */
  relay?: { line: string; ms: number; pages: number; bytes: number };
}

/** Runs a whole lazy migration on loopback and returns its timings; cleans up (and removes the run dir) on success. */
export async function runLazyMigration(options: MigrationOptions): Promise<MigrationResult> {
  const criu = findCriu(options.criuVersion);
  const started = performance.now();
  const daemon = options.daemon ?? 'criu';
  const tag = `${options.criuVersion}-${options.server}${daemon === 'criu' ? '' : `-${daemon}`}`;
  return withRunDir(
    tag,
    async (runDir, onCleanup) => {
      const progress = options.progress;
      const controls = options.controlFiles ?? [];
      const net = options.network;
      const address = net?.sourceAddress ?? '127.0.0.1';
      // In a network namespace of its own nothing else listens: any port is free (freePort() would probe ours).
      const port = net ? 20000 + Math.floor(Math.random() * 40000) : undefined;

      // Staging: lazyd listens before the dump, which uploads the pages into it instead of writing pages-*.img.
      let staging: PageServer | undefined;
      const mib = options.workload.mib * ((options.workload.children ?? 0) + 1);
      const maxBytes = options.stagingMaxBytes ?? Math.max(1 << 30, 2 * mib * 1048576);
      // Relay: an empty staging daemon first, as the README's flow starts it before the dump; and `lazyd staging
      // relay` before the dump too (it waits for the dump's server to listen), so that its own start is not in the
      // time the tasks stay frozen.
      let relayDaemon: RelayDaemon | undefined;
      let relayReady: Promise<RelayCommand> | undefined;
      let relayPort: number | undefined;
      if (options.server === 'lazyd-relay') {
        progress?.(`starting lazyd --page-server (relay staging, --staging-max-bytes ${maxBytes})`);
        relayDaemon = await startRelayDaemon({
          dir: path.join(runDir, 'relay'),
          address,
          netns: net?.source,
          stagingMaxBytes: maxBytes,
          extraArgs: [...(options.serverOptions?.extraArgs ?? []), '--staging-restores', '1'],
        });
        const started = relayDaemon.server;
        onCleanup(() => started.kill());
        await options.onSource?.({ pid: started.pid, logFile: started.logFile });
        relayPort = port ?? (await freePort('127.0.0.1'));
        const dumpDir = path.join(runDir, 'src');
        progress?.(`lazyd staging relay -D ${dumpDir} --from 127.0.0.1:${relayPort} (waits for the dump)`);
        relayReady = startRelayCommand(relayDaemon, dumpDir, { address: '127.0.0.1', port: relayPort }, options.relayArgs, DEFAULT_TIMEOUTS.dumpMs + DEFAULT_TIMEOUTS.passesMs, net?.source);
        relayReady.catch(() => undefined);
        const pending = relayReady;
        onCleanup(() => pending.then((command) => command.proc.kill('SIGKILL'), () => undefined));
      }
      if (options.server === 'lazyd-staging') {
        const imagesDir = path.join(runDir, 'src');
        fs.mkdirSync(imagesDir, { recursive: true });
        progress?.(`starting lazyd --page-server (staging, --staging-max-bytes ${maxBytes}) on ${imagesDir}`);
        staging = await startPageServer({
          ...options.serverOptions,
          kind: 'lazyd',
          imagesDir,
          address,
          netns: net?.source,
          extraArgs: [...(options.serverOptions?.extraArgs ?? []), '--staging-max-bytes', String(maxBytes), '--staging-restores', '1'],
        });
        const started = staging;
        onCleanup(() => started.kill());
        await options.onSource?.({ pid: staging.pid, logFile: staging.logFile });
      }
      let preStarted: PreStartedDaemon | undefined;
      if (options.preStartDaemon) {
        if (daemon !== 'lazyd') throw new Error('preStartDaemon: only lazyd lazy-pages can start before the images exist');
        if (options.throttleBytesPerSecond) throw new Error('preStartDaemon: not with throttleBytesPerSecond');
        const early = relayDaemon?.server ?? staging ?? (options.server === 'local' ? 'local' : undefined);
        if (!early) throw new Error(`preStartDaemon: the ${options.server} source's address is known only after the dump`);
        progress?.('starting lazyd lazy-pages on the empty destination dir (before the dump)');
        preStarted = await startPreStartedDaemon({
          runDir,
          server: early === 'local' ? 'local' : { address: early.address, port: early.port },
          extraArgs: options.daemonArgs,
          env: options.daemonEnv,
          netns: net?.destination,
          onCleanup,
        });
      }
      const checkpoint = await checkpointWorkload({
        criu,
        runDir,
        workload: options.workload,
        timeouts: options.timeouts,
        progress,
        onCleanup,
        netns: net?.source,
        lazyDump:
          options.server === 'criu-dump'
            ? { address, port, extraArgs: options.dumpArgs }
            : // Relay: the dump serves on the source host's loopback only, where lazyd is its one client.
              relayDaemon
              ? { address: '127.0.0.1', port: relayPort, extraArgs: options.dumpArgs }
              : undefined,
        upload: staging ? { address, port: staging.port } : undefined,
        // A staged pagemap is lazyd's own: the is_stack() quirk of plain dumps does not apply. A relayed dump is
        // not dumped again for it either: its relay has started (a task without lazy pages is restored eagerly).
        requireLazy: staging || relayDaemon ? false : undefined,
        dumpAtPassBoundary: controls.length > 0,
        beforeDump: controls.length ? (w) => controls.forEach((name) => touchControl(w.dir, name)) : undefined,
      });

      const serverStart = performance.now();
      let server: PageServer | undefined;
      let source: { address: string; port: number } | 'local';
      let relayCommand: RelayCommand | undefined;
      if (options.server === 'lazyd-relay') {
        // The relay's pull runs while the images are copied and the restore runs; the copy waits for its status
        // byte (below): from then on the daemon serves the checkpoint.
        server = relayDaemon!.server;
        source = relayDaemon!.server;
        await options.beforeRestore?.(server, checkpoint);
      } else if (options.server === 'criu-dump') {
        source = checkpoint.dumpServer!;
        await options.onSource?.({ pid: checkpoint.dumpServer!.proc.pid, logFile: path.join(checkpoint.imagesDir, 'dump.log') });
      } else if (options.server === 'local') {
        source = 'local';
      } else if (staging || options.server === 'lazyd-staging') {
        server = staging!;
        source = staging!;
        // lazyd stages the upload when the dump hangs up after its CLOSE status, which may trail the dump's exit.
        const log = staging!.logFile;
        await pollFor(`lazyd to stage the upload (${log})`, 20_000, () => (/Staged checkpoint #\d+/.test(fs.readFileSync(log, 'utf8')) ? true : undefined));
        await options.beforeRestore?.(server, checkpoint);
      } else {
        progress?.(`starting the page server (${options.server}) on ${checkpoint.imagesDir}`);
        server = await startPageServer({
          ...options.serverOptions,
          kind: options.server,
          criuVersion: options.criuVersion,
          imagesDir: checkpoint.imagesDir,
          address,
          port: options.serverOptions?.port ?? port,
          netns: net?.source,
        });
        const started = server;
        onCleanup(() => started.kill());
        source = server;
        await options.onSource?.({ pid: server.pid, logFile: server.logFile });
        await options.beforeRestore?.(server, checkpoint);
      }
      const serverStartMs = performance.now() - serverStart;
      if (options.throttleBytesPerSecond && source !== 'local') {
        const relay = await startRelay(source, { throttle: { direction: 'to-client', bytesPerSecond: options.throttleBytesPerSecond } });
        onCleanup(() => relay.close());
        source = relay;
      }

      // The README's relay flow: the images go to the destination after `lazyd staging relay`'s status byte, by
      // which lazyd-link.json is in the dump's -D beside them (copied earlier, the restore would speak plain CRIU).
      if (relayReady) relayCommand = await relayReady;
      const restored = await lazyRestore({
        checkpoint,
        server: source,
        daemon,
        daemonArgs: options.daemonArgs,
        daemonEnv: options.daemonEnv,
        preStarted,
        onDaemonReady: options.onDaemonReady,
        passes: options.passes,
        checkSums: controls.length === 0,
        afterResume: controls.length ? (pid) => wakeWorkload(pid) : undefined,
        keepRunning: true, // killed below, after onRestored has looked at it
        timeouts: options.timeouts,
        progress,
        onCleanup,
        netns: net?.destination,
      });
      let serverExit: ExitInfo;
      let sourceFrozenMs = checkpoint.dumpMs;
      let relay: MigrationResult['relay'];
      if (relayDaemon && checkpoint.dumpServer) {
        // The relay ends when lazyd holds every page: the dump has its CLOSE, exits 0 and kills the originals.
        const done = await (relayCommand ?? (await relayReady!)).done();
        const m = RELAYED_RE.exec(done.line)!;
        relay = { line: done.line, ms: done.exit.ms, pages: Number(m[3]), bytes: Number(m[3]) * 4096 };
        const dumpExit = await checkpoint.dumpServer.finish();
        const dumpStart = performance.now() - Number(nowNs() - checkpoint.dumpStartNs) / 1e6;
        sourceFrozenMs = checkpoint.dumpServer.proc.startedAt + dumpExit.ms - dumpStart;
        serverExit = await relayDaemon.server.finish();
        await options.afterFinish?.(relayDaemon.server, checkpoint, restored);
      } else if (server) {
        serverExit = await server.finish();
        await options.afterFinish?.(server, checkpoint, restored);
      } else if (checkpoint.dumpServer) {
        serverExit = await checkpoint.dumpServer.finish();
        // The dump's start on the performance clock, from its realtime stamp.
        const dumpStart = performance.now() - Number(nowNs() - checkpoint.dumpStartNs) / 1e6;
        sourceFrozenMs = checkpoint.dumpServer.proc.startedAt + serverExit.ms - dumpStart;
      } else {
        serverExit = restored.lazyPagesExit;
      }
      await options.onRestored?.(restored, checkpoint);
      await restored.kill();
      return {
        criuVersion: options.criuVersion,
        server: options.server,
        daemon,
        mib: options.workload.mib,
        dataPages: checkpoint.dataPages,
        lazyPagesInImages: checkpoint.lazyPages,
        dumpAttempts: checkpoint.attempts,
        runDir,
        dumpMs: checkpoint.dumpMs,
        serverStartMs,
        copyMs: restored.copyMs,
        copiedBytes: restored.copiedBytes,
        daemonStartMs: restored.daemonStartMs,
        restoreMs: restored.restoreMs,
        pagesInstalledMs: restored.pagesInstalledMs,
        allPagesMs: restored.allPagesMs,
        verifyMs: restored.verifyMs,
        totalMs: performance.now() - started,
        lazyPages: restored.lazyPages,
        lazydTotals: restored.lazydTotals,
        passes: restored.passes,
        passesWhileLazy: restored.passesWhileLazy,
        sums: checkpoint.sums,
        resumeGapMs: restored.resumeGapMs,
        heartbeat: restored.heartbeat,
        serverExit,
        sourceFrozenMs,
        relay,
      };
    },
    options.keep,
  );
}

/** One line per figure, for logs and the demo. */
export function formatMigration(result: MigrationResult): string {
  const ms = (value: number) => `${value.toFixed(0)} ms`;
  const passes = result.passes.map((p) => p.length).reduce((a, b) => a + b, 0);
  return [
    `CRIU ${result.criuVersion}, source ${result.server}, daemon ${result.daemon}, ${result.mib} MiB (${result.dataPages} data pages)`,
    `dump ${ms(result.dumpMs)}, server start ${ms(result.serverStartMs)}, image copy ${ms(result.copyMs)}`,
    `resume (criu restore) ${ms(result.restoreMs)}, all pages installed ${ms(result.pagesInstalledMs)}, lazy-pages exited ${ms(result.allPagesMs)}`,
    `lazy pages installed ${result.lazyPages.copied}/${result.lazyPages.total}; clean passes: ${result.passesWhileLazy} while pages arrived, ${passes} after (verify ${ms(result.verifyMs)})`,
    `heartbeat: gap across the migration ${ms(result.resumeGapMs)}, after resume max ${result.heartbeat.maxGapMs.toFixed(1)} ms p99 ${result.heartbeat.p99GapMs.toFixed(1)} ms`,
  ].join('\n');
}
