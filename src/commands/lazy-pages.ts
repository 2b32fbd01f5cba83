// `lazyd lazy-pages`: the destination daemon that `criu restore --lazy-pages` hands its userfaultfds to (a
// drop-in for `criu lazy-pages`). The native fault engine does all the work on its own thread; this file starts
// it (listening before any image is read), loads the images when the restore connects, logs its events and exits
// with its result.
//
// Failure policy (--on-failure, default kill): when the engine fails (page server killed or stalled past
// --stall-timeout, restore broken or silent past the hand-over / --rstf-timeout limits) the restored tasks' lazy
// memory can never be completed. lazyd then SIGKILLs them (the handed-over tasks, by the pids their hand-overs'
// credentials carried, and every descendant of theirs), logs ONE error line with the cause and the killed pids,
// and exits 1. The same happens on SIGTERM/SIGINT before every page is in. `keep` leaves them running as criu
// does: every page never installed then reads as zeros (see src/lazy-pages/restored-tasks.ts).
import fs from 'node:fs';
import path from 'node:path';
import { LINK_VERSION, linkFilePath, linkMatchesImages, readLinkCapability } from '../link/capability-file.js';
import { createDeferredLogger, type Logger } from '../log-core.js';
import { loadNative, type EngineSummary, type LazyPages, type LazyPagesEvent, type NativeTlsOptions } from '../native.js';
import { SystemdNotifier } from '../cli/systemd.js';
import type { MetricsAddress, MetricsServer } from '../metrics/server.js';
import { RestoreProgress } from '../lazy-pages/progress.js';
import { stderrLine } from '../terminal-line.js';
import { loadCheckpoint } from '../images/index.js';
import { signalStatusFd, writePidfile } from '../cli/process-control.js';
import { engineTasks, formatFromImages } from '../lazy-pages/engine-config.js';
import { latencyLine } from '../lazy-pages/latency.js';
import { hostPidOf, RestoredTasks } from '../lazy-pages/restored-tasks.js';
import { ImagePreloader } from '../lazy-pages/image-preload.js';
import type { Values } from '../config/flag.js';
import { LAZY_PAGES } from '../config/flags.js';
import { lazyPagesOptions } from '../config/resolve.js';

/** The flags' values (src/config/resolve.ts): --on-failure and --rstf-timeout fall back to LAZYD_ON_FAILURE and
 * LAZYD_RSTF_TIMEOUT; with --tls to a page server the drain's flags default to their TLS values. */
export type LazyPagesValues = Values<typeof LAZY_PAGES.flags>;

export interface LazyPagesCommandOptions {
  values: LazyPagesValues;
  /** --tls: the connection to the page server runs TLS (src/cli/tls-options.ts); undefined: plain. */
  tls: NativeTlsOptions | undefined;
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
    copyBytes: s.copyBytes,
    copyMs: Number((s.copyNs / 1e6).toFixed(1)),
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
    `${s.faults} faults; ${s.bytesReceived} bytes in ${s.seconds.toFixed(3)} s; UFFDIO_COPY ${s.copyBytes} bytes in ` +
    `${(s.copyNs / 1e6).toFixed(1)} ms`
  );
}

