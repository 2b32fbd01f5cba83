// The primary's side of `lazyd replicate`: every --interval an epoch — `criu dump --leave-running` into a fresh
// directory (src/replicate/dump.ts), the pages that changed since the committed epoch found by --tracking
// (tracking.ts: CRIU's dirty tracking with the epoch flattened onto the previous one, flatten.ts; or a SHA-256
// per page of each pages-*.img compared with the committed epoch's, page-delta.ts; or none, every page), the
// changed pages and every other image sent to the standby agent, then `replica-commit`; the standby acknowledges
// once it has rebuilt and checked the epoch and renamed it into place. A standby that has failed over answers
// `replica-fenced`: this primary stops (and, with --kill-on-fence, SIGKILLs the tree) — README "Replication and
// failover", fencing.
//
// Any failed epoch ends the run, and a new run starts with an epoch of every page: with dirty tracking that
// matters, as CRIU resets the soft-dirty bits during a dump whether or not its epoch is then committed, so only
// an unbroken chain of committed epochs says which pages changed.
import fs from 'node:fs';
import path from 'node:path';
import type { SecureContextOptions } from 'node:tls';
import { Channel, PING_MS, type Message } from '../migrate/channel.js';
import { connectAgentSocket } from './connect.js';
import { dumpLeaveRunning } from './dump.js';
import { flattenEpoch, pagemapEncodingFor, type FlattenedPages } from './flatten.js';
import { changedRuns, hashPages, sha256FileAsync, writeDelta, type PageHashes } from './page-delta.js';
import { REPLICA_VERSION, sendReplica, type EpochFile, type ReplicaMessage } from './protocol.js';
import { observeMs, type ReplicateCounters } from './stats.js';
import type { TrackingMode } from './tracking.js';

export interface ReplicateOptions {
  pid: number;
  id: string;
  to: { host: string; port: number };
  tls?: SecureContextOptions;
  tlsVerifyName: boolean;
  criu: string;
  criuVersion: string;
  pageSize: number;
  intervalMs: number;
  /** Stop after this many committed epochs (0: never). */
  epochs: number;
  tracking: TrackingMode;
  workDir: string;
  killOnFence: boolean;
  linkTimeoutMs: number;
  /** Sent to the standby: fail over on its own after this long without this primary (0: never). */
  failoverAfterMs: number;
  /** One progress object per epoch (and per event). */
  progress: (event: Record<string, unknown>) => void;
  /** Kept up to date for --metrics-address. */
  counters?: ReplicateCounters;
}

export interface EpochReport {
  epoch: number;
  frozenMs: number;
  /** Finding the changed pages and the files' SHA-256 (dirty: flattening the epoch; compare: hashing every page). */
  hashMs: number;
  pages: number;
  pagesChanged: number;
  bytesSent: number;
  sendMs: number;
  commitMs: number;
  /** Dump start → standby's ack. */
  epochMs: number;
  /** Seconds the standby's committed state is behind now, at the ack (the epoch's dump time). */
  lagSeconds: number;
}

export type ReplicateOutcome = { outcome: 'done'; epochs: number } | { outcome: 'fenced'; reason: string; killed: boolean } | { outcome: 'failed'; reason: string };

const IMAGE = /^[\w.-]+\.img$/;
const PAGES_IMAGE = /^pages-\d+\.img$/;

/** A connection to the standby, past hello/welcome. */
class StandbyLink {
  private waiters: { test: (m: ReplicaMessage) => boolean; resolve: (m: ReplicaMessage) => void; reject: (e: Error) => void }[] = [];
  private failure: Error | undefined;
  fenced: string | undefined;
  /** Rejects once the connection is lost: a send waiting for 'drain' on a dead socket would wait forever. */
  readonly lost: Promise<never>;
  private markLost!: (error: Error) => void;

  constructor(readonly channel: Channel) {
    this.lost = new Promise<never>((_, reject) => (this.markLost = reject));
    this.lost.catch(() => undefined);
    channel.on('message', (message: Message) => {
      const m = message as unknown as ReplicaMessage;
      if (m.t === 'replica-fenced') this.fenced = m.reason;
      for (const waiter of [...this.waiters]) {
        if (waiter.test(m) || m.t === 'replica-fenced' || m.t === 'replica-refuse') {
          this.waiters.splice(this.waiters.indexOf(waiter), 1);
          waiter.resolve(m);
        }
      }
    });
    const lost = (error: Error) => {
      this.failure ??= error;
      this.markLost(this.failure);
      for (const waiter of this.waiters.splice(0)) waiter.reject(this.failure);
    };
    channel.on('error', lost);
    channel.on('close', () => lost(new Error('the standby closed the connection')));
  }

  private sending = false;
  private pinger: NodeJS.Timeout | undefined;

