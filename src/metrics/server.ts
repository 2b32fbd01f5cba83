// The /metrics HTTP listener (--metrics-address HOST:PORT): its own port, in the JavaScript event loop, never on
// the page-server port. Off unless asked for.
import http from 'node:http';
import type client from 'prom-client';
import type { Logger } from '../log.js';
import type { MetricsSources } from './registry.js';

export interface MetricsAddress {
  host: string;
  port: number;
}

/** "127.0.0.1:9101", "[::1]:9101", ":9101" or "9101" (all addresses). */
export function parseMetricsAddress(text: string): MetricsAddress {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d+)$/.exec(text) ?? /^()()(\d+)$/.exec(text);
  const port = match ? Number(match[3]) : NaN;
  if (!match || !Number.isInteger(port) || port > 65535) {
    throw new Error(`--metrics-address ${text}: expected HOST:PORT (e.g. 127.0.0.1:9101, [::1]:9101 or :9101 for all addresses)`);
  }
  return { host: match[1] ?? match[2] ?? '', port };
}

function shown(address: MetricsAddress): string {
  const host = address.host || '*';
  return `${host.includes(':') ? `[${host}]` : host}:${address.port}`;
}

/** Metrics never share the page server's port (CRIU's binary protocol is spoken there). */
export function refuseSamePort(address: MetricsAddress, pageServerPort: number | undefined): void {
  if (pageServerPort !== undefined && pageServerPort !== 0 && address.port === pageServerPort) {
    throw new Error(
      `--metrics-address ${shown(address)}: port ${address.port} is the page server's — metrics need a port of their own, pick another`,
    );
  }
}

export interface MetricsServer {
  /** The port it listens on (useful with port 0). */
  port: number;
  url: string;
  close(): Promise<void>;
}

/**
 * Listens on `address` and answers GET /metrics from the registry. `pageServerPort`: the page server's port —
 * the same port is refused (the page server speaks CRIU's binary protocol there).
 */
export async function startMetricsServer(
  address: MetricsAddress,
  registry: client.Registry,
  pageServerPort?: number,
): Promise<MetricsServer> {
  refuseSamePort(address, pageServerPort);
  const server = http.createServer((request, response) => {
    const url = (request.url ?? '/').split('?')[0];
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (url !== '/metrics') {
      response.writeHead(404, { 'content-type': 'text/plain' }).end('lazyd: metrics are at /metrics\n');
      return;
    }
    registry.metrics().then(
      (body) => response.writeHead(200, { 'content-type': registry.contentType }).end(body),
      (error) => response.writeHead(500, { 'content-type': 'text/plain' }).end(`lazyd: ${(error as Error).message}\n`),
    );
  });
  // Metrics must never keep the daemon alive by themselves.
  server.unref();
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => {
      const where = shown(address);
      const why =
        error.code === 'EADDRINUSE'
          ? 'the port is in use — stop the other server or pick another --metrics-address'
          : error.code === 'EACCES'
            ? 'permission denied — ports below 1024 need root or CAP_NET_BIND_SERVICE'
            : error.code === 'EADDRNOTAVAIL'
              ? 'no interface has this address — pass an address of this host'
              : error.message;
      reject(new Error(`cannot serve metrics on ${where}: ${why}`));
    });
    server.listen({ host: address.host || undefined, port: address.port }, () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  const host = address.host || '127.0.0.1';
  return {
    port,
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}/metrics`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/**
 * The metrics of a command: its registry over `sources`, served on `address` (see startMetricsServer), logged.
 * prom-client is loaded here, only when metrics are asked for: it costs ~0.1 s of start-up.
 */
export async function serveMetrics(
  address: MetricsAddress,
  sources: MetricsSources,
  logger: Logger,
  pageServerPort?: number,
): Promise<MetricsServer> {
  const { createMetricsRegistry } = await import('./registry.js');
  const server = await startMetricsServer(address, createMetricsRegistry(sources), pageServerPort);
  logger.info(`Metrics on ${server.url}`);
  return server;
}
