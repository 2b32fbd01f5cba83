// The standby side of `lazyd replicate` (README "Replication and failover"). One directory per replica under
// <state dir>/replicas/<id>/:
//   epoch-N/      the committed epoch: every image, rebuilt and checked (SHA-256 per file), and epoch.json
//   committed     symlink → epoch-N, replaced by rename(2): the one atomic step of a commit
//   incoming/     the epoch in flight, built beside the committed one; deleted when it is cut off
//   fenced.json   written at failover: from then on every primary of this id is told `replica-fenced`
// Memory (tmpfs) is bounded by the committed epoch plus the one in flight (--replica-cap); a pages file whose
// pages all stayed the same is a hard link to the committed copy, not a second copy.
import fs from 'node:fs';
import path from 'node:path';
import type { Socket } from 'node:net';
import { Channel } from '../migrate/channel.js';
import { imageCompatibility } from '../migrate/criu-host.js';
import { applyDelta, sha256File } from '../replicate/page-delta.js';
import { REPLICA_VERSION, replicaIdProblem, sendReplica, type EpochFile, type ReplicaMessage, type ReplicaSummary } from '../replicate/protocol.js';
import { lazyPagesTotals, lastLine } from './restore.js';
import { restoreLocally } from './replica-restore.js';
import { observeMs, standbyCounters } from '../replicate/stats.js';
import type { AgentHost } from './session.js';
import type { Logger } from '../log.js';

const FILE_NAME = /^[\w.-]+\.img(\.delta)?$/;

interface EpochMeta {
  epoch: number;
  dumpedAt: number;
  committedAt: number;
  bytes: number;
}

class Replica {
  committed: EpochMeta | null = null;
  session: ReplicaSession | undefined;
  fenced: { at: number; epoch: number; reason: string; pid: number } | undefined;
  failingOver = false;
  autoTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly id: string,
    readonly dir: string,
  ) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    try {
      const target = fs.readlinkSync(path.join(dir, 'committed'));
      this.committed = JSON.parse(fs.readFileSync(path.join(dir, target, 'epoch.json'), 'utf8')) as EpochMeta;
    } catch {
      this.committed = null;
    }
    try {
      this.fenced = JSON.parse(fs.readFileSync(path.join(dir, 'fenced.json'), 'utf8'));
    } catch {
      this.fenced = undefined;
    }
    fs.rmSync(path.join(dir, 'incoming'), { recursive: true, force: true });
  }

  get committedDir(): string | undefined {
    return this.committed ? path.join(this.dir, `epoch-${this.committed.epoch}`) : undefined;
  }
}

export interface ReplicaHost extends AgentHost {
  /** Bytes the committed epoch and the one in flight may take together (--replica-cap). */
  replicaCapBytes: number;
  /** --failover-after: fail over once a replica's primary has been gone this long (0: only on request). */
  failoverAfterMs: number;
}

export class ReplicaStore {
  private readonly replicas = new Map<string, Replica>();
  /** For lazyd agent --metrics-address. */
  readonly counters = standbyCounters();

  constructor(
    private readonly host: ReplicaHost,
    private readonly logger: Logger,
  ) {}

  /** A connection whose first line is a replication message. */
  accept(socket: Socket): void {
    new ReplicaSession(socket, this, this.host, this.logger);
  }

  replica(id: string): Replica {
    let replica = this.replicas.get(id);
    if (!replica) {
      replica = new Replica(id, path.join(this.host.workDir, 'replicas', id));
      this.replicas.set(id, replica);
    }
    return replica;
  }

  summaries(): ReplicaSummary[] {
    const root = path.join(this.host.workDir, 'replicas');
    const ids = fs.existsSync(root) ? fs.readdirSync(root) : [];
    return ids.map((id) => {
      const r = this.replica(id);
      return {
        id,
        committed: r.committed?.epoch ?? null,
        committedAt: r.committed?.committedAt ?? null,
        connected: !!r.session,
        fenced: !!r.fenced,
        failedOver: r.fenced ? { epoch: r.fenced.epoch, pid: r.fenced.pid, at: r.fenced.at } : null,
        bytes: r.committed?.bytes ?? 0,
      };
    });
  }

  /** The primary of `replica` is gone (not a clean stop): fail over after its --failover-after, unless it comes back. */
  primaryLost(replica: Replica, failoverAfterMs: number): void {
    if (failoverAfterMs <= 0 || !replica.committed || replica.fenced) return;
    clearTimeout(replica.autoTimer);
    this.logger.warn(`replica ${replica.id}: the primary is gone; failover in ${(failoverAfterMs / 1000).toFixed(1)} s unless it comes back`);
    replica.autoTimer = setTimeout(() => {
      replica.autoTimer = undefined;
      if (replica.session) return;
      this.failover(replica.id, `the primary was unreachable for --failover-after ${(failoverAfterMs / 1000).toFixed(1)} s`).catch((error: Error) =>
        this.logger.error(`replica ${replica.id}: automatic failover failed: ${error.message}`),
      );
    }, failoverAfterMs);
  }

