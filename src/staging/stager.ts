// Diskless staging, the control-plane half: `criu dump --page-server --address A --port P -D DIR` uploads every
// page into the running `lazyd --page-server --port P`, which keeps them in memory (native PageStore) and
// serves them lazily, on the same port, to any number of `criu lazy-pages --page-server` restores.
//
// Where the images go. The upload protocol does not carry the dump's -D, so lazyd writes its pagemap and
// pages images into its own staging directory (--staging-dir, default -D). Point `criu dump -D` and lazyd's
// staging dir at the same directory on one host — as zdtm shares the directory with `criu page-server` —
// and the dump's directory is complete when the dump exits: the native side holds back the dump's CLOSE
// status until the images below are on disk. Copying that directory to the destination is all a restore needs.
//
// What is written, per uploaded pagemap (ids never collide with the dump's own: 0x10001 upwards, as a
// receiving criu page-server does):
//   pagemap-<pid>.img / pagemap-shmem-<id>.img  PagemapHead{pages_id} and the entries, in the encoding of the
//                                              dumping CRIU (24-byte headers: 4.1 encoding; 32-byte: 4.2);
//                                              lazy entries as PE_LAZY only (no data), or with --persist as
//                                              PE_LAZY|PE_PRESENT with their data;
//   pages-<pages_id>.img                       the eager pages (and with --persist the lazy ones too).
// The lazy pages themselves stay in memory, served by GET until a policy releases the checkpoint:
// --staging-restores N (after N completed restores), --staging-ttl S (S seconds after staging), or release()
// (from outside the daemon: the control socket, control.ts).
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../log.js';
import type { PageServer, PageServerEvent, StagedPagemap } from '../native.js';
import { encodePagemap, writeFileAtomic, PE_LAZY, PE_PRESENT, type PagemapEntryInput } from '../images/index.js';
import { LINK_FEATURES, LINK_VERSION, linkFilePath, writeLinkCapability } from '../link/capability-file.js';

/** The first pages_id lazyd uses: that of a receiving criu page-server (docs/protocol.md §1.5), above the dump's own ids. */
export const STAGED_PAGES_ID_BASE = 0x10001;

export interface StagingOptions {
  /** Where the pagemap/pages images of an upload are written: the dump's -D (shared directory). */
  dir: string;
  /** Also write the lazy pages to pages-N.img (PE_LAZY|PE_PRESENT), like criu page-server. */
  persist?: boolean;
  /** Daemon-wide cap on staged and uploading page bytes (--staging-max-bytes; default: the flag's). */
  maxBytes?: number;
  /** Release a checkpoint after this many completed restores (--staging-restores; default: the flag's, never). */
  restores?: number;
  /** Release a checkpoint this many seconds after it was staged (0 or undefined: never). */
  ttlSeconds?: number;
}

/** The native page server's staging events (see PageServer in native/core/server/page_server.h). */
export type StagingEvent = PageServerEvent;

/** What the stager asks of the native page server. */
export type NativeStagingSink = Pick<PageServer, 'writePages' | 'ackUpload' | 'release'>;

export interface StagedCheckpointInfo {
  id: number;
  pids: number[];
  bytes: number;
  files: string[];
  restores: number;
  stagedAt: number;
}

export function pagemapFileName(pagemap: Pick<StagedPagemap, 'type' | 'id'>): string {
  return pagemap.type === 'pid' ? `pagemap-${pagemap.id}.img` : `pagemap-shmem-${pagemap.id}.img`;
}

/**
 * The entries as the pagemap image lists them. Lazy entries keep only PE_LAZY (their data stays in lazyd's
 * memory), unless persist: then they keep PE_LAZY|PE_PRESENT and their data goes to pages-N.img.
 */
export function imageEntries(entries: BigUint64Array, persist: boolean): PagemapEntryInput[] {
  const out: PagemapEntryInput[] = [];
  for (let i = 0; i + 2 < entries.length; i += 3) {
    let flags = Number(entries[i + 2]);
    if (!persist && flags & PE_LAZY) flags &= ~PE_PRESENT;
    out.push({ vaddr: entries[i], nrPages: entries[i + 1], flags });
  }
  return out;
}

