// The source's pages during `lazyd migrate`: relay staging in this process (README "Relay staging",
// native/core/staging/relay.h). A native page server listens where the destination's lazy-pages daemon connects
// (the control connection's local address, --page-port, --tls), and its relay is the one lazy client of
// `criu dump --lazy-pages --address 127.0.0.1`: it pulls every lazy page into memory and serves the destination
// from there, on the page server's thread — no JavaScript in the page path. The relay holds the dump's CLOSE
// (holdClose) until release(), the point of no return (the destination's restore succeeded); abort() — any
// failure before — resets the dump's connection, so CRIU resumes the originals (docs/protocol.md §1.7). Stopping
// the page server also resets a relay still held; the relay's socket has SO_LINGER 0, so even this process dying
// is a reset, never an EOF.
// The relayed checkpoint's link token goes into the images as lazyd-link.json (start()): the agent's `lazyd
// lazy-pages` then opens with HELLO, bound to the checkpoint, every page checksummed where this process's store
// reads it (docs/protocol.md §7).
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { loadNative, type NativeTlsOptions, type PageServer, type PageServerEvent } from '../native.js';
import { relayPlan, type RelayPlan } from '../staging/relay.js';
import { writeRelayLink } from '../staging/relay-link.js';

export interface RelaySourceOptions {
  /** Where the destination's daemon connects. */
  listenAddress: string;
  listenPort: number;
  /** The only address that may connect (the agent's). */
  peerAddress: string;
  tls?: NativeTlsOptions;
  /** The memory the relay's copy of the lazy pages may take. */
  maxBytes: number;
  stallTimeoutMs: number;
}

export type RelayEnd = { ok: true } | { ok: false; reason: string };

const REQUEST_PAGES = 256; // 1 MiB bulk GETs, as `lazyd staging relay`'s --relay-request-bytes default
const INFLIGHT_BYTES = 4 * 1024 * 1024;
const CONNECT_TIMEOUT_MS = 5000;

function bare(address: string): string {
  return address.replace(/^::ffff:/, '');
}

/**
 * Events: 'held' (every lazy page is in this process's memory; with the CLOSE held, or just before 'end' when
 * release() came first), 'end' (RelayEnd, once: the dump had its CLOSE
 * and answered it, or the relay failed — reset, unless the failure came after the CLOSE), 'session-end'
 * ({ ok, message }: the destination's page connection ended), 'refused' (reason).
 */
export class RelaySource extends EventEmitter {
  private readonly native: PageServer;
  private checkpoint = 0;
  private ended: RelayEnd | undefined;
  private releasedAt: number | undefined;
  private stoppedResolve!: () => void;
  private readonly stopped = new Promise<void>((resolve) => (this.stoppedResolve = resolve));
  port = 0;
  held = false;
  pagesHeld = 0;
  pagesTotal = 0;
  plan: RelayPlan | undefined;
  /** The destination's page connections that ended well: over the lazyd link (HELLO), over CRIU's protocol. */
  linkedSessions = 0;
  stockSessions = 0;
  /** The lazyd-link.json start() wrote into the images, or undefined (why not: linkWarning). */
  linkFile: string | undefined;
  linkWarning: string | undefined;

  constructor(private readonly options: RelaySourceOptions) {
    super();
    const addon = loadNative();
    const peer = bare(options.peerAddress);
    const only = [`${peer}/${net.isIPv6(peer) ? 128 : 32}`];
    this.native = new addon.PageServer({
      format: 0,
      maxRequestPages: 65536,
      maxInflight: 64,
      maxSessionBytes: 64 * 1024 * 1024,
      maxSessions: 4,
      stallTimeoutMs: options.stallTimeoutMs,
      idleTimeoutMs: 0,
      tlsHandshakeTimeoutMs: 10000,
      staging: true, // relay staging serves from the staging registry
      stagingMaxBytes: options.maxBytes,
      stagingRestores: 0,
      linkResumeHoldMs: 0, // a relayed checkpoint has no link token: nothing to resume by
      singleSession: false,
      tls: options.tls,
      access: { fetchFrom: only, uploadFrom: only, fetchNames: [], uploadNames: [] },
      // Not required: an agent of an earlier lazyd gets no lazyd-link.json (client.ts ships it only to an agent
      // that says it takes it) and speaks stock CRIU; the allow-list binds it.
      requireLinkToken: false,
      onEvent: (event) => this.onEvent(event),
    });
  }