  /**
   * Liveness without Channel.keepAlive: its pings would land in the middle of a file's bytes (the standby would
   * read them as image data), so this end pings only between files; the standby pings all the time.
   */
  keepAlive(timeoutMs: number): void {
    let lastHeard = performance.now();
    this.channel.socket.on('data', () => (lastHeard = performance.now()));
    this.pinger = setInterval(() => {
      if (performance.now() - lastHeard > timeoutMs) {
        this.stop();
        this.channel.socket.destroy(new Error(`the standby sent nothing for ${(timeoutMs / 1000).toFixed(1)} s (link timeout): the link is down or the standby hangs`));
        return;
      }
      if (!this.sending) this.channel.send({ t: 'ping' });
    }, PING_MS);
    this.pinger.unref();
    this.channel.on('close', () => this.stop());
  }

  stop(): void {
    if (this.pinger) clearInterval(this.pinger);
    this.pinger = undefined;
  }

  async sendFile(name: string, file: string): Promise<void> {
    this.sending = true;
    try {
      await Promise.race([this.channel.sendFile(name, file), this.lost]);
    } finally {
      this.sending = false;
    }
  }

  wait(test: (m: ReplicaMessage) => boolean): Promise<ReplicaMessage> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => this.waiters.push({ test, resolve, reject }));
  }
}

async function connect(options: ReplicateOptions): Promise<{ link: StandbyLink; committed: number | null } | { fenced: string }> {
  const socket = await connectAgentSocket(options.to, options.tls, options.tlsVerifyName);
  const channel = new Channel(socket);
  channel.on('error', () => undefined);
  const link = new StandbyLink(channel);
  sendReplica(channel, {
    t: 'replica-hello', v: REPLICA_VERSION, id: options.id, criuVersion: options.criuVersion, pageSize: options.pageSize,
    failoverAfterMs: options.failoverAfterMs, linkTimeoutMs: options.linkTimeoutMs,
  });
  const answer = await link.wait((m) => m.t === 'replica-welcome');
  if (answer.t === 'replica-fenced') {
    channel.destroy();
    return { fenced: answer.reason };
  }
  if (answer.t === 'replica-refuse') {
    channel.destroy();
    throw new Error(`the standby refused the replica: ${answer.reason}`);
  }
  link.keepAlive(options.linkTimeoutMs);
  return { link, committed: (answer as Extract<ReplicaMessage, { t: 'replica-welcome' }>).committed };
}

function killTree(pid: number): boolean {
  try {
    process.kill(pid, 'SIGKILL');
    return true;
  } catch {
    return false;
  }
}

