// The agent's listener: accepts the control connections of `lazyd migrate`, one MigrationSession each. Mutual
// TLS with --tls: a client without a certificate signed by --tls-cacert is refused with one line, before
// anything it sends is read.
import net from 'node:net';
import tls, { type SecureContextOptions } from 'node:tls';
import { MigrationSession, type AgentHost } from './session.js';
import type { Logger } from '../log.js';
import { routeConnection } from './replica-router.js';
import type { ReplicaStore } from './replica.js';

export interface AgentServerOptions {
  address: string;
  port: number;
  tls?: SecureContextOptions;
  host: AgentHost;
  logger: Logger;
  /** Called whenever the set of migrations changes. */
  onChange?: (sessions: ReadonlySet<MigrationSession>) => void;
  /** Replication (`lazyd replicate`, `lazyd failover`): connections whose first line is a replica- message. */
  replicas?: ReplicaStore;
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
      const secure = socket as tls.TLSSocket;
      if (this.options.tls && !secure.authorized) {
        // Checked here rather than in the handshake, so the source learns why in words (TLS 1.3 would only
        // hang up on it): the peer gets one refusal line and nothing else.
        const why = secure.authorizationError ? String(secure.authorizationError) : 'no client certificate';
        logger.warn(`refused a TLS connection from ${socket.remoteAddress}: its certificate does not verify (${why})`);
        const reason = `this host's certificate does not verify against the agent's --tls-cacert (${why})`;
        socket.end(JSON.stringify({ t: 'refuse', reason }) + '\n');
        return;
      }
      const replicas = this.options.replicas;
      if (replicas) routeConnection(socket, (s) => replicas.accept(s), (s) => this.startMigration(s));
      else this.startMigration(socket);
    };
    const server = this.options.tls
      ? tls.createServer({ ...this.options.tls, requestCert: true, rejectUnauthorized: false }, onSocket)
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

  private startMigration(socket: net.Socket): void {
    const id = `${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '')}-${process.pid}-${++this.counter}`;
    const session = new MigrationSession(id, socket, this.options.host, this.options.logger, (ended) => {
      this.sessions.delete(ended);
      this.options.onChange?.(this.sessions);
    });
    this.sessions.add(session);
    this.options.onChange?.(this.sessions);
  }

  close(): Promise<void> {
    return new Promise((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
