// `lazyd lazy-pages`: the destination daemon that `criu restore --lazy-pages` hands its userfaultfds to (a
// drop-in for `criu lazy-pages`). The native fault engine does all the work on its own thread; this file loads
// the images, starts it, logs its events and exits with its result.
//
// Failure policy (--on-failure, default kill): when the engine fails (page server killed or stalled past
// --stall-timeout, restore broken or silent past the hand-over / --rstf-timeout limits) the restored tasks' lazy
// memory can never be completed. lazyd then SIGKILLs them (the handed-over tasks, by the pids their hand-overs'
// credentials carried, and every descendant of theirs), logs ONE error line with the cause and the killed pids,
// and exits 1. The same happens on SIGTERM/SIGINT before every page is in. `keep` leaves them running as criu
// does: every page never installed then reads as zeros (see src/lazy-pages/restored-tasks.ts).
import fs from 'node:fs';
import path from 'node:path';
import { createLogger, type LogFormatOption, type Logger } from '../log.js';
import { loadNative } from '../native.js';
import { SystemdNotifier } from '../cli/systemd.js';
import type { EngineCounters } from '../metrics/registry.js';
import { parseMetricsAddress, serveMetrics, type MetricsServer } from '../metrics/server.js';
import { RestoreProgress } from '../lazy-pages/progress.js';
import { stderrLine } from '../terminal-line.js';
import { loadCheckpoint } from '../images/index.js';
import { signalStatusFd, writePidfile } from '../cli/process-control.js';
import { engineTasks, formatFromImages } from '../lazy-pages/engine-config.js';
import { latencyLine } from '../lazy-pages/latency.js';
import { wireFormatFromAbi } from '../protocol/criu-abi.js';
import type { NativeTlsOptions } from '../cli/tls-options.js';
import { FAILURE_POLICIES, hostPidOf, RestoredTasks, type FailurePolicy } from '../lazy-pages/restored-tasks.js';

/**
 * The background drain under TLS: every byte in flight is encrypted by the server and decrypted here before the
 * reply behind it can start, so a fault queued behind 2 MiB of drain waits for all of that work. Smaller drain
 * requests and less drain in flight (the engine's defaults are 1 MiB requests, 2 MiB / 256 KiB in flight) kept
 * faults shorter without slowing the transfer (512 MiB, 3 runs each: fault p50 <= 500-1000 us instead of
 * <= 1000-5000 us, all pages present 1.4-2.4 s instead of 2.2-4.2 s; bench/tls.ts measures the result).
 */
const TLS_DRAIN = { bgMaxBytes: 512 * 1024, bgInFlightBytes: 1024 * 1024, bgInFlightBytesFaulting: 128 * 1024 };

/** RSTF must follow the last hand-over within this (criu waits forever). */
export const DEFAULT_RSTF_TIMEOUT_SECONDS = 60;

export interface LazyPagesCommandOptions {
  imagesDir: string;
  workDir?: string;
  pageServer: boolean;
  address?: string;
  port?: number;
  statusFd?: number;
  pidfile?: string;
  logFile?: string;
  logFormat?: LogFormatOption;
  verbosity: number;
  /** --metrics-address HOST:PORT (off when undefined). */
  metricsAddress?: string;
  /** Keep serving /metrics this long after the restore ended, so a scrape sees the final totals. */
  metricsLingerSeconds?: number;
  criuAbi?: string;
  stallTimeoutSeconds?: number;
  /** What happens to the restored tasks when the engine fails: kill (default) or keep. Env LAZYD_ON_FAILURE. */
  onFailure?: FailurePolicy;
  /** Seconds allowed between the last task hand-over and RSTF (default 60; 0: no limit). Env LAZYD_RSTF_TIMEOUT. */
  rstfTimeoutSeconds?: number;
  /** --tls: the connection to the page server runs TLS (src/cli/tls-options.ts). */
  tls?: NativeTlsOptions;
}

/** Options not given on the command line fall back to the environment (LAZYD_ON_FAILURE, LAZYD_RSTF_TIMEOUT). */
function resolvePolicy(options: LazyPagesCommandOptions): { onFailure: FailurePolicy; rstfTimeoutSeconds: number } {
  const policy = options.onFailure ?? process.env.LAZYD_ON_FAILURE ?? 'kill';
  if (!(FAILURE_POLICIES as readonly string[]).includes(policy)) {
    throw new Error(`--on-failure must be one of ${FAILURE_POLICIES.join(', ')}, not ${JSON.stringify(policy)}`);
  }
  const envRstf = process.env.LAZYD_RSTF_TIMEOUT;
  const rstf = options.rstfTimeoutSeconds ?? (envRstf !== undefined && envRstf !== '' ? Number(envRstf) : DEFAULT_RSTF_TIMEOUT_SECONDS);
  if (!Number.isFinite(rstf) || rstf < 0) throw new Error(`--rstf-timeout must be a number of seconds >= 0, not ${envRstf}`);
  return { onFailure: policy as FailurePolicy, rstfTimeoutSeconds: rstf };
}

type EngineSummary = EngineCounters['summary'];