/** Runs epochs until --epochs, a fence, or a failure; never leaves the tree frozen (criu thaws it on exit). */
export async function replicate(options: ReplicateOptions, stop: AbortSignal): Promise<ReplicateOutcome> {
  fs.mkdirSync(options.workDir, { recursive: true, mode: 0o700 });
  const fenced = (reason: string): ReplicateOutcome => {
    const killed = options.killOnFence ? killTree(options.pid) : false;
    options.progress({ event: 'fenced', reason, killed });
    return { outcome: 'fenced', reason, killed };
  };
  let connected: Awaited<ReturnType<typeof connect>>;
  try {
    connected = await connect(options);
  } catch (error) {
    return { outcome: 'failed', reason: (error as Error).message };
  }
  if ('fenced' in connected) return fenced(connected.fenced);
  const { link } = connected;
  options.progress({ event: 'connected', to: `${options.to.host}:${options.to.port}`, committed: connected.committed, mode: options.tracking });
  // Hashes of the last epoch the standby committed, per pages file; deltas are against it.
  let base: { epoch: number; hashes: Map<string, PageHashes> } | undefined;
  let epoch = (connected.committed ?? 0) + 1;
  let committedCount = 0;
  let previousDir: string | undefined;
  try {
    while (!stop.aborted) {
      const started = performance.now();
      const dumpedAt = Date.now();
      const dir = path.join(options.workDir, `epoch-${epoch}`);
      fs.rmSync(dir, { recursive: true, force: true });
      fs.mkdirSync(dir, { mode: 0o700 });
      // Dirty tracking: from the second epoch on, on the previous one (committed: any failure ends the run).
      const dirty = options.tracking === 'dirty';
      const tracking = dirty ? { parent: previousDir ? `../${path.basename(previousDir)}` : undefined } : undefined;
      const { ms: frozenMs } = await dumpLeaveRunning(options.criu, options.pid, dir, tracking);
      if (options.counters) options.counters.inFlight = true;
      const hashStarted = performance.now();
      const flattened: Map<string, FlattenedPages> | undefined = dirty ? await flattenEpoch(dir, options.pageSize, pagemapEncodingFor(options.criuVersion)) : undefined;
      const files: EpochFile[] = [];
      const sends: { name: string; file: string }[] = [];
      const hashes = new Map<string, PageHashes>();
      let pages = 0;
      let pagesChanged = 0;
      for (const name of fs.readdirSync(dir).filter((n) => IMAGE.test(n)).sort()) {
        const file = path.join(dir, name);
        const flat = flattened?.get(name);
        if (flat) {
          const size = fs.statSync(file).size;
          const sha256 = await sha256FileAsync(file);
          pages += flat.pages;
          if (previousDir && base && flat.onParent) {
            const deltaFile = `${file}.delta`;
            pagesChanged += writeDelta(file, flat.runs, options.pageSize, deltaFile);
            files.push({ name, size, sha256, kind: 'delta' });
            sends.push({ name: `${name}.delta`, file: deltaFile });
            continue;
          }
          pagesChanged += flat.pages;
          files.push({ name, size, sha256, kind: 'whole' });
        } else if (PAGES_IMAGE.test(name) && options.tracking === 'compare') {
          const current = await hashPages(file, options.pageSize);
          hashes.set(name, current);
          const count = current.hashes.length / 32;
          pages += count;
          const previous = base?.hashes.get(name);
          if (previous) {
            const runs = changedRuns(current, previous);
            const deltaFile = `${file}.delta`;
            pagesChanged += writeDelta(file, runs, options.pageSize, deltaFile);
            files.push({ name, size: current.size, sha256: current.sha256, kind: 'delta' });
            sends.push({ name: `${name}.delta`, file: deltaFile });
            continue;
          }
          pagesChanged += count;
          files.push({ name, size: current.size, sha256: current.sha256, kind: 'whole' });
        } else {
          const size = fs.statSync(file).size;
          if (PAGES_IMAGE.test(name)) {
            pages += Math.ceil(size / options.pageSize);
            pagesChanged += Math.ceil(size / options.pageSize);
          }
          files.push({ name, size, sha256: await sha256FileAsync(file), kind: 'whole' });
        }
        sends.push({ name, file });
      }
      const hashMs = performance.now() - hashStarted;
      if (link.fenced) return fenced(link.fenced);
      const sendStarted = performance.now();
      const bytesBefore = link.channel.bytesOut;
      sendReplica(link.channel, { t: 'replica-epoch', epoch, base: previousDir && base ? base.epoch : null, files });
      for (const send of sends) await link.sendFile(send.name, send.file);
      sendReplica(link.channel, { t: 'replica-commit', epoch, dumpedAt });
      const sendMs = performance.now() - sendStarted;
      const ack = await link.wait((m) => m.t === 'replica-committed' && m.epoch === epoch);
      if (ack.t === 'replica-fenced') return fenced(ack.reason);
      if (ack.t === 'replica-refuse') return { outcome: 'failed', reason: `the standby refused epoch ${epoch}: ${ack.reason}` };
      const done = ack as Extract<ReplicaMessage, { t: 'replica-committed' }>;
      const report: EpochReport = {
        epoch, frozenMs, hashMs, pages, pagesChanged, bytesSent: link.channel.bytesOut - bytesBefore, sendMs,
        commitMs: done.commitMs, epochMs: performance.now() - started, lagSeconds: (Date.now() - dumpedAt) / 1000,
      };
      options.progress({ event: 'committed', ...report });
      if (options.counters) count(options.counters, report, dumpedAt);
      base = { epoch, hashes };
      if (previousDir) fs.rmSync(previousDir, { recursive: true, force: true });
      previousDir = dir;
      committedCount++;
      epoch++;
      if (options.epochs > 0 && committedCount >= options.epochs) break;
      const wait = options.intervalMs - (performance.now() - started);
      if (wait > 0) await abortableDelay(wait, stop);
    }
  } catch (error) {
    if (options.counters) options.counters.inFlight = false;
    link.stop();
    if (link.fenced) return fenced(link.fenced);
    link.channel.destroy();
    return { outcome: 'failed', reason: `epoch ${epoch}: ${(error as Error).message}` };
  }
  link.stop();
  sendReplica(link.channel, { t: 'replica-bye' });
  link.channel.end();
  return { outcome: 'done', epochs: committedCount };
}

function count(c: ReplicateCounters, r: EpochReport, dumpedAt: number): void {
  c.epochsCommitted++;
  c.pages += r.pages;
  c.pagesChanged += r.pagesChanged;
  c.bytesSent += r.bytesSent;
  observeMs(c.frozen, r.frozenMs);
  observeMs(c.hash, r.hashMs);
  observeMs(c.commit, r.commitMs);
  c.last = { epoch: r.epoch, frozenMs: r.frozenMs, pagesChanged: r.pagesChanged, bytesSent: r.bytesSent, commitMs: r.commitMs };
  c.committedStateAt = dumpedAt;
  c.inFlight = false;
}

/** The pause to the next epoch's start (the schedule, not a wait for an event); ends early on stop. */
function abortableDelay(ms: number, stop: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    stop.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}
