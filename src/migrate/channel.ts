// The control channel between `lazyd migrate` (source) and `lazyd agent` (destination): one TCP connection
// (TLS with --tls), carrying newline-terminated JSON messages; a `file` message is followed by exactly `size` raw
// bytes (an image file). Both ends send `ping` every second; silence longer than the link timeout ends the
// migration (README "Migrating a process").
import fs from 'node:fs';
import path from 'node:path';
import type { Socket } from 'node:net';
import { EventEmitter } from 'node:events';

// 2: the page server's address comes with hello (the agent starts its lazy-pages engine while the images arrive).
// 3: pre-dump iterations (pre-dump, pre-dump-end → pre-dump-stored) before the final images; restore says how many.
export const CHANNEL_VERSION = 3;
/** How often each end says it is alive. */
export const PING_MS = 1000;

/** Source → destination. */
export type SourceMessage =
  | { t: 'hello'; v: number; criuVersion: string; pageSize: number; linkTimeoutMs: number; pid: number; pageServer: { address: string; port: number } }
  | { t: 'file'; name: string; size: number }
  /** The files up to the matching pre-dump-end are iteration n's images (n = 1, 2, ... in order). */
  | { t: 'pre-dump'; n: number }
  | { t: 'pre-dump-end'; n: number; files: number; bytes: number }
  /** The final images were dumped with --prev-images-dir ../<iteration preDumps> (0: no iterations). */
  | { t: 'restore'; files: number; bytes: number; preDumps: number }
  | { t: 'abort'; reason: string }
  | { t: 'bye' }
  | { t: 'ping' };

/** Destination → source. */
export type AgentMessage =
  /** link: the lazyd link version (docs/protocol.md §7) the agent's lazy-pages speaks; it then takes lazyd-link.json
   * with the images (an agent of an earlier lazyd sends none, and gets none). */
  | { t: 'welcome'; v: number; id: string; criuVersion: string; criuPath: string; pageSize: number; uffd: string | null; link?: number }
  | { t: 'refuse'; reason: string }
  | { t: 'phase'; phase: AgentPhase; atMs: number }
  | { t: 'pre-dump-stored'; n: number; files: number; bytes: number }
  | { t: 'restored'; pid: number; restoreMs: number }
  | { t: 'done'; summary: string; installed: number; total: number }
  | { t: 'failed'; stage: AgentPhase; reason: string; restoredKilled: boolean }
  | { t: 'ping' };

export type AgentPhase = 'receive' | 'pre-restore' | 'lazy-pages' | 'restore' | 'pages' | 'link';

export type Message = SourceMessage | AgentMessage;

/** At most this much JSON per line: anything longer is not a peer of ours. */
const MAX_LINE = 64 * 1024;

/**
 * Reads messages off a socket and writes them. Emits 'message' (JSON messages; a `file` message only once its
 * bytes are all written to the file that `fileSink` named), 'error' (one line) and 'close'.
 */
export class Channel extends EventEmitter {
  private buffer: Buffer = Buffer.alloc(0);
  private file: { fd: number; left: number; name: string; message: Message } | undefined;
  private closed = false;
  /** sendFile is writing a file's bytes: other messages wait in `queued`. */
  private fileInFlight = false;
  private queued: Message[] = [];
  private lastHeard = performance.now();
  private pinger: NodeJS.Timeout | undefined;
  bytesIn = 0;
  bytesOut = 0;

