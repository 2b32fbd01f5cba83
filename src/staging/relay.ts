// Relay staging, the control-plane half (README "Relay staging"): `lazyd staging relay -D DIR --from HOST:PORT`
// asks the running `lazyd --page-server` to become the lazy client of a `criu dump --lazy-pages --address HOST
// --port PORT` on this host. This module
//   1. waits until the dump's lazy page server LISTENs (./listen-watch.ts: never a probe connect, §1.7),
//   2. reads the dump's images from DIR (written before it serves, §1.7 step 3): pstree and each task's pagemap,
//      whose PE_LAZY entries are the pages to pull; the header layout from the pagemaps' encoding (§0),
//   3. hands them to the native relay (startRelay), which pulls every lazy page into the daemon's memory while
//      serving restores of the checkpoint on the daemon's own port, and ends the dump's session with CLOSE only
//      once it holds every page (otherwise with a reset: the dump fails and resumes the tasks, §1.7 step 4),
//   4. writes the checkpoint's lazyd-link.json into DIR (./relay-link.ts) before it answers that the pull
//      runs, so the directory a user copies to the destination lets `lazyd lazy-pages` open with the lazyd link,
//   5. follows the native relay's events: progress, done, failed; and removes the file when the checkpoint is
//      released (its token is dead then).
import net from 'node:net';
import path from 'node:path';
import type { Logger } from '../log.js';
import type { NativeTlsOptions, RelayStarted } from '../native.js';
import { loadCheckpoint, PE_LAZY, PE_PRESENT, type Checkpoint } from '../images/index.js';
import { removeRelayLink, writeRelayLink } from './relay-link.js';
import { waitForListen } from './listen-watch.js';

/** One task's pages to pull: its PE_LAZY pagemap entries. */
export interface RelayTask {
  pid: number;
  ranges: { vaddr: bigint; nrPages: number }[];
}

/** What the dump's images say the relay must pull. */
export interface RelayPlan {
  dir: string;
  format: 24 | 32;
  tasks: RelayTask[];
  pages: number;
  bytes: number;
  /** Set when CRIU marked no page lazy: what happened, for one warning line (the relay then pulls nothing). */
  note?: string;
}

/** The options of the native relay (native/core/staging/relay.h; PageServer.startRelay in src/native.ts). */
export interface NativeRelayOptions {
  host: string;
  port: number;
  connectTimeoutMs: number;
  format: 24 | 32;
  tls?: NativeTlsOptions;
  tasks: RelayTask[];
  requestPages: number;
  inflightBytes: number;
  stallTimeoutMs: number;
}

export type RelayEventType = 'relay-progress' | 'relay-done' | 'relay-failed';

export interface RelayEvent {
  type: RelayEventType;
  checkpoint: number;
  pagesHeld: number;
  pagesTotal: number;
  bytes: number;
  ms: number;
  message: string;
}

/** What the relayer asks of the native page server. */
export interface NativeRelaySink {
  startRelay(options: NativeRelayOptions): RelayStarted;
}

/** One relay request, as the control socket carries it (`relay {json}`). */
export interface RelayRequest {
  dir: string;
  host: string;
  port: number;
  /** 0: wait for the dump's server as long as it takes. */
  listenTimeoutMs: number;
  /** The dump runs with --tls: talk TLS to it with the daemon's own credentials. */
  tls: boolean;
  /** 24 / 32, or undefined: from the images. */
  format?: 24 | 32;
  requestBytes: number;
  inflightBytes: number;
  stallTimeoutMs: number;
  connectTimeoutMs: number;
}

export type RelayState = 'waiting' | 'pulling' | 'complete' | 'failed';

export interface RelayInfo {
  id: number;
  pids: number[];
  dir: string;
  from: string;
  state: RelayState;
  pagesHeld: number;
  pagesTotal: number;
  bytes: number;
  startedAt: number;
  /** Start to CLOSE answered (complete) or to the failure. */
  ms?: number;
  message?: string;
  /** The lazyd-link.json written into dir (docs/protocol.md §7), or undefined (none: see the log). */
  linkFile?: string;
}

export type RelayOutcome = { ok: true; info: RelayInfo } | { ok: false; info: RelayInfo; message: string };

const PAGE_SIZE = 4096;

/** The header layout of the dump's images: CRIU >= 4.2 writes field 5 of PagemapEntry (docs/protocol.md §0). */
function formatOf(checkpoint: Checkpoint): 24 | 32 | undefined {
  const encodings = new Set(checkpoint.tasks.map((t) => t.pagemap?.encoding).filter((e) => e === '4.1' || e === '4.2'));
  if (encodings.size !== 1) return undefined;
  return encodings.has('4.2') ? 32 : 24;
}