export class Stager {
  private nextPagesId = STAGED_PAGES_ID_BASE;
  /** Files written for uploads whose dump has not committed yet: removed if the upload fails. */
  private readonly pending = new Map<number, string[]>();
  private readonly staged = new Map<number, StagedCheckpointInfo>();
  private readonly timers = new Map<number, NodeJS.Timeout>();
  /** Relayed checkpoints still pulling: their --staging-ttl starts when the pull ends (startTtl). */
  private readonly ttlDeferred = new Set<number>();
  /** Waiting for a checkpoint's 'released' event (releaseAndWait). */
  private readonly releaseWaiters = new Map<number, Array<() => void>>();

  constructor(
    private readonly options: StagingOptions,
    private readonly native: NativeStagingSink,
    private readonly logger: Logger,
  ) {}

  checkpoints(): StagedCheckpointInfo[] {
    return [...this.staged.values()];
  }

  release(checkpoint: number, reason = 'released on request'): void {
    this.native.release(checkpoint, reason);
  }

  /** release(), resolving once the native side has released the checkpoint (at once if it is not staged). */
  releaseAndWait(checkpoint: number, reason?: string): Promise<void> {
    if (!this.staged.has(checkpoint)) return Promise.resolve();
    const released = new Promise<void>((resolve) => {
      const waiters = this.releaseWaiters.get(checkpoint) ?? [];
      waiters.push(resolve);
      this.releaseWaiters.set(checkpoint, waiters);
    });
    this.release(checkpoint, reason);
    return released;
  }

  /**
   * A relay's checkpoint is staged when its pull starts, but a release while it pulls resets the dump (it then
   * resumes the tasks): its TTL starts only when the pull has ended (startTtl), not at 'staged'.
   */
  deferTtl(checkpoint: number): void {
    this.ttlDeferred.add(checkpoint);
  }

  /** The TTL of a checkpoint whose deferTtl() wait is over (its relay ended, complete or not). */
  startTtl(checkpoint: number): void {
    if (!this.ttlDeferred.delete(checkpoint)) return;
    if (this.staged.has(checkpoint)) this.armTtl(checkpoint);
  }

  private armTtl(checkpoint: number): void {
    const ttl = this.options.ttlSeconds ?? 0;
    if (ttl <= 0) return;
    const timer = setTimeout(() => this.native.release(checkpoint, `after ${ttl} s (--staging-ttl)`), ttl * 1000);
    timer.unref();
    this.timers.set(checkpoint, timer);
  }

  /** Stop the TTL timers (shutdown). */
  close(): void {
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
  }

  /** Handles one native event; returns true when it was a staging event. */
  handle(event: StagingEvent): boolean {
    switch (event.type) {
      case 'upload-sealed':
        void this.writeImages(event);
        return true;
      case 'staged':
        this.onStaged(event);
        return true;
      case 'restore-done': {
        const info = this.staged.get(event.checkpoint);
        if (info) info.restores = event.restores;
        this.logger.info(
          { checkpoint: event.checkpoint, restores: event.restores, session: event.session },
          `Staged checkpoint #${event.checkpoint}: restore completed (${event.restores} so far)`,
        );
        return true;
      }
      case 'released': {
        const timer = this.timers.get(event.checkpoint);
        if (timer) clearTimeout(timer);
        this.timers.delete(event.checkpoint);
        this.ttlDeferred.delete(event.checkpoint);
        const info = this.staged.get(event.checkpoint);
        this.staged.delete(event.checkpoint);
        // Without --persist the images lazyd wrote are of no use once the lazy pages are gone, and its pages
        // images hold the eager pages (process memory): lazyd wrote them, lazyd removes them. (Restores in
        // progress read their images at start.) With --persist they are the checkpoint on disk: kept.
        const removed = !this.options.persist && info ? info.files : [];
        const waiters = this.releaseWaiters.get(event.checkpoint) ?? [];
        this.releaseWaiters.delete(event.checkpoint);
        void Promise.all(removed.map((file) => fs.rm(file, { force: true }).catch(() => undefined))).then(() => waiters.forEach((resolve) => resolve()));
        this.logger.info(
          { checkpoint: event.checkpoint, memoryUsed: event.memoryUsed, filesRemoved: removed.length },
          `Staged checkpoint #${event.checkpoint} released: ${event.message}; its memory is freed once the restores in progress end` +
            (removed.length ? `; removed the ${removed.length} images lazyd wrote for it` : ''),
        );
        return true;
      }
      case 'session-end':
        if (event.upload && !event.ok) void this.dropPending(event);
        return false; // logged by the service too
      default:
        return false;
    }
  }

