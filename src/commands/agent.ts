// `lazyd agent --listen HOST:PORT`: the destination's long-running service for `lazyd migrate` (systemd
// Type=notify: READY=1 once listening, STATUS= with the migrations running; packaging/lazyd-agent.service).
// Each migration runs in src/agent/session.ts; SIGTERM stops accepting and waits for the running ones.
import fs from 'node:fs';
import path from 'node:path';
import { createLogger } from '../log.js';
import { loadNative } from '../native.js';
import { SystemdNotifier } from '../cli/systemd.js';
import { signalStatusFd, writePidfile } from '../cli/process-control.js';
import { AgentServer } from '../agent/server.js';
import { ReplicaStore } from '../agent/replica.js';
import { criuFeature, probeCriu } from '../migrate/criu-host.js';
import { nodeTlsOptions, tlsArgv } from '../migrate/node-tls.js';
import { parseHostPort } from './migrate.js';
import { parseMetricsAddress, serveMetrics, type MetricsServer } from '../metrics/server.js';
import type { Values } from '../config/flag.js';
import { AGENT } from '../config/flags.js';

export type AgentValues = Values<typeof AGENT.flags>;

/** Why this host cannot run `criu restore --lazy-pages` with a lazy-pages daemon, or null. */
function uffdProblem(criu: string): string | null {
  const probe = loadNative().probeHost().uffd;
  if (probe.syscallErrno !== 0 && probe.deviceErrno !== 0) {
    return 'userfaultfd is not usable (neither the syscall nor /dev/userfaultfd) — see `lazyd check` on the destination';
  }
  const noncoop = criuFeature(criu, 'uffd-noncoop');
  return noncoop === undefined ? null : `\`criu check --feature uffd-noncoop\` fails: ${noncoop}`;
}

export async function runAgent(values: AgentValues): Promise<number> {
  const { logger } = createLogger({ verbosity: values.verbosity, logFile: values.logFile, workDir: process.cwd(), format: values.logFormat, autoFormat: 'tty' });
  const fail = (message: string) => {
    logger.error(message);
    if (values.logFile) process.stderr.write(`lazyd agent: ${message}\n`);
    return 1;
  };
  let server: AgentServer;
  let metrics: MetricsServer | undefined;
  let allEnded: (() => void) | undefined;
  try {
    const listen = parseHostPort(values.listen!, '--listen');
    const tls = nodeTlsOptions(values);
    const criu = probeCriu(values.criu);
    const stateDir = path.resolve(values.stateDir);
    fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    const problem = uffdProblem(values.criu);
    if (problem) logger.warn(`this host cannot restore lazily: ${problem}; every migration will be refused`);
    if (!tls && !/^(127\.|::1$|localhost$)/.test(listen.host)) {
      logger.warn(`listening on ${listen.host} without --tls: anyone who reaches the port can have this host restore a process as root`);
    }
    const metricsAddress = values.metricsAddress !== undefined ? parseMetricsAddress(values.metricsAddress) : undefined;
    const host = {
      criuPath: criu.path,
      criuVersion: criu.version,
      pageSize: loadNative().pageSize,
      uffdProblem: problem,
      workDir: stateDir,
      lazyPagesTlsArgs: tlsArgv(values),
      preRestoreHook: values.preRestoreHook,
      keepDirs: values.keep,
    };
    const replicas = new ReplicaStore({ ...host, replicaCapBytes: values.replicaCap * 1048576, failoverAfterMs: 0 }, logger);
    server = new AgentServer({
      address: listen.host,
      port: listen.port,
      tls,
      logger,
      host,
      replicas,
      onChange: (sessions) => {
        systemd.status(statusText(sessions.size));
        if (sessions.size === 0) allEnded?.();
      },
    });
    const port = await server.listen();
    if (metricsAddress) {
      metrics = await serveMetrics(metricsAddress, { role: 'agent', criuAbi: 'auto', standby: { counters: () => replicas.counters, replicas: () => replicas.summaries() } }, logger, port);
    }
    logger.info(`Listening on ${listen.host}:${port}${tls ? ' (mutual TLS)' : ''}; CRIU ${criu.version} (${criu.path}); migrations in ${stateDir}`);
    process.stdout.write(`${port}\n`);
  } catch (error) {
    return fail((error as Error).message);
  }
  const statusText = (running: number) => `${running} migration${running === 1 ? '' : 's'} running`;
  const systemd = new SystemdNotifier(logger);
  writePidfile(values.pidfile ? path.resolve(values.pidfile) : undefined);
  signalStatusFd(values.statusFd);
  systemd.ready(statusText(0));
  await new Promise<void>((resolve) => {
    const stop = (signal: string) => {
      systemd.stopping(`stopped by ${signal}`);
      logger.info(`Got ${signal}: no new migrations; waiting for ${server.sessions.size} running`);
      void server.close();
      void metrics?.close();
      allEnded = resolve;
      if (server.sessions.size === 0) resolve();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  return 0;
}