function logEvent(logger: Logger, event: LazyPagesEvent): void {
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

/** How long after RSTF (the restored tasks run) pino is loaded: past the downtime and the restore's exit. */
const LOGGER_LOAD_DELAY_MS = 1000;

export async function runLazyPages(options: LazyPagesCommandOptions): Promise<number> {
  const { values } = options;
  const imagesDir = path.resolve(values.imagesDir);
  const workDir = path.resolve(values.workDir ?? imagesDir);
  // Deferred: pino is loaded once the restored tasks run (src/log-core.ts), not before or during the restore.
  const { logger, reopen, load: loadLogger } = createDeferredLogger({
    verbosity: values.verbosity,
    logFile: values.logFile,
    workDir,
    format: values.logFormat,
    autoFormat: 'text',
  });
  let openFds: number[] = [];
  let progress: RestoreProgress | undefined;
  const fail = (message: string, fields?: object) => {
    progress?.stop();
    if (fields) logger.error(fields, message);
    else logger.error(message);
    if (values.logFile) process.stderr.write(`lazyd: ${message}\n`);
    return 1;
  };
  // The metrics' modules (node:http, prom-client) are loaded only when metrics are asked for.
  const metricsModule = values.metricsAddress !== undefined ? await import('../metrics/server.js') : undefined;
  let metricsAddress: MetricsAddress | undefined;
  try {
    metricsAddress = metricsModule?.parseMetricsAddress(values.metricsAddress!);
  } catch (error) {
    return fail((error as Error).message);
  }

  let engine!: LazyPages;
  let loadLoggerAfterRestore: () => void = () => undefined;
  // The engine's end, or an image error at hand-over (the daemon then exits with that one line).
  let finished!: Promise<LazyPagesEvent | { imageError: string }>;
  let resolveFinished!: (end: LazyPagesEvent | { imageError: string }) => void;
  finished = new Promise((resolve) => (resolveFinished = resolve));
  const restored = new RestoredTasks();
  // The images are read only when the restore hands over (docs/protocol.md §3.2): the daemon can be started
  // before the dump has written them. The hand-overs wait in the socket meanwhile; the header format and
  // --page-server's settings are decided here (--criu-abi still overrides the images).
  // What the hand-over needs from the images; read ahead of it when they are there (src/lazy-pages/image-preload.ts).
  const readImages = async () => {
    const checkpoint = await loadCheckpoint(imagesDir);
    // The lazyd link (docs/protocol.md §7): only a lazyd page server writes lazyd-link.json into the images.
    const link = values.pageServer && values.link !== 'stock' ? await readLinkCapability(imagesDir) : null;
    // The engine's tasks too (remote: no file is opened for them): at hand-over nothing is left to compute.
    const config = values.pageServer ? engineTasks(checkpoint, false) : undefined;
    return { checkpoint, link, linkMatches: link ? linkMatchesImages(link, imagesDir) : false, config };
  };
  const preloader = new ImagePreloader(imagesDir, readImages, ({ checkpoint }) =>
    logger.debug(`Read ${imagesDir} ahead of the restore: ${checkpoint.tasks.length} tasks`),
  );
  const handOver = async () => {
    try {
      const ahead = await preloader.take();
      const images = ahead ?? (await readImages());
      const { checkpoint } = images;
      const config = images.config ?? engineTasks(checkpoint, !values.pageServer);
      openFds = config.openFds;
      const format = flagOptions.format || formatFromImages(checkpoint) || 24;
      let link = images.link;
      if (link && !images.linkMatches) {
        logger.warn(`${linkFilePath(imagesDir)} was written for an earlier dump (its inventory is not this one's): ignored; the pages come with CRIU's bytes only. Remove the file`);
        link = null;
      }
      if (link && link.version !== LINK_VERSION) {
        throw new Error(`${linkFilePath(imagesDir)}: link version ${link.version}, this lazyd speaks ${LINK_VERSION}: run the same lazyd release on both ends, or restore with --link stock`);
      }
      logger.info(
        `Loaded ${imagesDir}${ahead ? ' (read ahead of the restore)' : ''}: ${config.nrTasks} tasks, ${config.lazyPages} lazy pages` +
          (values.pageServer ? `, page server ${values.address}:${values.port} (${format}-byte headers${link ? ', lazyd link' : ''})` : ', local'),
      );
      engine.setTasks({ nrTasks: config.nrTasks, tasks: config.tasks, format, ...(link ? { linkToken: link.token } : {}) });
    } catch (error) {
      // Nothing was handed over to a running task yet: criu restore fails when this daemon goes away.
      engine.stop();
      for (const fd of openFds) fs.closeSync(fd);
      openFds = [];
      resolveFinished({ imageError: (error as Error).message });
    }
  };
  let flagOptions!: ReturnType<typeof lazyPagesOptions>;
  try {
    if (values.pageServer && (!values.address || !values.port)) {
      return fail('--page-server needs --address and --port of the page server (the source host)');
    }
    flagOptions = lazyPagesOptions(LAZY_PAGES, values);
    const addon = loadNative();
    const tls = values.pageServer ? options.tls : undefined;
    if (tls) {
      const notes = addon.tlsCheck(tls);
      if (notes) logger.info(`TLS: ${notes}`);
    }
    const { format: _format, ...engineFlags } = flagOptions;
    void _format;
    engine = new addon.LazyPages({
      ...engineFlags,
      workDir,
      deferTasks: true,
      source: values.pageServer ? 'remote' : 'local',
      address: values.address,
      port: values.port,
      tls,
      onEvent: (event) => {
        if (event.type === 'task') restored.add(event.pid, hostPidOf(event));
        logEvent(logger, event);
        if (event.type === 'restore-connected') void handOver();
        // The drain starts at RSTF: show the line now, whatever the poll's phase (a small restore is quick).
        if (event.type === 'restore-finished') progress?.drawNow();
        if (event.type === 'restore-finished' || event.type === 'done' || event.type === 'failed') loadLoggerAfterRestore();
        if (event.type === 'done' || event.type === 'failed') resolveFinished(event);
      },
    });
    engine.start();
  } catch (error) {
    return fail((error as Error).message);
  }

  let metrics: MetricsServer | undefined;
  if (metricsModule && metricsAddress) {
    try {
      metrics = await metricsModule.serveMetrics(
        metricsAddress,
        { role: 'lazy-pages', criuAbi: values.criuAbi, lazyPages: () => engine.stats() },
        logger,
      );
    } catch (error) {
      engine.stop();
      return fail((error as Error).message);
    }
  }
  const systemd = new SystemdNotifier(logger);
  const statusText = () => {
    const s = engine.stats();
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
      const s = engine.stats();
      if (s.state === 'waiting-restore' || s.state === 'handshake' || s.state === 'failed') return undefined;
      return { present: s.summary.pagesTotal - s.pagesRemaining - s.pagesInFlight, total: s.summary.pagesTotal, atMs: performance.now() };
    },
    loadNative().pageSize,
  );
  progress.start();

  if (values.pidfile) writePidfile(path.resolve(workDir, values.pidfile));
  signalStatusFd(values.statusFd);
  systemd.ready(statusText());
  // After the status byte: reading the images ahead is never part of the daemon's start-up time.
  preloader.start();
  // pino is loaded once the restored tasks run (until then lines are written in its shape, src/log-core.ts):
  // loading it costs 15-50 ms of CPU, which right after the status byte would compete with the criu restore
  // that starts then, inside the downtime.
  loadLoggerAfterRestore = () => {
    loadLoggerAfterRestore = () => undefined;
    setTimeout(() => loadLogger().catch((error) => process.stderr.write(`lazyd: cannot load the logger: ${(error as Error).message}\n`)), LOGGER_LOAD_DELAY_MS).unref();
  };
  process.on('SIGHUP', () => reopen());
  // Applies the failure policy to the restored tasks and returns the words for the one error line.
  const applyPolicy = (): string => {
    if (restored.size === 0 && restored.unknown.length === 0) return 'no task had been handed over';
    const unknown = restored.unknown.length ? ` (tasks ${restored.unknown.join(', ')} came without credentials: not killed)` : '';
    if (values.onFailure === 'keep') {
      return `restored tasks left running with their missing pages reading as zeros (--on-failure keep): ${restored.describe()}`;
    }
    const killed = restored.killAll();
    return (killed.length ? `killed the restored tasks (SIGKILL): pids ${killed.join(', ')}` : 'the restored tasks were already gone') + unknown;
  };
  const onSignal = (signal: string) => {
    const state = engine.stats().state;
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
  if ('imageError' in end) {
    systemd.stopping(end.imageError);
    const code = fail(end.imageError);
    await metrics?.close();
    return code;
  }
  const linger = async () => {
    // A scraper polling every few seconds still sees the final totals.
    if (metrics && values.metricsLinger > 0) {
      await new Promise((resolve) => setTimeout(resolve, values.metricsLinger * 1000));
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