/**
 * The pages a relay of the dump in `dir` pulls: per task, its PE_LAZY entries. A lazy dump writes them without
 * data (PE_LAZY alone, §1.7 step 2); an entry with data means the directory holds a plain dump, which has no
 * lazy server to relay from. Throws one line naming the cause.
 */
export async function relayPlan(dir: string, format?: 24 | 32): Promise<RelayPlan> {
  let checkpoint: Checkpoint;
  try {
    checkpoint = await loadCheckpoint(dir, { parents: false });
  } catch (error) {
    throw new Error(`the dump's images in ${dir} cannot be read: ${(error as Error).message}`);
  }
  const tasks: RelayTask[] = [];
  let pages = 0;
  for (const task of checkpoint.tasks) {
    const entries = task.pagemap?.entries.filter((e) => e.flags & PE_LAZY) ?? [];
    if (entries.some((e) => e.flags & PE_PRESENT)) {
      throw new Error(
        `${task.files.pagemap}: lazy pages with their data in the images: ${dir} holds a plain dump, not one of ` +
          '`criu dump --lazy-pages` (serve a plain dump with `lazyd --page-server -D DIR`)',
      );
    }
    if (!entries.length) continue;
    tasks.push({ pid: task.pid, ranges: entries.map((e) => ({ vaddr: e.vaddr, nrPages: e.nrPages })) });
    pages += entries.reduce((sum, e) => sum + e.nrPages, 0);
  }
  let note: string | undefined;
  if (!tasks.length) {
    // CRIU keeps a page out of the lazy set when a thread's stack pointer is in it, but is_stack() compares only
    // the offset within the page: a page-aligned stack pointer (about 1 dump in 256 per thread) makes every page
    // "stack", so the dump writes them all into its pages images and serves nothing lazily. The images are then
    // complete: the relay pulls nothing and CLOSEs, and restores read every page from the images.
    for (const task of checkpoint.tasks) tasks.push({ pid: task.pid, ranges: [] });
    note =
      `criu dump --lazy-pages marked no page lazy (CRIU writes them all into ${dir}'s pages images when a thread's ` +
      'stack pointer is page-aligned, or the tasks have no private anonymous memory): nothing to pull; the images hold every page';
  }
  const chosen = format ?? formatOf(checkpoint);
  if (!chosen) {
    throw new Error(
      `${dir}: the pagemaps do not tell which CRIU wrote them (encodings differ or are empty): pass --criu-abi 4.1 or 4.2`,
    );
  }
  return { dir: checkpoint.dir, format: chosen, tasks, pages, bytes: pages * checkpoint.pageSize, ...(note ? { note } : {}) };
}

/**
 * Connects to the dump's lazy page server and resets the connection at once (SO_LINGER 0): `criu dump
 * --lazy-pages` takes a reset for a failed transfer and resumes the tasks; a clean close would be an EOF at a
 * header boundary, a finished transfer, and the tasks would be killed (docs/protocol.md §1.7). Resolves with what
 * became of the dump, for the error line.
 */
export function resetDump(host: string, port: number, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(`the dump at ${host}:${port} did not take a connection within ${timeoutMs} ms: check that it still runs (its tasks may still be frozen)`);
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.resetAndDestroy();
      resolve("the dump's connection was reset, so criu dump fails and resumes the tasks");
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      resolve(`the dump at ${host}:${port} could not be reached to reset it (${error.message}): check that it still runs (its tasks may still be frozen)`);
    });
  });
}

/**
 * What a failed relay's checkpoint is: incomplete (never served as complete), or — when the failure came after
 * every page was held (the dump's CLOSE answer missing) — complete, the dump's exit status saying the rest.
 */
export function relayFailureState(info: Pick<RelayInfo, 'pagesHeld' | 'pagesTotal'>): string {
  return info.pagesTotal > 0 && info.pagesHeld >= info.pagesTotal
    ? 'every page is held and served; check the dump\'s exit status before restoring (not 0: the original runs on, release the checkpoint)'
    : 'the checkpoint is incomplete and never served as complete';
}

/** The one line `lazyd staging relay` prints when a relay completes. */
export function relayDoneLine(info: RelayInfo): string {
  const mib = (info.bytes / (1024 * 1024)).toFixed(1);
  return (
    `relayed checkpoint #${info.id} (pids ${info.pids.join(', ')}): ${info.pagesHeld} pages, ${mib} MiB in ` +
    `${Math.round(info.ms ?? 0)} ms; the dump has its CLOSE`
  );
}