  /** Binds and starts the page server; returns its port. Throws one line. */
  listen(): number {
    try {
      this.port = this.native.listen(this.options.listenAddress, this.options.listenPort);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      throw new Error(
        `cannot listen for the destination's page connection on ${this.options.listenAddress}:${this.options.listenPort}: ` +
          `${(error as Error).message}${code === 'EADDRINUSE' ? ' — pick another --page-port (0 picks a free one)' : ''}`,
      );
    }
    this.native.start();
    return this.port;
  }

  /**
   * Reads the dump's images and starts pulling from its lazy page server on 127.0.0.1:dumpPort, CLOSE held; writes
   * the checkpoint's lazyd-link.json into imagesDir (linkFile, or linkWarning: restores then speak plain CRIU).
   * Throws one line when it cannot start; the dump's connection, if one was made, was reset (CRIU resumes).
   */
  async start(imagesDir: string, dumpPort: number): Promise<RelayPlan> {
    const plan = await relayPlan(imagesDir);
    this.plan = plan;
    this.pagesTotal = plan.pages;
    const started = this.native.startRelay({
      host: '127.0.0.1',
      port: dumpPort,
      connectTimeoutMs: CONNECT_TIMEOUT_MS,
      format: plan.format,
      tasks: plan.tasks,
      requestPages: REQUEST_PAGES,
      inflightBytes: INFLIGHT_BYTES,
      stallTimeoutMs: this.options.stallTimeoutMs,
      holdClose: true,
    });
    this.checkpoint = started.checkpoint;
    const link = writeRelayLink(imagesDir, started.checkpoint, started.token);
    this.linkFile = link.file;
    this.linkWarning = link.warning;
    return plan;
  }

  get started(): boolean {
    return this.checkpoint !== 0;
  }

  /** The point of no return: the dump may have its CLOSE (now, or once every page is held). */
  release(): void {
    if (!this.checkpoint || this.ended) return;
    this.releasedAt = performance.now();
    this.native.releaseRelay(this.checkpoint);
  }

  /** release() was called: the dump gets (or got) its CLOSE unless the relay fails first. */
  get released(): boolean {
    return this.releasedAt !== undefined;
  }

  /** A failure before the point of no return: reset the dump's connection (CRIU resumes the originals). */
  abort(reason: string): void {
    if (this.checkpoint && !this.ended) this.native.release(this.checkpoint, reason);
  }

  /** Resolves once the relay has ended (at once if it has). */
  end(): Promise<RelayEnd> {
    if (this.ended) return Promise.resolve(this.ended);
    return new Promise((resolve) => this.once('end', resolve));
  }

  get outcome(): RelayEnd | undefined {
    return this.ended;
  }

  /** Pages and bytes sent to the destination, and its request bytes (the page server's counters). */
  traffic(): { pages: number; bytesOut: number; bytesIn: number } {
    const stats = this.native.stats();
    return { pages: stats.pagesTotal ?? 0, bytesOut: stats.bytesTotal ?? 0, bytesIn: stats.bytesReceived ?? 0 };
  }

  /** Stops the page server (a relay still held is reset); resolves once its thread has ended. */
  stop(): Promise<void> {
    this.native.stop(0);
    return this.stopped;
  }

  private checkHeld(): void {
    if (this.held || this.pagesTotal === 0 || this.pagesHeld < this.pagesTotal) return;
    this.held = true;
    this.emit('held');
  }

  private onEvent(event: PageServerEvent): void {
    switch (event.type) {
      case 'relay-progress':
        this.pagesHeld = event.pagesHeld;
        if (event.pagesTotal) this.pagesTotal = event.pagesTotal;
        this.checkHeld();
        return;
      case 'relay-done':
      case 'relay-failed':
        this.pagesHeld = event.pagesHeld;
        // Released before the pull ended, the relay goes from pulling straight to done: the last page is now.
        if (event.type === 'relay-done') this.checkHeld();
        if (this.ended) return;
        this.ended = event.type === 'relay-done' ? { ok: true } : { ok: false, reason: event.message || 'the relay from criu dump failed' };
        this.emit('end', this.ended);
        return;
      case 'refused':
        this.emit('refused', `a page connection from ${event.peer}: ${event.message}`);
        return;
      case 'session-end':
        if (event.upload) return;
        if (event.ok && event.stats.hello) this.linkedSessions++;
        else if (event.ok) this.stockSessions++;
        this.emit('session-end', { ok: event.ok, message: event.message });
        return;
      case 'stopped':
        this.stoppedResolve();
        return;
      default:
        return;
    }
  }
}
