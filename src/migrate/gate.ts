// The source's page gate: the one way between the destination's lazy-pages daemon and `criu dump --lazy-pages`
// (which listens on loopback only). It passes GETs and their replies through unchanged and decides how the
// dump's connection ends, which decides the fate of the original tasks (docs/protocol.md §1.7, §6.18):
//   - the daemon's CLOSE (every page present) is held until commit() — the destination's restore has
//     succeeded — and only then passed on: the dump answers it, exits 0 and kills the originals;
//   - abort() — any failure before that — resets the dump's connection (or, if the daemon never connected,
//     connects and resets): CRIU logs "Lazy pages transfer FAILED" and resumes the originals.
// No other end is possible: a clean EOF from this side would count as success (§1.7 step 4).
// It also counts the pages that cross (for the progress line) by following the replies' headers (§1.2, §1.6).
import net from 'node:net';
import tls, { type SecureContextOptions } from 'node:tls';
import { EventEmitter } from 'node:events';
import { PS_CMD_MASK, PS_IOV_ADD_F, PS_IOV_CLOSE, PS_IOV_FORCE_CLOSE, PS_IOV_GET } from '../protocol/constants.js';

export interface GateOptions {
  /** Where the destination connects (the source's address on the control connection's route). */
  listenAddress: string;
  listenPort: number;
  /** The only address a connection is accepted from (the agent's). */
  peerAddress: string;
  dumpPort: number;
  headerSize: 24 | 32;
  pageSize: number;
  tls?: SecureContextOptions;
}

export type GateOutcome = { ok: true } | { ok: false; reason: string };

function bare(address: string | undefined): string {
  return (address ?? '').replace(/^::ffff:/, '');
}

/** The destination's side of the stream: fixed-size headers only (GETs, then one CLOSE; §1.6). */
export class RequestScanner {
  private buffer: Buffer = Buffer.alloc(0);
  /** The CLOSE header, once it has come (nothing may follow it but the EOF). */
  close: Buffer | undefined;
  gets = 0;
  constructor(private readonly headerSize: 24 | 32) {}

  /** Takes bytes from the destination; returns those that may go on to the dump now (whole headers). */
  feed(chunk: Buffer): Buffer {
    if (this.close) return Buffer.alloc(0);
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    const size = this.headerSize;
    let pass = 0;
    while (this.buffer.length - pass >= size) {
      const command = this.buffer.readUInt32LE(pass) & PS_CMD_MASK;
      if (command === PS_IOV_CLOSE || command === PS_IOV_FORCE_CLOSE) {
        const out = this.buffer.subarray(0, pass);
        this.close = Buffer.from(this.buffer.subarray(pass, pass + size));
        this.buffer = Buffer.alloc(0);
        return out;
      }
      if (command === PS_IOV_GET) this.gets++;
      pass += size;
    }
    const out = this.buffer.subarray(0, pass);
    this.buffer = this.buffer.subarray(pass);
    return out;
  }
}

/** The dump's side: per GET an ADD_F header and nr_pages pages (§1.6); what follows the last one is the CLOSE status. */
export class ReplyCounter {
  private header: Buffer = Buffer.alloc(0);
  private payloadLeft = 0;
  /** Replies still due (GETs passed on minus replies read whole). */
  due = 0;
  pages = 0;
  replies = 0;
  constructor(
    private readonly headerSize: 24 | 32,
    private readonly pageSize: number,
  ) {}

  feed(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length && this.due > 0) {
      if (this.payloadLeft > 0) {
        const take = Math.min(this.payloadLeft, chunk.length - at);
        this.payloadLeft -= take;
        at += take;
        if (this.payloadLeft === 0) this.replyDone();
        continue;
      }
      const piece = chunk.subarray(at, at + this.headerSize - this.header.length);
      this.header = this.header.length ? Buffer.concat([this.header, piece]) : Buffer.from(piece);
      at += piece.length;
      if (this.header.length < this.headerSize) return;
      const command = this.header.readUInt32LE(0) & PS_CMD_MASK;
      const pages = this.headerSize === 24 ? this.header.readUInt32LE(4) : Number(this.header.readBigUInt64LE(8));
      this.header = Buffer.alloc(0);
      if (command !== PS_IOV_ADD_F || pages === 0) {
        this.replyDone();
        continue;
      }
      this.pages += pages;
      this.payloadLeft = pages * this.pageSize;
    }
  }

  private replyDone(): void {
    this.due--;
    this.replies++;
  }
}

/**
 * Events: 'connected' (the daemon connected), 'refused' (reason: a connection from elsewhere), 'end'
 * (GateOutcome, once).
 */
export class PageGate extends EventEmitter {
  private server: net.Server | undefined;
  private raw: net.Socket | undefined;
  private down: net.Socket | undefined;
  private up: net.Socket | undefined;
  private committed = false;
  private closeSent = false;
  private ended = false;
  private readonly requests: RequestScanner;
  private readonly replies: ReplyCounter;
  /** Bytes that crossed to and from the destination. */
  bytesToDestination = 0;
  bytesFromDestination = 0;
  port = 0;

  constructor(private readonly options: GateOptions) {
    super();
    this.requests = new RequestScanner(options.headerSize);
    this.replies = new ReplyCounter(options.headerSize, options.pageSize);
  }

  /** Pages the dump has sent (the replies' nr_pages). */
  get pagesServed(): number {
    return this.replies.pages;
  }