function bytesToPages(bytes: number): number {
  return Math.max(1, Math.floor(bytes / PAGE_SIZE));
}

/** The daemon's relays: starts them, follows their native events, answers who waits for one. */
export class Relayer {
  private readonly relays = new Map<number, RelayInfo>();
  private readonly waiters = new Map<number, Array<(outcome: RelayOutcome) => void>>();
  /** Relays whose checkpoint was released before the pull ended: forgotten when it ends. */
  private readonly releasedWhilePulling = new Set<number>();
  /** The lazyd-link.json written for each relayed checkpoint and its token: removed once it is released. */
  private readonly linkTokens = new Map<number, { file: string; token: string }>();
  private readonly abort = new AbortController();

  constructor(
    private readonly native: NativeRelaySink,
    /** The daemon's TLS credentials (undefined: it runs without --tls). */
    private readonly tls: NativeTlsOptions | undefined,
    private readonly logger: Logger,
    /** A relay's pull started (its checkpoint is staged now) / ended, complete or not. */
    private readonly hooks: { started?: (checkpoint: number) => void; ended?: (checkpoint: number) => void } = {},
  ) {}

  list(): RelayInfo[] {
    return [...this.relays.values()].map((info) => ({ ...info, pids: [...info.pids] }));
  }

  get(checkpoint: number): RelayInfo | undefined {
    return this.relays.get(checkpoint);
  }

  /** Stops the waits for dumps that are not listening yet (shutdown). */
  close(): void {
    this.abort.abort();
  }

  /**
   * Waits for the dump's server, reads its images and starts the native relay: resolves with the checkpoint
   * once the pull runs. Rejects with one line when it cannot start (then the dump, if it was reached, has had a
   * reset and resumes the tasks; if it was not, it still waits for a client).
   */
  async start(request: RelayRequest): Promise<RelayInfo> {
    const from = `${request.host.includes(':') ? `[${request.host}]` : request.host}:${request.port}`;
    this.logger.info({ dir: request.dir, from }, `Relay: waiting for the dump's page server on ${from}`);
    const waitedMs = await waitForListen(request.host, request.port, request.listenTimeoutMs, this.abort.signal);
    let plan: RelayPlan;
    try {
      if (request.tls && this.tls === undefined) {
        throw new Error('--relay-tls: this daemon runs without --tls, so it has no certificate to show the dump: start it with --tls and its --tls-* flags');
      }
      plan = await relayPlan(path.resolve(request.dir), request.format);
    } catch (error) {
      // The dump waits for its one client with the tasks frozen, forever: a reset makes it fail and resume them.
      const reset = await resetDump(request.host, request.port);
      throw new Error(`${(error as Error).message}; ${reset}`);
    }
    const started = Date.now();
    const { checkpoint: id, token } = this.native.startRelay({
      host: request.host,
      port: request.port,
      connectTimeoutMs: request.connectTimeoutMs,
      format: plan.format,
      // The dump's certificate must name the address it listens on, as criu checks a server's (--tls-no-cn-verify too).
      ...(request.tls && this.tls ? { tls: { ...this.tls, peerName: request.host } } : {}),
      tasks: plan.tasks,
      requestPages: bytesToPages(request.requestBytes),
      inflightBytes: request.inflightBytes,
      stallTimeoutMs: request.stallTimeoutMs,
    });
    const info: RelayInfo = {
      id,
      pids: plan.tasks.map((t) => t.pid),
      dir: plan.dir,
      from,
      state: 'pulling',
      pagesHeld: 0,
      pagesTotal: plan.pages,
      bytes: 0,
      startedAt: started,
    };
    this.relays.set(id, info);
    this.hooks.started?.(id);
    // Before the answer that the pull runs (a script copies -D once it has it), and before any event of the relay
    // runs (synchronous): a release then finds the file to remove.
    const link = writeRelayLink(plan.dir, id, token);
    if (link.file) {
      info.linkFile = link.file;
      this.linkTokens.set(id, { file: link.file, token });
    }
    if (link.warning) this.logger.warn({ checkpoint: id, dir: plan.dir }, `Relay checkpoint #${id}: ${link.warning}`);
    if (plan.note) this.logger.warn({ checkpoint: id, dir: plan.dir }, `Relay checkpoint #${id}: ${plan.note}`);
    this.logger.info(
      { checkpoint: id, pids: info.pids, pages: plan.pages, headers: plan.format, from, waitedMs: Math.round(waitedMs), linkFile: link.file },
      `Relay checkpoint #${id}: pulling ${plan.pages} lazy pages of pids ${info.pids.join(', ')} from the dump on ${from}`,
    );
    return { ...info };
  }