  private async writeImages(event: StagingEvent): Promise<void> {
    const dir = this.options.dir;
    const persist = this.options.persist ?? false;
    const encoding = event.format === 32 ? '4.2' : '4.1';
    const files: string[] = [];
    this.pending.set(event.session, files);
    try {
      for (const pagemap of event.pagemaps ?? []) {
        const pagesId = this.nextPagesId++;
        const pagesFile = path.join(dir, `pages-${pagesId}.img`);
        files.push(pagesFile);
        await this.native.writePages(event.session, pagemap.type, pagemap.id, pagesFile, persist);
        const pagemapFile = path.join(dir, pagemapFileName(pagemap));
        files.push(pagemapFile);
        await writeFileAtomic(pagemapFile, encodePagemap({ pagesId }, imageEntries(pagemap.entries, persist), { encoding }));
        if (this.pending.get(event.session) !== files) {
          // The dump went away meanwhile (session-end already handled): take back what this loop wrote.
          await Promise.all(files.map((file) => fs.rm(file, { force: true }).catch(() => undefined)));
          return;
        }
      }
      if (event.token) {
        // The capability file that lets a lazyd lazy-pages open with HELLO (docs/protocol.md §7).
        files.push(linkFilePath(dir));
        await writeLinkCapability(dir, { version: LINK_VERSION, features: [...LINK_FEATURES], token: event.token, checkpoint: event.session });
        if (this.pending.get(event.session) !== files) {
          await Promise.all(files.map((file) => fs.rm(file, { force: true }).catch(() => undefined)));
          return;
        }
      }
      this.logger.info(
        { session: event.session, dir, pagemaps: event.pagemaps?.length ?? 0, encoding, persist },
        `Upload #${event.session}: images written; sending the CLOSE status`,
      );
      this.native.ackUpload(event.session, true);
    } catch (error) {
      const message = `writing the staged images into ${dir} failed: ${(error as Error).message}`;
      this.logger.error({ session: event.session }, message);
      this.native.ackUpload(event.session, false, message);
      // session-end (failed) removes what was written
    }
  }

  private async dropPending(event: StagingEvent): Promise<void> {
    const files = this.pending.get(event.session);
    this.pending.delete(event.session);
    if (!files?.length) return;
    await Promise.all(files.map((file) => fs.rm(file, { force: true }).catch(() => undefined)));
    this.logger.warn({ session: event.session, files: files.length }, `Upload #${event.session} failed: removed the images written for it`);
  }

  private onStaged(event: StagingEvent): void {
    const files = this.pending.get(event.session) ?? [];
    this.pending.delete(event.session);
    const pids = (event.pagemaps ?? []).filter((p) => p.type === 'pid').map((p) => p.id);
    const info: StagedCheckpointInfo = {
      id: event.checkpoint,
      pids,
      bytes: event.bytesHeld ?? 0,
      files,
      restores: 0,
      stagedAt: Date.now(),
    };
    this.staged.set(info.id, info);
    if (!this.ttlDeferred.has(info.id)) this.armTtl(info.id);
    this.logger.info(
      { checkpoint: info.id, pids, bytes: info.bytes, memoryUsed: event.memoryUsed },
      `Staged checkpoint #${info.id}: pids ${pids.join(', ')} served lazily from memory`,
    );
  }
}
