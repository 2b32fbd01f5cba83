// Supervises the native page server: loads the checkpoint's page index into it, starts it, turns its events
// into log lines, and reports how it ended. The page bytes never pass through here.
import type { Logger } from '../log.js';
import { loadNative, type NativeAccessOptions, type NativeTlsOptions, type PageServer, type PageServerEvent, type PageServerFlagOptions, type PageServerStats } from '../native.js';
import fs from 'node:fs';
import path from 'node:path';
import { Stager, type StagedCheckpointInfo, type StagingOptions } from '../staging/stager.js';
import { Relayer } from '../staging/relay.js';
import { OPEN_ACCESS } from './access.js';
import { buildPageIndex, type PageIndexSummary } from './page-index.js';
import { PAGE_SERVER } from '../config/flags.js';
import { defaultValues, pageServerOptions } from '../config/resolve.js';

export type { PageServerStats };
/** The native page server's events (declared in src/native.ts). */
export type NativeSessionEvent = PageServerEvent;

/** The native limits and timeouts: from the flags (src/config/flags.ts); those not given take the flags' defaults. */
export type PageServerLimits = Omit<PageServerFlagOptions, 'staging' | 'stagingMaxBytes' | 'stagingRestores'>;

export interface PageServerOptions extends Partial<PageServerLimits> {
  imagesDir: string;
  address: string;
  port: number;
  /** Accept `criu dump --page-server` uploads on the same port and serve them lazily (see src/staging/). */
  staging?: StagingOptions;
  /** --tls: every connection starts with a TLS handshake; credentials are loaded (and checked) at start. */
  tls?: NativeTlsOptions;
  /** --allow-from & co (src/page-server/access.ts); undefined: every peer may fetch and upload. */
  access?: NativeAccessOptions;
  logger: Logger;
}

/** The native flag options: those given, the others at the flags' defaults. */
function flagOptionsOf(options: PageServerOptions): PageServerFlagOptions {
  const { staging: _on, stagingMaxBytes, stagingRestores, ...limits } = pageServerOptions(PAGE_SERVER, defaultValues(PAGE_SERVER));
  for (const key of Object.keys(limits) as (keyof PageServerLimits)[]) {
    if (options[key] !== undefined) Object.assign(limits, { [key]: options[key] });
  }
  return {
    ...limits,
    staging: options.staging !== undefined,
    stagingMaxBytes: options.staging?.maxBytes ?? stagingMaxBytes,
    stagingRestores: options.staging?.restores ?? stagingRestores,
  };
}

export class PageServerService {
  readonly port: number;
  readonly summary: PageIndexSummary;
  /** Resolves when the native thread has ended: true when no session failed. */
  readonly stopped: Promise<boolean>;
  private readonly native: PageServer;
  /** Staging only: the staged checkpoints and their policy. */
  readonly stager?: Stager;
  /** Staging only: relay staging from `criu dump --lazy-pages` (src/staging/relay.ts). */
  readonly relays?: Relayer;

  private constructor(
    native: PageServer, port: number, summary: PageIndexSummary, stopped: Promise<boolean>, stager?: Stager, relays?: Relayer,
  ) {
    this.native = native;
    this.stager = stager;
    this.relays = relays;
    this.port = port;
    this.summary = summary;
    this.stopped = stopped;
  }

  static async start(options: PageServerOptions): Promise<PageServerService> {
    const { logger } = options;
    const addon = loadNative();
    let resolveStopped!: (ok: boolean) => void;
    const stopped = new Promise<boolean>((resolve) => (resolveStopped = resolve));
    let stager: Stager | undefined;
    let relays: Relayer | undefined;
    if (options.tls) {
      // Loads the credentials once here for its notes (the native server loads them again; a bad file throws).
      const notes = addon.tlsCheck(options.tls);
      if (notes) logger.info(`TLS: ${notes}`);
    }
    const native = new addon.PageServer({
      ...flagOptionsOf(options),
      tls: options.tls,
      access: options.access ?? OPEN_ACCESS,
      onEvent: (event) => {
        if (relays?.handle(event)) return;
        if (stager?.handle(event)) return;
        logSessionEvent(logger, event);
        if (event.type === 'stopped') {
          stager?.close();
          relays?.close();
          resolveStopped(event.ok);
        }
      },
    });
    if (options.staging) {
      stager = new Stager(options.staging, native, logger);
      // A relayed checkpoint is staged (its 'staged' event) from the start of its pull: the stager lists,
      // releases and counts it like an upload's; the relayer follows the pull.
      // The TTL of a relayed checkpoint runs from the end of its pull (a release while it pulls resets the dump).
      const ttl = stager;
      relays = new Relayer(native, options.tls, logger, { started: (id) => ttl.deferTtl(id), ended: (id) => ttl.startTtl(id) });
    }
    // A staging daemon may start on an empty directory: the dumps bring the checkpoints.
    const summary =
      options.staging && !fs.existsSync(path.join(options.imagesDir, 'pstree.img'))
        ? { tasks: 0, lazyPages: 0, lazyPagesWithoutData: 0 }
        : await buildPageIndex(options.imagesDir, native, logger);
    let port: number;
    try {
      port = native.listen(options.address, options.port);
    } catch (error) {
      throw new Error(listenErrorText(error as NodeJS.ErrnoException, options.address, options.port));
    }
    native.start();
    return new PageServerService(native, port, summary, stopped, stager, relays);
  }