  /** Resolves when the relay completes or fails (at once when it already has). */
  wait(checkpoint: number): Promise<RelayOutcome> {
    const info = this.relays.get(checkpoint);
    if (!info) return Promise.reject(new Error(`no relay #${checkpoint}`));
    if (info.state === 'complete' || info.state === 'failed') return Promise.resolve(outcomeOf(info));
    return new Promise((resolve) => {
      const list = this.waiters.get(checkpoint) ?? [];
      list.push(resolve);
      this.waiters.set(checkpoint, list);
    });
  }

  /** Handles one native event; returns true when it was a relay event. */
  handle(event: {
    type: string; checkpoint?: number; pagesHeld?: number; pagesTotal?: number; bytes?: number; ms?: number; message?: string;
    demandRequests?: number; bulkRequests?: number; shortReplies?: number; bytesCopied?: number;
  }): boolean {
    if (event.type === 'released') {
      // The token names nothing any more: a copy of the directory made later must not send a HELLO with it (the
      // file is left if a newer relay of the same directory has written its own).
      const link = this.linkTokens.get(event.checkpoint ?? -1);
      if (link) {
        this.linkTokens.delete(event.checkpoint!);
        void removeRelayLink(link.file, link.token);
      }
      // Released while it pulls (--staging-restores, a TTL): the pull goes on to its CLOSE, and the relay is
      // forgotten once it ends; one that has ended is forgotten now. Either way the event goes on to the stager.
      const released = this.relays.get(event.checkpoint ?? -1);
      if (released && released.state === 'pulling') this.releasedWhilePulling.add(released.id);
      else if (released) this.relays.delete(released.id);
      return false;
    }
    if (event.type !== 'relay-progress' && event.type !== 'relay-done' && event.type !== 'relay-failed') return false;
    const info = this.relays.get(event.checkpoint ?? -1);
    if (!info) return true;
    info.pagesHeld = event.pagesHeld ?? info.pagesHeld;
    info.pagesTotal = event.pagesTotal || info.pagesTotal;
    info.bytes = event.bytes ?? info.bytes;
    if (event.type === 'relay-progress') return true;
    info.ms = event.ms;
    if (event.type === 'relay-done') {
      info.state = 'complete';
      this.logger.info(
        { checkpoint: info.id, pages: info.pagesHeld, bytes: info.bytes, ms: info.ms, ...requestCounts(event) },
        `Relay checkpoint #${info.id} complete: ${info.pagesHeld} pages held, the dump has its CLOSE and ends (its tasks are freed)`,
      );
    } else {
      info.state = 'failed';
      info.message = event.message || 'the relay failed';
      this.logger.error(
        { checkpoint: info.id, pagesHeld: info.pagesHeld, pagesTotal: info.pagesTotal, ...requestCounts(event) },
        `Relay checkpoint #${info.id} failed: ${info.message}; ${relayFailureState(info)}`,
      );
    }
    this.hooks.ended?.(info.id);
    for (const resolve of this.waiters.get(info.id) ?? []) resolve(outcomeOf(info));
    this.waiters.delete(info.id);
    if (this.releasedWhilePulling.delete(info.id)) this.relays.delete(info.id);
    return true;
  }
}

/** The native relay's counters, for the log: bytes copied (not held by reference), demand GETs (for restores),
 * bulk GETs, clamped replies. */
function requestCounts(event: { demandRequests?: number; bulkRequests?: number; shortReplies?: number; bytesCopied?: number }): Record<string, number> {
  const out: Record<string, number> = {};
  if (event.bytesCopied !== undefined) out.bytesCopied = event.bytesCopied;
  if (event.demandRequests !== undefined) out.demandRequests = event.demandRequests;
  if (event.bulkRequests !== undefined) out.bulkRequests = event.bulkRequests;
  if (event.shortReplies !== undefined) out.shortReplies = event.shortReplies;
  return out;
}

function outcomeOf(info: RelayInfo): RelayOutcome {
  const copy = { ...info, pids: [...info.pids] };
  return info.state === 'complete' ? { ok: true, info: copy } : { ok: false, info: copy, message: info.message ?? 'the relay failed' };
}
