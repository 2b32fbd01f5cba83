// `lazyd --page-server` (a daemon: many sessions until SIGTERM) and `lazyd page-server --lazy-pages` (criu's
// drop-in: one session, exit 0 when it ends cleanly).
import path from 'node:path';
import { createLogger, type LogFormatOption } from '../log.js';
import { signalStatusFd, writePidfile } from '../cli/process-control.js';
import { SystemdNotifier } from '../cli/systemd.js';
import { parseMetricsAddress, refuseSamePort, serveMetrics, type MetricsServer } from '../metrics/server.js';
import { PageServerService, type WireFormatOption } from '../page-server/service.js';
import { startStagingControl, type StagingControlServer } from '../staging/control.js';
import type { NativeTlsOptions } from '../cli/tls-options.js';

export interface PageServerCommandOptions {
  mode: 'serve' | 'criu';
  imagesDir: string;
  workDir?: string;
  address?: string;
  port?: number;
  statusFd?: number;
  pidfile?: string;
  logFile?: string;
  logFormat?: LogFormatOption;
  verbosity: number;
  /** --metrics-address HOST:PORT: Prometheus metrics on their own listener (off when undefined). */
  metricsAddress?: string;
  criuAbi?: string;
  maxSessions?: number;
  maxRequestPages?: number;
  stallTimeoutSeconds?: number;
  idleTimeoutSeconds?: number;
  maxInflight?: number;
  maxSessionBytes?: number;
  drainSeconds?: number;
  /** Serve mode: accept `criu dump --page-server` uploads (default true). */
  staging?: boolean;
  /** Where staged uploads' pagemap/pages images are written (default: the images dir). */
  stagingDir?: string;
  stagingMaxBytes?: number;
  stagingRestores?: number;
  stagingTtlSeconds?: number;
  persist?: boolean;
  /** Serve mode with staging: accept `list` / `release` commands on this unix socket (src/staging/control.ts). */
  controlSocket?: string;
  /** --tls: every connection runs TLS (src/cli/tls-options.ts). */
  tls?: NativeTlsOptions;
  /** --tls-handshake-timeout: a client that has not finished its handshake by then is dropped (default 10 s). */
  tlsHandshakeTimeoutSeconds?: number;
}

export { wireFormatFromAbi } from '../protocol/criu-abi.js';
import { wireFormatFromAbi } from '../protocol/criu-abi.js';

/** The session limits' flags: one line naming the bad flag, or undefined. */
export function limitsError(options: PageServerCommandOptions): string | undefined {
  const checks: Array<[string, number | undefined, number]> = [
    ['--max-sessions', options.maxSessions, 1],
    ['--max-inflight', options.maxInflight, 1],
    ['--max-session-bytes', options.maxSessionBytes, 1],
    ['--max-request-pages', options.maxRequestPages, 1],
    ['--stall-timeout', options.stallTimeoutSeconds, 1],
    ['--idle-timeout', options.idleTimeoutSeconds, 0],
  ];
  for (const [flag, value, min] of checks) {
    if (value !== undefined && !(Number.isInteger(value) && value >= min)) {
      return `${flag} ${value}: expected a whole number >= ${min}`;
    }
  }
  return undefined;
}