interface EngineEvent {
  type: string;
  pid: number;
  hostPid?: number;
  task: number;
  parentTask: number;
  message: string;
  summary: EngineSummary;
}

/** The fields of the restore's end line (JSON logs carry them as they are). */
function summaryFields(s: EngineSummary, result: 'ok' | 'failed') {
  return {
    pages: s.pagesFault + s.pagesAround + s.pagesBackground,
    lazyPages: s.pagesTotal,
    zeroPages: s.pagesZero,
    dropped: s.pagesDropped,
    faults: s.faults,
    bytes: s.bytesReceived,
    seconds: Number(s.seconds.toFixed(3)),
    result,
  };
}

/** Pages a task got (installed, or already present), for the criu-style "UFFD transferred pages: (N/M)" line. */
function transferred(s: EngineSummary): string {
  return `(${s.pagesFault + s.pagesAround + s.pagesBackground + s.pagesExist}/${s.pagesTotal})`;
}

export function summaryLine(s: EngineSummary): string {
  const installed = s.pagesFault + s.pagesAround + s.pagesBackground;
  return (
    `${installed} pages installed (on demand ${s.pagesFault} / near faults ${s.pagesAround} / background ` +
    `${s.pagesBackground}), ${s.pagesZero} zero pages, ${s.pagesDropped} dropped, of ${s.pagesTotal} lazy; ` +
    `${s.faults} faults; ${s.bytesReceived} bytes in ${s.seconds.toFixed(3)} s`
  );
}

function logEvent(logger: Logger, event: EngineEvent): void {
  switch (event.type) {
    case 'listening':
      logger.info(`Listening on ${event.message}`);
      break;
    case 'restore-connected':
      logger.info('Restore connected');
      break;
    case 'task': {
      const hostPid = hostPidOf(event);
      logger.info(`Task ${event.pid} handed over its userfaultfd` + (hostPid ? ` (pid ${hostPid} here)` : ''));
      break;
    }
      break;
    case 'zombie':
      logger.info(`Zombie ${event.pid}`);
      break;
    case 'restore-finished':
      logger.info('Restore finished (RSTF)');
      break;
    case 'source-connected':
      logger.info(`Pages come from ${event.message}`);
      break;
    case 'fork':
      logger.info(`Task ${event.pid} forked: child task ${event.task}`);
      break;
    case 'task-exited':
      logger.info(`Task ${event.pid} exited: UFFD transferred pages: ${transferred(event.summary)}; ${summaryLine(event.summary)}`);
      break;
    case 'task-done':
      // criu's wording and numbers, so tools reading criu's lazy-pages log read this one too.
      logger.info(`UFFD transferred pages: ${transferred(event.summary)} task ${event.pid}: ${summaryLine(event.summary)}`);
      break;
    case 'warning':
      logger.warn(event.message);
      break;
    case 'done':
      logger.info(summaryFields(event.summary, 'ok'), `Lazy pages done: ${summaryLine(event.summary)}`);
      break;
    case 'failed':
      // Logged once, with what was done to the restored tasks, by runLazyPages().
      break;
  }
}