  async listen(): Promise<number> {
    const tlsOptions = this.options.tls;
    let server: net.Server;
    if (tlsOptions) {
      // A tls.Server (a bare TLSSocket would not check the client's certificate); its 'connection' event still
      // hands out the TCP socket underneath, which a failure resets.
      const secure = tls.createServer({ ...tlsOptions, requestCert: true, rejectUnauthorized: false });
      secure.on('secureConnection', (socket: tls.TLSSocket) => {
        if (socket.authorized) this.attach(socket);
        else this.failAndAbort(`the destination's page connection presented a certificate that does not verify (${socket.authorizationError ?? 'none'})`);
      });
      secure.on('tlsClientError', (error: Error) => this.failAndAbort(`the destination's page connection failed its TLS handshake: ${error.message}`));
      server = secure;
    } else {
      server = net.createServer();
    }
    server.on('connection', (raw: net.Socket) => {
      if (this.accept(raw) && !tlsOptions) this.attach(raw);
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.options.listenPort, this.options.listenAddress, () => resolve());
    });
    this.port = (server.address() as net.AddressInfo).port;
    return this.port;
  }

  /** The destination's restore succeeded: the daemon's CLOSE may reach the dump. */
  commit(): void {
    this.committed = true;
    if (this.requests.close) this.forwardClose();
  }

  /** Any failure before the CLOSE went through: reset the dump's connection, so CRIU resumes the originals. */
  abort(reason: string): void {
    if (this.closeSent || this.ended) return; // too late (the dump has the CLOSE), or done already
    if (!this.up) {
      // The daemon never connected: connect only to reset (criu accepts one client, then the read fails).
      this.up = net.connect(this.options.dumpPort, '127.0.0.1');
      this.up.on('error', () => undefined);
    }
    this.up.resetAndDestroy();
    if (this.raw && !this.raw.destroyed) this.raw.resetAndDestroy();
    this.finish({ ok: false, reason });
  }

  close(): void {
    this.server?.close();
  }

  /** The first connection from the agent's address is the one; any other is reset. */
  private accept(raw: net.Socket): boolean {
    raw.on('error', () => undefined);
    if (this.raw || bare(raw.remoteAddress) !== bare(this.options.peerAddress)) {
      this.emit('refused', `a page connection from ${raw.remoteAddress} (expected one from ${this.options.peerAddress})`);
      raw.resetAndDestroy();
      return false;
    }
    this.raw = raw;
    this.server?.close(); // one client, as criu's own lazy server
    raw.setNoDelay(true);
    return true;
  }

  /** The destination's daemon is connected (and verified, with TLS): connect to the dump and pass bytes both ways. */
  private attach(down: net.Socket): void {
    if (this.ended) {
      this.raw?.resetAndDestroy();
      return;
    }
    this.down = down;
    down.on('error', (error) => this.failAndAbort(`the destination's page connection failed: ${error.message}`));
    down.on('end', () => {
      if (this.closeSent) this.up?.end();
      else this.failAndAbort("the destination's page connection ended before every page was present");
    });
    this.emit('connected');
    const up = net.connect(this.options.dumpPort, '127.0.0.1');
    this.up = up;
    up.setNoDelay(true);
    up.on('error', (error) => this.upstreamEnded(`criu dump's page connection failed: ${error.message}`));
    up.on('end', () => this.upstreamEnded(undefined));
    up.on('close', () => this.upstreamEnded(undefined));
    up.on('data', (chunk: Buffer) => this.fromDump(chunk));
    down.on('data', (chunk: Buffer) => this.fromDestination(chunk));
  }

  private fromDestination(chunk: Buffer): void {
    this.bytesFromDestination += chunk.length;
    const before = this.requests.gets;
    this.writeUp(this.requests.feed(chunk));
    this.replies.due += this.requests.gets - before;
    if (this.requests.close && this.committed) this.forwardClose();
  }

  private forwardClose(): void {
    if (this.closeSent || this.ended || !this.requests.close) return;
    this.closeSent = true;
    this.writeUp(this.requests.close);
  }

  private writeUp(bytes: Buffer): void {
    if (!bytes.length || !this.up) return;
    if (!this.up.write(bytes)) {
      this.down?.pause();
      this.up.once('drain', () => this.down?.resume());
    }
  }

  private fromDump(chunk: Buffer): void {
    this.replies.feed(chunk);
    this.bytesToDestination += chunk.length;
    if (!this.down!.write(chunk)) {
      this.up!.pause();
      this.down!.once('drain', () => this.up?.resume());
    }
  }

  private upstreamEnded(error: string | undefined): void {
    if (this.ended) return;
    if (this.closeSent && error === undefined) {
      // The dump answered the CLOSE and hung up: the transfer is complete.
      this.down?.end();
      this.finish({ ok: true });
      return;
    }
    if (this.raw && !this.raw.destroyed) this.raw.resetAndDestroy();
    this.finish({ ok: false, reason: error ?? 'criu dump closed its page connection before the transfer was complete' });
  }

  private failAndAbort(reason: string): void {
    if (this.ended || this.closeSent) return;
    this.abort(reason);
  }

  private finish(outcome: GateOutcome): void {
    if (this.ended) return;
    this.ended = true;
    this.server?.close();
    this.emit('end', outcome);
  }

  get connected(): boolean {
    return this.up !== undefined && this.raw !== undefined;
  }

  get closePassed(): boolean {
    return this.closeSent;
  }
}
