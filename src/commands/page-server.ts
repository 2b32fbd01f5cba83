// `lazyd --page-server` (a daemon: many sessions until SIGTERM) and `lazyd page-server --lazy-pages` (criu's
// drop-in: one session, exit 0 when it ends cleanly).
import path from 'node:path';
import { createLogger } from '../log.js';
import { signalStatusFd, writePidfile } from '../cli/process-control.js';
import { SystemdNotifier } from '../cli/systemd.js';
import { parseMetricsAddress, refuseSamePort, serveMetrics, type MetricsServer } from '../metrics/server.js';
import { PageServerService } from '../page-server/service.js';
import { startStagingControl, type StagingControlServer } from '../staging/control.js';
import { ensurePrivateDir } from '../staging/private-dir.js';
import type { Values } from '../config/flag.js';
import { PAGE_SERVER, PAGE_SERVER_DROPIN } from '../config/flags.js';
import { pageServerOptions, valuesProblem } from '../config/resolve.js';
import type { NativeAccessOptions, NativeTlsOptions } from '../native.js';
import { OPEN_ACCESS, accessOptionsFrom, listenPlan } from '../page-server/access.js';

export type PageServerValues = Values<typeof PAGE_SERVER.flags>;
export type PageServerDropinValues = Values<typeof PAGE_SERVER_DROPIN.flags>;

/** The flags' values (src/config/resolve.ts) of the daemon (serve) or of criu's drop-in (criu). */
export type PageServerCommandOptions = ({ mode: 'serve'; values: PageServerValues } | { mode: 'criu'; values: PageServerDropinValues }) & {
  /** --tls: every connection runs TLS (src/cli/tls-options.ts); undefined: plain TCP. */
  tls: NativeTlsOptions | undefined;
};

/** The session limits by the names a caller setting them by hand uses (the CLI checks every flag as it parses). */
export interface SessionLimitValues {
  maxSessions?: number;
  maxInflight?: number;
  maxSessionBytes?: number;
  maxRequestPages?: number;
  stallTimeoutSeconds?: number;
  idleTimeoutSeconds?: number;
}

/** The session limits' flags: one line naming the bad flag (as the flags' table checks it), or undefined. */
export function limitsError(limits: SessionLimitValues): string | undefined {
  const { stallTimeoutSeconds, idleTimeoutSeconds, maxSessions, maxInflight, maxSessionBytes, maxRequestPages } = limits;
  return valuesProblem(PAGE_SERVER.flags, {
    maxSessions,
    maxInflight,
    maxSessionBytes,
    maxRequestPages,
    stallTimeout: stallTimeoutSeconds,
    idleTimeout: idleTimeoutSeconds,
  });
}

export async function runPageServer(options: PageServerCommandOptions): Promise<number> {
  const { values } = options;
  const imagesDir = path.resolve(values.imagesDir);
  const workDir = path.resolve(values.workDir ?? imagesDir);
  const single = options.mode === 'criu';
  const staging = options.mode === 'serve' && options.values.staging ? options.values : undefined;
  const { logger, reopen } = createLogger({
    verbosity: values.verbosity,
    logFile: values.logFile,
    workDir,
    format: values.logFormat,
    autoFormat: single ? 'text' : 'tty',
  });
  const fail = (message: string) => {
    logger.error(message);
    if (values.logFile) process.stderr.write(`lazyd: ${message}\n`);
    return 1;
  };
  let metricsAddress;
  try {
    metricsAddress = values.metricsAddress !== undefined ? parseMetricsAddress(values.metricsAddress) : undefined;
    if (metricsAddress) refuseSamePort(metricsAddress, values.port);
  } catch (error) {
    return fail((error as Error).message);
  }

  // The daemon: loopback unless --address or --tls, and the allow-lists. The drop-in listens where criu does.
  let access: NativeAccessOptions = OPEN_ACCESS;
  let address = values.address ?? '';
  if (options.mode === 'serve') {
    try {
      access = accessOptionsFrom(options.values, options.tls !== undefined);
    } catch (error) {
      return fail((error as Error).message);
    }
    address = listenPlan(values.address, values.port, options.tls !== undefined, access).address;
  }

  if (staging) {
    const dir = path.resolve(staging.stagingDir ?? imagesDir);
    try {
      const outcome = ensurePrivateDir(dir, staging.stagingDir ? '--staging-dir' : '--staging-dir (here -D)');
      if (outcome.action === 'tightened') {
        logger.warn(
          `Staging directory ${dir} was mode ${outcome.fromMode.toString(8).padStart(4, '0')}: other users could enter it and read the staged images (process memory); lazyd set it to ${(outcome.fromMode & 0o7700).toString(8).padStart(4, '0')}`,
        );
      }
    } catch (error) {
      return fail((error as Error).message);
    }
  }

  let service: PageServerService;
  try {
    const { staging: _on, stagingMaxBytes, stagingRestores, ...limits } = pageServerOptions(single ? PAGE_SERVER_DROPIN : PAGE_SERVER, values);
    service = await PageServerService.start({
      ...limits,
      imagesDir,
      address,
      port: values.port,
      tls: options.tls,
      access,
      staging: staging && {
        dir: path.resolve(staging.stagingDir ?? imagesDir),
        persist: staging.persist,
        maxBytes: stagingMaxBytes,
        restores: stagingRestores,
        ttlSeconds: staging.stagingTtl,
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
        criuAbi: values.criuAbi,
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
  const controlSocket = options.mode === 'serve' ? options.values.controlSocket : undefined;
  if (controlSocket) {
    try {
      if (!service.stager) throw new Error('--control-socket controls staging: it needs the daemon form with staging on');
      control = await startStagingControl(path.resolve(controlSocket), service, logger);
    } catch (error) {
      const message = `--control-socket ${controlSocket}: ${(error as Error).message}`;
      service.stop(0);
      await service.stopped;
      await metrics?.close();
      return fail(message);
    }
  }

  const shown = address ? (address.includes(':') ? `[${address}]` : address) : '[::]';
  logger.info(`Using ${service.port} port`);
  if (options.mode === 'serve') {
    const { warning } = listenPlan(values.address, service.port, options.tls !== undefined, access);
    if (warning) logger.warn(warning);
  }
  if (!single) {
    process.stdout.write(
      `lazyd: page server listening on ${shown}:${service.port} — ${imagesDir}: ${service.summary.tasks} tasks, ` +
        `${service.summary.lazyPages} lazy pages` +
        (options.tls ? ' (TLS)' : '') +
        (service.stager ? `; staging uploads into ${path.resolve(staging?.stagingDir ?? imagesDir)}` : '') +
        (metrics ? `; metrics on ${metrics.url}` : '') +
        '\n',
    );
  }
  // Relative names live in the work dir, where criu chdir()s before writing them.
  if (values.pidfile) writePidfile(path.resolve(workDir, values.pidfile));
  signalStatusFd(values.statusFd);
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

  const drainMs = values.drainTimeout * 1000;
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
