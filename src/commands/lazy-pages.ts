// `lazyd lazy-pages`: the destination daemon that `criu restore --lazy-pages` hands its userfaultfds to (a
// drop-in for `criu lazy-pages`). The native fault engine does all the work on its own thread; this file loads
// the images, starts it, logs its events and exits with its result.
import fs from 'node:fs';
import path from 'node:path';
import { createLogger, type Logger } from '../log.js';
import { loadNative } from '../native.js';
import { loadCheckpoint } from '../images/index.js';
import { signalStatusFd, writePidfile } from '../cli/process-control.js';
import { engineTasks, formatFromImages } from '../lazy-pages/engine-config.js';
import { wireFormatFromAbi } from './page-server.js';

export interface LazyPagesCommandOptions {
  imagesDir: string;
  workDir?: string;
  pageServer: boolean;
  address?: string;
  port?: number;
  statusFd?: number;
  pidfile?: string;
  logFile?: string;
  verbosity: number;
  criuAbi?: string;
  stallTimeoutSeconds?: number;
}

interface EngineSummary {
  faults: number;
  pagesFault: number;
  pagesAround: number;
  pagesBackground: number;
  pagesZero: number;
  pagesExist: number;
  pagesDropped: number;
  pagesTotal: number;
  bytesReceived: number;
  seconds: number;
}

interface EngineEvent {
  type: string;
  pid: number;
  task: number;
  parentTask: number;
  message: string;
  summary: EngineSummary;
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
    case 'task':
      logger.info(`Task ${event.pid} handed over its userfaultfd`);
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
      logger.info(`Task ${event.pid} exited: ${summaryLine(event.summary)}`);
      break;
    case 'task-done':
      logger.info(`UFFD transferred pages for ${event.pid}: ${summaryLine(event.summary)}`);
      break;
    case 'warning':
      logger.warn(event.message);
      break;
    case 'done':
      logger.info(`Lazy pages done: ${summaryLine(event.summary)}`);
      break;
    case 'failed':
      logger.error(`Lazy pages failed: ${event.message}`);
      break;
  }
}

export async function runLazyPages(options: LazyPagesCommandOptions): Promise<number> {
  const imagesDir = path.resolve(options.imagesDir);
  const workDir = path.resolve(options.workDir ?? imagesDir);
  const { logger, reopen } = createLogger({ verbosity: options.verbosity, logFile: options.logFile, workDir });
  let openFds: number[] = [];
  const fail = (message: string) => {
    logger.error(message);
    if (options.logFile) process.stderr.write(`lazyd: ${message}\n`);
    return 1;
  };

  let engine: any;
  let finished!: Promise<EngineEvent>;
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
      stallTimeoutMs: (options.stallTimeoutSeconds ?? 30) * 1000,
      onEvent: (event: EngineEvent) => {
        logEvent(logger, event);
        if (event.type === 'done' || event.type === 'failed') resolveFinished(event);
      },
    });
    engine.start();
  } catch (error) {
    for (const fd of openFds) fs.closeSync(fd);
    return fail((error as Error).message);
  }

  if (options.pidfile) writePidfile(path.resolve(workDir, options.pidfile));
  signalStatusFd(options.statusFd);
  process.on('SIGHUP', () => reopen());
  const onSignal = (signal: string) => {
    logger.warn(`Got ${signal}: stopping; pages not yet installed are lost to the restored tasks`);
    engine.stop();
    process.exit(1);
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));

  const end = await finished;
  if (end.type === 'done') {
    process.stderr.write(`lazyd lazy-pages: ${summaryLine(end.summary)}\n`);
    return 0;
  }
  return fail(`lazy-pages failed: ${end.message || engine.error()}`);
}