  /** Restores the last committed epoch here, lazily from this host's images; fences the primary first. */
  async failover(id: string, reason: string): Promise<{ pid: number; epoch: number; decisionToRunningMs: number }> {
    const problem = replicaIdProblem(id);
    if (problem) throw new Error(problem);
    if (!this.replicas.has(id) && !fs.existsSync(path.join(this.host.workDir, 'replicas', id))) {
      throw new Error(`this agent holds no replica ${JSON.stringify(id)} (\`lazyd replicate status\` lists them)`);
    }
    const replica = this.replica(id);
    if (replica.fenced) throw new Error(`replica ${id} has already failed over (epoch ${replica.fenced.epoch}, pid ${replica.fenced.pid})`);
    if (replica.failingOver) throw new Error(`replica ${id} is failing over already`);
    const dir = replica.committedDir;
    if (!replica.committed || !dir) throw new Error(`replica ${id} has no committed epoch on this host: nothing to restore`);
    const decision = performance.now();
    replica.failingOver = true;
    clearTimeout(replica.autoTimer);
    const epoch = replica.committed.epoch;
    // Fence before anything runs here: the connected primary (if any) is told, and every later one too.
    const fence = { at: Date.now(), epoch, reason, pid: 0 };
    fs.writeFileSync(path.join(replica.dir, 'fenced.json'), JSON.stringify(fence));
    replica.fenced = fence;
    replica.session?.fence(`replica ${id} failed over to this standby (epoch ${epoch}): ${reason}`);
    this.logger.warn(`replica ${id}: failing over to epoch ${epoch}: ${reason}`);
    try {
      const { pid, lazyPages } = await restoreLocally(this.host.criuPath, dir);
      const ms = performance.now() - decision;
      this.counters.failovers++;
      observeMs(this.counters.failoverRunning, ms);
      fence.pid = pid;
      fs.writeFileSync(path.join(replica.dir, 'fenced.json'), JSON.stringify(fence));
      this.logger.info(`replica ${id}: epoch ${epoch} restored as pid ${pid}, running ${ms.toFixed(0)} ms after the decision; its pages follow from local images`);
      void lazyPages.exited.then((code) => {
        const all = performance.now() - decision;
        if (code === 0) this.logger.info(`replica ${id}: every page present ${all.toFixed(0)} ms after the decision (${lazyPagesTotals(lazyPages.output()).line})`);
        else this.logger.error(`replica ${id}: lazy-pages failed (${code}): ${lastLine(lazyPages.output())}`);
      });
      return { pid, epoch, decisionToRunningMs: ms };
    } catch (error) {
      this.counters.failoversFailed++;
      this.logger.error(`replica ${id}: failover restore of epoch ${epoch} failed: ${(error as Error).message} (images kept in ${dir})`);
      throw error;
    } finally {
      replica.failingOver = false;
    }
  }

  /** The epoch in `incoming` is complete and checked: make it the committed one. Synchronous: nothing interleaves. */
  commit(replica: Replica, meta: EpochMeta): void {
    const incoming = path.join(replica.dir, 'incoming');
    fs.writeFileSync(path.join(incoming, 'epoch.json'), JSON.stringify(meta));
    const name = `epoch-${meta.epoch}`;
    const old = replica.committedDir;
    fs.rmSync(path.join(replica.dir, name), { recursive: true, force: true });
    fs.renameSync(incoming, path.join(replica.dir, name));
    const link = path.join(replica.dir, 'committed.tmp');
    fs.rmSync(link, { force: true });
    fs.symlinkSync(name, link);
    fs.renameSync(link, path.join(replica.dir, 'committed'));
    replica.committed = meta;
    if (old && old !== path.join(replica.dir, name)) fs.rmSync(old, { recursive: true, force: true });
  }
}

class ReplicaSession {
  private readonly channel: Channel;
  private replica: Replica | undefined;
  private failoverAfterMs = 0;
  private pageSize = 4096;
  private inFlight: { epoch: number; base: number | null; files: EpochFile[]; received: Set<string> } | undefined;
  private ended = false;

  constructor(
    socket: Socket,
    private readonly store: ReplicaStore,
    private readonly host: ReplicaHost,
    private readonly logger: Logger,
  ) {
    this.channel = new Channel(socket, (name) => this.fileTarget(name));
    this.channel.on('message', (message: ReplicaMessage) => {
      try {
        this.onMessage(message);
      } catch (error) {
        this.refuse((error as Error).message);
      }
    });
    this.channel.on('error', (error: Error) => this.lost(error.message));
    this.channel.on('close', () => this.lost('the primary closed the connection'));
  }