  /** Staging: the checkpoints served from memory now. */
  stagedCheckpoints(): StagedCheckpointInfo[] {
    return this.stager?.checkpoints() ?? [];
  }

  /** Staging: stop offering a checkpoint to new restores (those in progress finish). */
  release(checkpoint: number, reason?: string): void {
    this.stager?.release(checkpoint, reason);
  }

  /** Staging: release(), resolving once the checkpoint is released. */
  releaseAndWait(checkpoint: number, reason?: string): Promise<void> {
    return this.stager?.releaseAndWait(checkpoint, reason) ?? Promise.resolve();
  }

  /** Stop accepting; finish replies already queued (at most drainMs: --drain-timeout), then end. */
  stop(drainMs: number): void {
    this.native.stop(drainMs);
  }

  stats(): PageServerStats {
    return this.native.stats();
  }

  /** TLS handshakes that failed or timed out so far (for the metrics). */
  tlsFailures(): number {
    return Number(this.native.stats().tlsFailures ?? 0);
  }

  /** Connections and sessions refused by --allow-from & co so far (for the metrics). */
  accessRefused(): number {
    return Number(this.native.stats().accessRefused ?? 0);
  }
}

function listenErrorText(error: NodeJS.ErrnoException, address: string, port: number): string {
  const where = `${address || '*'}:${port}`;
  switch (error.code) {
    case 'EADDRINUSE':
      return `cannot listen on ${where}: the port is in use — stop the other server or pick another --port (--port 0 picks a free one)`;
    case 'EADDRNOTAVAIL':
      return `cannot listen on ${where}: no interface has this address — pass an address of this host to --address`;
    case 'EACCES':
      return `cannot listen on ${where}: permission denied — ports below 1024 need root or CAP_NET_BIND_SERVICE`;
    case 'EINVAL':
      return `cannot listen on ${where}: --address must be a numeric IPv4 or IPv6 address`;
    default:
      return error.message;
  }
}

function formatName(format: number): string {
  return format === 24 ? '24-byte (CRIU <= 4.1)' : format === 32 ? '32-byte (CRIU >= 4.2)' : 'undetected';
}

function logSessionEvent(logger: Logger, event: PageServerEvent): void {
  switch (event.type) {
    case 'session-start':
      logger.info({ session: event.session, peer: event.peer }, 'Accepted page-server session');
      break;
    case 'session-end': {
      if (event.upload) {
        const upload = {
          session: event.session,
          peer: event.peer,
          headers: formatName(event.format),
          entries: event.uploadStats?.entries,
          pages: event.uploadStats?.pagesWithData,
          bytes: event.uploadStats?.bytesIn,
          memoryUsed: event.memoryUsed,
          seconds: Number(event.seconds.toFixed(3)),
          result: event.ok ? 'ok' : 'failed',
        };
        if (event.ok && event.message) {
          // Kept although the connection broke after the CLOSE status (upload_session.h): say how to undo it.
          logger.warn(
            upload,
            `Upload finished, but ${event.message}: staged as checkpoint #${event.session}; if the dump failed and its tasks run on, release it (lazyd staging release ${event.session})`,
          );
        } else if (event.ok) logger.info(upload, 'Upload finished: the dump has its CLOSE status');
        else logger.error(upload, `Upload failed: ${event.message}`);
        break;
      }
      const summary = {
        session: event.session,
        peer: event.peer,
        ...(event.checkpoint ? { checkpoint: event.checkpoint } : {}),
        headers: formatName(event.format),
        gets: event.stats.gets,
        pages: event.stats.pages,
        bytes: event.stats.bytesOut,
        seconds: Number(event.seconds.toFixed(3)),
        result: event.ok ? 'ok' : 'failed',
      };
      // A restore of a staged checkpoint completes only with CLOSE; without it (its daemon died or hung up
      // mid-transfer) the checkpoint is not used up, and the line says so.
      const notCounted =
        event.checkpoint && !event.stats.closedByRequest ? `; it does not count as a completed restore of staged checkpoint #${event.checkpoint}` : '';
      if (event.ok && notCounted) logger.warn(summary, `Page-server session ended without CLOSE (the client hung up mid-transfer)${notCounted}`);
      else if (event.ok) logger.info(summary, 'Page-server session finished');
      else logger.error(summary, `Page-server session failed: ${event.message}${notCounted}`);
      break;
    }
    case 'refused':
      logger.warn({ peer: event.peer }, event.message);
      break;
    case 'stopped':
      logger.info('Page server stopped');
      break;
  }
}
