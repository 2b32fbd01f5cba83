// The agent's listener: accepts the control connections of `lazyd migrate` (mutual TLS with --tls: a client
// without a certificate signed by --tls-cacert is refused in the handshake), one MigrationSession each.
import net from 'node:net';
import tls, { type SecureContextOptions } from 'node:tls';
import { MigrationSession, type AgentHost } from './session.js';
import type { Logger } from '../log.js';

export interface AgentServerOptions {
  address: string;
  port: number;
  tls?: SecureContextOptions;
  host: AgentHost;
  logger: Logger;
  /** Called whenever the set of migrations changes. */
  onChange?: (sessions: ReadonlySet<MigrationSession>) => void;
}

export class AgentServer {
  private server: net.Server | undefined;
  readonly sessions = new Set<MigrationSession>();
  private counter = 0;
  port = 0;

  constructor(private readonly options: AgentServerOptions) {}

  async listen(): Promise<number> {
    const { logger } = this.options;
    const onSocket = (socket: net.Socket) => {
      socket.setNoDelay(true);
      const id = `${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '')}-${process.pid}-${++this.counter}`;
      const session = new MigrationSession(id, socket, this.options.host, logger, (ended) => {
        this.sessions.delete(ended);
        this.options.onChange?.(this.sessions);
      });
      this.sessions.add(session);
      this.options.onChange?.(this.sessions);
    };
    const server = this.options.tls
      ? tls.createServer({ ...this.options.tls, requestCert: true, rejectUnauthorized: true }, onSocket)
      : net.createServer(onSocket);
    server.on('tlsClientError', (error: Error, socket: tls.TLSSocket) => {
      logger.warn(`refused a TLS connection from ${socket.remoteAddress}: ${error.message}`);
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (error: NodeJS.ErrnoException) =>
        reject(new Error(`cannot listen on ${this.options.address}:${this.options.port}: ${error.message} — pick another --listen`)),
      );
      server.listen(this.options.port, this.options.address, () => resolve());
    });
    this.port = (server.address() as net.AddressInfo).port;
    return this.port;
  }

  close(): Promise<void> {
    return new Promise((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