  fence(reason: string): void {
    sendReplica(this.channel, { t: 'replica-fenced', reason });
    this.discard('the standby failed over');
    this.channel.end();
    this.detach();
  }

  private detach(): void {
    if (this.replica?.session === this) this.replica.session = undefined;
    this.ended = true;
  }

  private refuse(reason: string): void {
    this.logger.error(`replica ${this.replica?.id ?? '?'}: ${reason}`);
    sendReplica(this.channel, { t: 'replica-refuse', reason });
    this.discard(reason);
    this.channel.end();
    this.detach();
  }

  private discard(why: string): void {
    if (!this.inFlight || !this.replica) return;
    fs.rmSync(path.join(this.replica.dir, 'incoming'), { recursive: true, force: true });
    this.store.counters.epochsDiscarded++;
    this.logger.warn(`replica ${this.replica.id}: epoch ${this.inFlight.epoch} discarded (${why}); epoch ${this.replica.committed?.epoch ?? 'none'} stays committed`);
    this.inFlight = undefined;
  }

  private lost(reason: string): void {
    if (this.ended) return;
    this.discard(reason);
    const replica = this.replica;
    this.detach();
    if (replica) {
      this.logger.warn(`replica ${replica.id}: lost the primary: ${reason}`);
      this.store.primaryLost(replica, this.failoverAfterMs);
    }
  }

  private fileTarget(name: string): string {
    const f = this.inFlight;
    if (!f || !this.replica) throw new Error(`a file (${name}) outside an epoch`);
    if (!FILE_NAME.test(name)) throw new Error(`refusing the file name ${JSON.stringify(name)}: not a CRIU image name`);
    const expected = f.files.some((e) => (e.kind === 'delta' ? `${e.name}.delta` : e.name) === name);
    if (!expected || f.received.has(name)) throw new Error(`the file ${name} is not (or no longer) expected in epoch ${f.epoch}`);
    f.received.add(name);
    return path.join(this.replica.dir, 'incoming', 'recv', name);
  }

  private onMessage(message: ReplicaMessage): void {
    switch (message.t) {
      case 'replica-hello':
        return this.hello(message);
      case 'replica-failover': {
        const id = message.id;
        this.store.failover(id, 'lazyd failover').then(
          (r) => sendReplica(this.channel, { t: 'replica-failed-over', id, ...r }),
          (error: Error) => sendReplica(this.channel, { t: 'replica-refuse', reason: error.message }),
        ).finally(() => {
          this.ended = true;
          this.channel.end();
        });
        return;
      }
      case 'replica-status':
        sendReplica(this.channel, { t: 'replica-state', replicas: this.store.summaries() });
        this.ended = true;
        this.channel.end();
        return;
      case 'replica-epoch':
        return this.startEpoch(message);
      case 'replica-commit':
        return this.commit(message);
      case 'file' as never:
        return; // a file of the epoch is complete on disk (fileTarget counted it)
      case 'replica-bye':
        this.logger.info(`replica ${this.replica?.id}: the primary stopped replicating (epoch ${this.replica?.committed?.epoch ?? 'none'} stays committed)`);
        this.discard('the primary stopped');
        this.detach();
        this.channel.end();
        return;
      default:
        throw new Error(`unexpected message ${JSON.stringify((message as { t: string }).t)}`);
    }
  }

  private hello(m: Extract<ReplicaMessage, { t: 'replica-hello' }>): void {
    if (this.replica) throw new Error('a second hello');
    if (m.v !== REPLICA_VERSION) throw new Error(`replication protocol ${m.v} is not this agent's (${REPLICA_VERSION}): run the same lazyd on both hosts`);
    const problem = replicaIdProblem(m.id);
    if (problem) throw new Error(problem);
    if (m.pageSize !== this.host.pageSize) throw new Error(`the primary's page size ${m.pageSize} is not this host's ${this.host.pageSize}`);
    const incompatible = imageCompatibility(m.criuVersion, this.host.criuVersion);
    if (incompatible) throw new Error(incompatible);
    if (this.host.uffdProblem) throw new Error(`this standby cannot restore lazily: ${this.host.uffdProblem}`);
    const replica = this.store.replica(m.id);
    if (replica.fenced) {
      this.logger.warn(`replica ${m.id}: a primary connected after the failover (epoch ${replica.fenced.epoch}); told it is fenced`);
      sendReplica(this.channel, { t: 'replica-fenced', reason: `replica ${m.id} failed over to this standby (epoch ${replica.fenced.epoch}, pid ${replica.fenced.pid}): ${replica.fenced.reason}` });
      this.ended = true;
      this.channel.end();
      return;
    }
    if (replica.session) throw new Error(`replica ${m.id} has a primary connected already: one primary per replica id`);
    clearTimeout(replica.autoTimer);
    replica.autoTimer = undefined;
    this.replica = replica;
    replica.session = this;
    // The agent's --failover-after, unless the primary asks for its own.
    this.failoverAfterMs = m.failoverAfterMs > 0 ? m.failoverAfterMs : this.host.failoverAfterMs;
    this.pageSize = m.pageSize;
    this.channel.keepAlive(m.linkTimeoutMs);
    this.logger.info(`replica ${m.id}: primary connected (CRIU ${m.criuVersion}); committed epoch ${replica.committed?.epoch ?? 'none'}`);
    sendReplica(this.channel, { t: 'replica-welcome', v: REPLICA_VERSION, committed: replica.committed?.epoch ?? null, criuVersion: this.host.criuVersion });
  }