  /** fileSink(name) returns the path a received file is written to, or throws (the name is refused). */
  constructor(
    readonly socket: Socket,
    private readonly fileSink?: (name: string) => string,
  ) {
    super();
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (error) => this.fail(`control connection: ${error.message}`));
    socket.on('close', () => this.finish());
  }

  /** Sends ping every PING_MS and fails the channel after `timeoutMs` without a byte from the peer. */
  keepAlive(timeoutMs: number): void {
    this.pinger = setInterval(() => {
      if (performance.now() - this.lastHeard > timeoutMs) {
        this.fail(`the peer sent nothing for ${(timeoutMs / 1000).toFixed(1)} s (link timeout): the link is down or the peer hangs`);
        return;
      }
      this.send({ t: 'ping' });
    }, PING_MS);
    this.pinger.unref();
  }

  send(message: Message): void {
    if (this.closed) return;
    if (this.fileInFlight) {
      // A line written now would land inside the file's bytes (the ping timer fires while sendFile waits for
      // 'drain'): it goes out right after the file instead.
      this.queued.push(message);
      return;
    }
    const line = JSON.stringify(message) + '\n';
    this.bytesOut += Buffer.byteLength(line);
    this.socket.write(line);
  }

  /** Sends a file as a `file` message and its bytes; resolves once they are queued (with backpressure). */
  async sendFile(name: string, file: string): Promise<number> {
    if (this.fileInFlight) throw new Error(`sendFile(${name}) while another file is being sent`);
    const size = fs.statSync(file).size;
    this.send({ t: 'file', name, size });
    this.fileInFlight = true;
    try {
      const stream = fs.createReadStream(file, { end: size > 0 ? size - 1 : 0 });
      let sent = 0;
      for await (const chunk of stream) {
        if (this.closed) throw new Error('the control connection closed while sending the images');
        const bytes = (chunk as Buffer).subarray(0, size - sent); // exactly the announced size, even if the file grew
        sent += bytes.length;
        this.bytesOut += bytes.length;
        if (!this.socket.write(bytes)) await this.drained();
        if (sent >= size) break;
      }
      if (sent !== size) throw new Error(`${file} shrank while it was sent (${sent} of ${size} bytes)`);
    } finally {
      this.fileInFlight = false;
      for (const message of this.queued.splice(0)) this.send(message);
    }
    return size;
  }

  /** Sends the *.img files of `dir` (sorted by name), and those of `extra` that are there, as file messages;
   * resolves with their count and bytes. */
  async sendImages(dir: string, extra: readonly string[] = []): Promise<{ files: number; bytes: number }> {
    let files = 0;
    let bytes = 0;
    for (const name of fs.readdirSync(dir).sort()) {
      if (!name.endsWith('.img') && !extra.includes(name)) continue;
      bytes += await this.sendFile(name, path.join(dir, name));
      files++;
    }
    return { files, bytes };
  }

  /** 'drain', or the connection's end (a dead socket never drains). */
  private drained(): Promise<void> {
    return new Promise<void>((resolve) => {
      if (this.closed) return resolve();
      const done = () => {
        this.socket.off('drain', done);
        this.off('close', done);
        resolve();
      };
      this.socket.once('drain', done);
      this.once('close', done);
    });
  }

  /** Ends the connection cleanly once everything written is sent. */
  end(): void {
    this.stopPing();
    if (!this.closed) this.socket.end();
  }

  /** Ends it at once. */
  destroy(): void {
    this.stopPing();
    this.socket.destroy();
  }

  private stopPing(): void {
    if (this.pinger) clearInterval(this.pinger);
    this.pinger = undefined;
  }

  private onData(chunk: Buffer): void {
    this.lastHeard = performance.now();
    this.bytesIn += chunk.length;
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    while (this.buffer.length && !this.closed) {
      if (this.file) {
        const take = Math.min(this.file.left, this.buffer.length);
        fs.writeSync(this.file.fd, this.buffer, 0, take);
        this.file.left -= take;
        this.buffer = this.buffer.subarray(take);
        if (this.file.left === 0) this.endFile();
        continue;
      }
      const newline = this.buffer.indexOf(0x0a);
      if (newline < 0) {
        if (this.buffer.length > MAX_LINE) this.fail('the peer sent a line of over 64 KiB: not a lazyd migration peer');
        return;
      }
      const line = this.buffer.subarray(0, newline).toString('utf8');
      this.buffer = this.buffer.subarray(newline + 1);
      let message: Message;
      try {
        message = JSON.parse(line) as Message;
        if (typeof message !== 'object' || message === null || typeof message.t !== 'string') throw new Error('no type');
      } catch {
        this.fail(`the peer sent something that is not a lazyd migration message: ${JSON.stringify(line.slice(0, 80))}`);
        return;
      }
      if (message.t === 'ping') continue;
      if (message.t === 'file') {
        if (!this.startFile(message)) return;
        continue;
      }
      this.emit('message', message);
    }
  }

  private startFile(message: Extract<Message, { t: 'file' }>): boolean {
    if (!this.fileSink) {
      this.fail('the peer sent a file where none is expected');
      return false;
    }
    if (!Number.isSafeInteger(message.size) || message.size < 0) {
      this.fail(`the peer announced a file of ${message.size} bytes`);
      return false;
    }
    let target: string;
    try {
      target = this.fileSink(message.name);
    } catch (error) {
      this.fail((error as Error).message);
      return false;
    }
    const fd = fs.openSync(target, 'wx', 0o600);
    this.file = { fd, left: message.size, name: message.name, message };
    if (message.size === 0) this.endFile();
    return true;
  }

  private endFile(): void {
    const file = this.file!;
    fs.closeSync(file.fd);
    this.file = undefined;
    this.emit('message', file.message);
  }

  private fail(reason: string): void {
    if (this.closed) return;
    this.emit('error', new Error(reason));
    this.socket.destroy();
    this.finish();
  }

  private finish(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopPing();
    if (this.file) {
      fs.closeSync(this.file.fd);
      this.file = undefined;
    }
    this.emit('close');
  }

  get isClosed(): boolean {
    return this.closed;
  }
}