export async function runPageServer(options: PageServerCommandOptions): Promise<number> {
  const imagesDir = path.resolve(options.imagesDir);
  const workDir = path.resolve(options.workDir ?? imagesDir);
  const single = options.mode === 'criu';
  const { logger, reopen } = createLogger({
    verbosity: options.verbosity,
    logFile: options.logFile,
    workDir,
    format: options.logFormat,
    autoFormat: single ? 'text' : 'tty',
  });
  const fail = (message: string) => {
    logger.error(message);
    if (options.logFile) process.stderr.write(`lazyd: ${message}\n`);
    return 1;
  };
  let metricsAddress;
  try {
    metricsAddress = options.metricsAddress !== undefined ? parseMetricsAddress(options.metricsAddress) : undefined;
    if (metricsAddress) refuseSamePort(metricsAddress, options.port);
  } catch (error) {
    return fail((error as Error).message);
  }
  const badLimit = limitsError(options);
  if (badLimit) return fail(badLimit);

  let service: PageServerService;
  try {
    service = await PageServerService.start({
      imagesDir,
      address: options.address ?? '',
      port: options.port ?? (single ? 0 : 9876),
      format: wireFormatFromAbi(options.criuAbi),
      singleSession: single,
      maxSessions: options.maxSessions,
      maxRequestPages: options.maxRequestPages,
      stallTimeoutMs: (options.stallTimeoutSeconds ?? 30) * 1000,
      tls: options.tls,
      tlsHandshakeTimeoutMs: (options.tlsHandshakeTimeoutSeconds ?? 10) * 1000,
      idleTimeoutMs: (options.idleTimeoutSeconds ?? 300) * 1000,
      maxInflight: options.maxInflight,
      maxSessionBytes: options.maxSessionBytes,
      staging:
        single || options.staging === false
          ? undefined
          : {
              dir: path.resolve(options.stagingDir ?? imagesDir),
              persist: options.persist ?? false,
              maxBytes: options.stagingMaxBytes,
              restores: options.stagingRestores,
              ttlSeconds: options.stagingTtlSeconds,
            },
      logger,
    });
  } catch (error) {
    return fail((error as Error).message);
  }

  let metrics: MetricsServer | undefined;
  if (metricsAddress) {
    try {
      const sources = {
        role: 'page-server' as const,
        criuAbi: options.criuAbi ?? 'auto',
        pageServer: () => service.stats(),
        stagedCheckpoints: service.stager ? () => service.stagedCheckpoints().length : undefined,
      };
      metrics = await serveMetrics(metricsAddress, sources, logger, service.port);
    } catch (error) {
      service.stop(0);
      await service.stopped;
      return fail((error as Error).message);
    }
  }

  let control: StagingControlServer | undefined;
  if (options.controlSocket) {
    try {
      if (!service.stager) throw new Error('--control-socket controls staging: it needs the daemon form with staging on');
      control = await startStagingControl(path.resolve(options.controlSocket), service, logger);
    } catch (error) {
      const message = `--control-socket ${options.controlSocket}: ${(error as Error).message}`;
      service.stop(0);
      await service.stopped;
      await metrics?.close();
      return fail(message);
    }
  }

  const shown = options.address ? (options.address.includes(':') ? `[${options.address}]` : options.address) : '[::]';
  logger.info(`Using ${service.port} port`);
  if (!single) {
    process.stdout.write(
      `lazyd: page server listening on ${shown}:${service.port} — ${imagesDir}: ${service.summary.tasks} tasks, ` +
        `${service.summary.lazyPages} lazy pages` +
        (options.tls ? ' (TLS)' : '') +
        (service.stager ? `; staging uploads into ${path.resolve(options.stagingDir ?? imagesDir)}` : '') +
        (metrics ? `; metrics on ${metrics.url}` : '') +
        '\n',
    );
  }
  // Relative names live in the work dir, where criu chdir()s before writing them.
  if (options.pidfile) writePidfile(path.resolve(workDir, options.pidfile));
  signalStatusFd(options.statusFd);
  // systemd Type=notify: ready now; the status line follows the sessions.
  const systemd = new SystemdNotifier(logger);
  const statusText = () => {
    const s = service.stats();
    const staged = service.stager ? `, ${service.stagedCheckpoints().length} staged checkpoints` : '';
    return `serving on port ${service.port}: ${s.sessionsActive} sessions active, ${s.sessionsTotal} served${staged}`;
  };
  systemd.ready(statusText());
  const statusTimer = systemd.enabled ? setInterval(() => systemd.status(statusText()), 1000) : undefined;
  statusTimer?.unref();

  const drainMs = (options.drainSeconds ?? 10) * 1000;
  let draining = false;
  const onSignal = (signal: string) => {
    if (draining) return;
    draining = true;
    logger.info(`Got ${signal}: finishing the replies in flight, then exiting`);
    systemd.stopping(`draining: ${service.stats().sessionsActive} sessions finishing their replies`);
    service.stop(drainMs);
  };
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGHUP', () => reopen());

  const cleanEnd = await service.stopped;
  if (statusTimer) clearInterval(statusTimer);
  await control?.close();
  await metrics?.close();
  const stats = service.stats();
  logger.info(stats, 'Page server totals');
  // The daemon's exit status says whether it shut down cleanly; criu's drop-in form reports its one session.
  if (single) return cleanEnd && stats.sessionsTotal > 0 ? 0 : 1;
  return 0;
}