  private startEpoch(m: Extract<ReplicaMessage, { t: 'replica-epoch' }>): void {
    const replica = this.replica;
    if (!replica) throw new Error('an epoch before hello');
    if (this.inFlight) throw new Error(`epoch ${m.epoch} while epoch ${this.inFlight.epoch} is in flight`);
    if (m.base !== null && m.base !== replica.committed?.epoch) {
      throw new Error(`epoch ${m.epoch} is a delta on epoch ${m.base}, but this standby holds epoch ${replica.committed?.epoch ?? 'none'}`);
    }
    const size = m.files.reduce((sum, f) => sum + f.size, 0);
    const held = replica.committed?.bytes ?? 0;
    if (held + size > this.host.replicaCapBytes) {
      throw new Error(
        `epoch ${m.epoch} needs ${mib(size)} MiB beside the committed ${mib(held)} MiB: over lazyd agent --replica-cap ${mib(this.host.replicaCapBytes)} MiB — raise it (the standby holds the committed epoch and one in flight)`,
      );
    }
    for (const f of m.files) if (!FILE_NAME.test(f.name)) throw new Error(`refusing the file name ${JSON.stringify(f.name)}`);
    const incoming = path.join(replica.dir, 'incoming');
    fs.rmSync(incoming, { recursive: true, force: true });
    fs.mkdirSync(path.join(incoming, 'recv'), { recursive: true, mode: 0o700 });
    this.inFlight = { epoch: m.epoch, base: m.base, files: m.files, received: new Set() };
  }

  private commit(m: Extract<ReplicaMessage, { t: 'replica-commit' }>): void {
    const replica = this.replica;
    const f = this.inFlight;
    if (!replica || !f || f.epoch !== m.epoch) throw new Error(`a commit of epoch ${m.epoch}, which is not in flight`);
    const started = performance.now();
    const incoming = path.join(replica.dir, 'incoming');
    const recv = path.join(incoming, 'recv');
    const base = f.base === null ? undefined : replica.committedDir;
    let bytes = 0;
    for (const file of f.files) {
      const out = path.join(incoming, file.name);
      const got = path.join(recv, file.kind === 'delta' ? `${file.name}.delta` : file.name);
      if (!fs.existsSync(got)) throw new Error(`epoch ${f.epoch} is missing ${path.basename(got)}`);
      if (file.kind === 'whole') fs.renameSync(got, out);
      else if (base && unchangedDelta(got) && sizeOf(path.join(base, file.name)) === file.size) fs.linkSync(path.join(base, file.name), out);
      else applyDelta(base && path.join(base, file.name), got, file.size, this.pageSize, out);
      const sum = sha256File(out);
      if (sum !== file.sha256) throw new Error(`epoch ${f.epoch}: ${file.name} rebuilt here does not match the primary's (SHA-256 ${sum.slice(0, 12)} ≠ ${file.sha256.slice(0, 12)})`);
      bytes += file.size;
    }
    fs.rmSync(recv, { recursive: true, force: true });
    this.store.commit(replica, { epoch: f.epoch, dumpedAt: m.dumpedAt, committedAt: Date.now(), bytes });
    this.inFlight = undefined;
    const commitMs = performance.now() - started;
    this.store.counters.epochsCommitted++;
    observeMs(this.store.counters.commit, commitMs);
    this.logger.info(`replica ${replica.id}: epoch ${f.epoch} committed (${mib(bytes)} MiB, rebuilt and checked in ${commitMs.toFixed(0)} ms)`);
    sendReplica(this.channel, { t: 'replica-committed', epoch: f.epoch, commitMs, bytes });
  }
}

function unchangedDelta(file: string): boolean {
  const fd = fs.openSync(file, 'r');
  try {
    const head = Buffer.alloc(4);
    return fs.readSync(fd, head, 0, 4, 0) === 4 && head.readUInt32LE(0) === 0;
  } finally {
    fs.closeSync(fd);
  }
}

function sizeOf(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return -1;
  }
}

function mib(bytes: number): string {
  return (bytes / 1048576).toFixed(1);
}