export async function runLazyPages(options: LazyPagesCommandOptions): Promise<number> {
  const imagesDir = path.resolve(options.imagesDir);
  const workDir = path.resolve(options.workDir ?? imagesDir);
  const { logger, reopen } = createLogger({
    verbosity: options.verbosity,
    logFile: options.logFile,
    workDir,
    format: options.logFormat,
    autoFormat: 'text',
  });
  let openFds: number[] = [];
  let progress: RestoreProgress | undefined;
  const fail = (message: string, fields?: object) => {
    progress?.stop();
    if (fields) logger.error(fields, message);
    else logger.error(message);
    if (options.logFile) process.stderr.write(`lazyd: ${message}\n`);
    return 1;
  };
  let metricsAddress;
  try {
    metricsAddress = options.metricsAddress !== undefined ? parseMetricsAddress(options.metricsAddress) : undefined;
  } catch (error) {
    return fail((error as Error).message);
  }

  let engine: any;
  let finished!: Promise<EngineEvent>;
  const restored = new RestoredTasks();
  let policy: ReturnType<typeof resolvePolicy>;
  try {
    policy = resolvePolicy(options);
  } catch (error) {
    return fail((error as Error).message);
  }
  try {
    if (options.pageServer && (!options.address || !options.port)) {
      return fail('--page-server needs --address and --port of the page server (the source host)');
    }
    const checkpoint = await loadCheckpoint(imagesDir);
    const config = engineTasks(checkpoint, !options.pageServer);
    openFds = config.openFds;
    const format = wireFormatFromAbi(options.criuAbi) ?? formatFromImages(checkpoint) ?? 24;
    logger.info(
      `Loaded ${imagesDir}: ${config.nrTasks} tasks, ${config.lazyPages} lazy pages` +
        (options.pageServer ? `, page server ${options.address}:${options.port} (${format}-byte headers)` : ', local'),
    );
    const addon = loadNative();
    if (options.tls && options.pageServer) {
      const notes: string = addon.tlsCheck(options.tls);
      if (notes) logger.info(`TLS: ${notes}`);
    }
    let resolveFinished!: (event: EngineEvent) => void;
    finished = new Promise((resolve) => (resolveFinished = resolve));
    engine = new addon.LazyPages({
      workDir,
      nrTasks: config.nrTasks,
      tasks: config.tasks,
      source: options.pageServer ? 'remote' : 'local',
      address: options.address,
      port: options.port,
      format,
      tls: options.pageServer ? options.tls : undefined,
      ...(options.pageServer && options.tls ? TLS_DRAIN : {}),
      stallTimeoutMs: (options.stallTimeoutSeconds ?? 30) * 1000,
      rstfTimeoutMs: policy.rstfTimeoutSeconds * 1000,
      onEvent: (event: EngineEvent) => {
        if (event.type === 'task') restored.add(event.pid, hostPidOf(event));
        logEvent(logger, event);
        // The drain starts at RSTF: show the line now, whatever the poll's phase (a small restore is quick).
        if (event.type === 'restore-finished') progress?.drawNow();
        if (event.type === 'done' || event.type === 'failed') resolveFinished(event);
      },
    });
    engine.start();
  } catch (error) {
    for (const fd of openFds) fs.closeSync(fd);
    return fail((error as Error).message);
  }

  let metrics: MetricsServer | undefined;
  if (metricsAddress) {
    try {
      metrics = await serveMetrics(
        metricsAddress,
        { role: 'lazy-pages', criuAbi: options.criuAbi ?? 'auto', lazyPages: () => engine.stats() as EngineCounters },
        logger,
      );
    } catch (error) {
      engine.stop();
      return fail((error as Error).message);
    }
  }
  const systemd = new SystemdNotifier(logger);
  const statusText = () => {
    const s = engine.stats() as EngineCounters;
    if (s.state === 'waiting-restore') return 'waiting for criu restore --lazy-pages';
    if (s.state === 'handshake') return `restore connected: ${s.tasksTotal} tasks handed over`;
    const present = s.summary.pagesTotal - s.pagesRemaining - s.pagesInFlight;
    return `restoring: ${present}/${s.summary.pagesTotal} lazy pages present, ${s.summary.faults} faults, ${s.tasksActive} tasks active`;
  };
  const statusTimer = systemd.enabled ? setInterval(() => systemd.status(statusText()), 1000) : undefined;
  statusTimer?.unref();
  // On a terminal: one live line with the restore's progress.
  progress = new RestoreProgress(
    stderrLine,
    () => {
      const s = engine.stats() as EngineCounters;
      if (s.state === 'waiting-restore' || s.state === 'handshake' || s.state === 'failed') return undefined;
      return { present: s.summary.pagesTotal - s.pagesRemaining - s.pagesInFlight, total: s.summary.pagesTotal, atMs: performance.now() };
    },
    loadNative().pageSize,
  );
  progress.start();

  if (options.pidfile) writePidfile(path.resolve(workDir, options.pidfile));
  signalStatusFd(options.statusFd);
  systemd.ready(statusText());
  process.on('SIGHUP', () => reopen());
  // Applies the failure policy to the restored tasks and returns the words for the one error line.
  const applyPolicy = (): string => {
    if (restored.size === 0 && restored.unknown.length === 0) return 'no task had been handed over';
    const unknown = restored.unknown.length ? ` (tasks ${restored.unknown.join(', ')} came without credentials: not killed)` : '';
    if (policy.onFailure === 'keep') {
      return `restored tasks left running with their missing pages reading as zeros (--on-failure keep): ${restored.describe()}`;
    }
    const killed = restored.killAll();
    return (killed.length ? `killed the restored tasks (SIGKILL): pids ${killed.join(', ')}` : 'the restored tasks were already gone') + unknown;
  };
  const onSignal = (signal: string) => {
    const state = engine.stats?.().state;
    if (state === 'done') process.exit(0);
    const what = applyPolicy();
    progress?.stop();
    systemd.stopping(`stopped by ${signal}`);
    logger.error(`Got ${signal} before every lazy page was installed; ${what}`);
    engine.stop();
    process.exit(1);
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));

  const end = await finished;
  progress.stop();
  if (statusTimer) clearInterval(statusTimer);
  const linger = async () => {
    // A scraper polling every few seconds still sees the final totals.
    if (metrics && (options.metricsLingerSeconds ?? 0) > 0) {
      await new Promise((resolve) => setTimeout(resolve, options.metricsLingerSeconds! * 1000));
    }
    await metrics?.close();
  };
  if (end.type === 'done') {
    const latency = latencyLine(engine.stats());
    logger.info(`Lazy pages ${latency}`);
    systemd.stopping(`done: ${summaryLine(end.summary)}`);
    process.stderr.write(`lazyd lazy-pages: ${summaryLine(end.summary)}\nlazyd lazy-pages: ${latency}\n`);
    await linger();
    return 0;
  }
  // One line: the cause, and what was done about the restored tasks (their memory can never be completed).
  const message = `lazy-pages failed: ${end.message || engine.error()}; ${applyPolicy()}`;
  systemd.stopping(message);
  const code = fail(message, summaryFields(end.summary, 'failed'));
  await linger();
  return code;
}
