// Unit tests of replication's pure parts and the standby's epoch handling, without CRIU: the page delta round
// trip (src/replicate/page-delta.ts), and src/agent/replica.ts driven over a real TCP connection by a scripted
// primary — commit, an epoch cut off half-way keeps the committed one, a rebuilt file that does not match is
// refused, the cap, one primary per id.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { Channel, type Message } from '../../src/migrate/channel.js';
import { applyDelta, changedRuns, hashPages, sha256File, writeDelta } from '../../src/replicate/page-delta.js';
import { REPLICA_VERSION, type EpochFile, type ReplicaMessage } from '../../src/replicate/protocol.js';
import { ReplicaStore } from '../../src/agent/replica.js';
import { memoryLogger } from '../harness/memory-logger.js';

const PAGE = 4096;

function tmp(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `lazyd-replica-${tag}-`));
}

test('page delta: only changed pages travel, and the rebuilt file is byte-identical', async () => {
  const dir = tmp('delta');
  const a = randomBytes(64 * PAGE);
  const b = Buffer.from(a);
  randomBytes(PAGE).copy(b, 3 * PAGE);
  randomBytes(2 * PAGE).copy(b, 40 * PAGE);
  fs.writeFileSync(path.join(dir, 'a'), a);
  fs.writeFileSync(path.join(dir, 'b'), Buffer.concat([b, randomBytes(PAGE)])); // and one page longer
  const ha = await hashPages(path.join(dir, 'a'), PAGE);
  const hb = await hashPages(path.join(dir, 'b'), PAGE);
  const runs = changedRuns(hb, ha);
  assert.deepEqual(runs, [[3, 1], [40, 2], [64, 1]]);
  assert.equal(writeDelta(path.join(dir, 'b'), runs, PAGE, path.join(dir, 'd')), 4);
  assert.equal(fs.statSync(path.join(dir, 'd')).size, 4 + 3 * 8 + 4 * PAGE);
  applyDelta(path.join(dir, 'a'), path.join(dir, 'd'), hb.size, PAGE, path.join(dir, 'out'));
  assert.equal(sha256File(path.join(dir, 'out')), hb.sha256);
  // Without a base every page is a change, and the rebuild from nothing matches too.
  const all = changedRuns(hb, undefined);
  assert.deepEqual(all, [[0, 65]]);
  writeDelta(path.join(dir, 'b'), all, PAGE, path.join(dir, 'd2'));
  applyDelta(undefined, path.join(dir, 'd2'), hb.size, PAGE, path.join(dir, 'out2'));
  assert.equal(sha256File(path.join(dir, 'out2')), hb.sha256);
  fs.rmSync(dir, { recursive: true, force: true });
});

interface Standby {
  store: ReplicaStore;
  port: number;
  stateDir: string;
  lines: { msg: string }[];
  close(): Promise<void>;
}

async function standby(capMib = 64): Promise<Standby> {
  const stateDir = tmp('standby');
  const { logger, lines } = memoryLogger();
  const store = new ReplicaStore(
    {
      criuPath: '/nonexistent/criu', criuVersion: '4.2.1', pageSize: PAGE, uffdProblem: null, workDir: stateDir,
      lazyPagesTlsArgs: [], keepDirs: false, replicaCapBytes: capMib * 1048576, failoverAfterMs: 0,
    },
    logger,
  );
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    store.accept(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const port = (server.address() as net.AddressInfo).port;
  const close = () =>
    new Promise<void>((resolve) => {
      for (const socket of sockets) socket.destroy();
      server.close(() => resolve());
    });
  return { store, port, stateDir, lines, close };
}

class Primary {
  readonly channel: Channel;
  readonly got: ReplicaMessage[] = [];
  private waiters: ((m: ReplicaMessage) => void)[] = [];
  closed: Promise<void>;
  constructor(socket: net.Socket) {
    this.channel = new Channel(socket);
    this.channel.on('message', (m: Message) => {
      this.got.push(m as unknown as ReplicaMessage);
      this.waiters.shift()?.(m as unknown as ReplicaMessage);
    });
    this.channel.on('error', () => undefined);
    this.closed = new Promise((resolve) => this.channel.on('close', () => resolve()));
  }
  static async connect(port: number): Promise<Primary> {
    const socket = net.connect(port, '127.0.0.1');
    await new Promise((resolve) => socket.once('connect', resolve));
    return new Primary(socket);
  }
  send(m: ReplicaMessage): void {
    this.channel.send(m as unknown as Message);
  }
  next(): Promise<ReplicaMessage> {
    const queued = this.got.length > this.taken ? this.got[this.taken] : undefined;
    this.taken++;
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve) => this.waiters.push(resolve));
  }
  private taken = 0;
  hello(id = 'svc'): void {
    this.send({ t: 'replica-hello', v: REPLICA_VERSION, id, criuVersion: '4.2.1', pageSize: PAGE, failoverAfterMs: 0, linkTimeoutMs: 10_000 });
  }
}

/** An epoch of two images: core.img sent whole and pages-1.img as a delta (on `base`, or from nothing). */
async function sendEpoch(p: Primary, dir: string, epoch: number, base: number | null, pages: Buffer, previous?: Buffer, corrupt = false): Promise<void> {
  fs.writeFileSync(path.join(dir, 'pages-1.img'), pages);
  fs.writeFileSync(path.join(dir, 'core.img'), `core of epoch ${epoch}`);
  const h = await hashPages(path.join(dir, 'pages-1.img'), PAGE);
  let runs = changedRuns(h, undefined);
  if (previous) {
    fs.writeFileSync(path.join(dir, 'prev'), previous);
    runs = changedRuns(h, await hashPages(path.join(dir, 'prev'), PAGE));
  }
  writeDelta(path.join(dir, 'pages-1.img'), runs, PAGE, path.join(dir, 'pages-1.img.delta'));
  const files: EpochFile[] = [
    { name: 'core.img', size: fs.statSync(path.join(dir, 'core.img')).size, sha256: sha256File(path.join(dir, 'core.img')), kind: 'whole' },
    { name: 'pages-1.img', size: h.size, sha256: corrupt ? '0'.repeat(64) : h.sha256, kind: 'delta' },
  ];
  p.send({ t: 'replica-epoch', epoch, base, files });
  await p.channel.sendFile('core.img', path.join(dir, 'core.img'));
  await p.channel.sendFile('pages-1.img.delta', path.join(dir, 'pages-1.img.delta'));
  p.send({ t: 'replica-commit', epoch, dumpedAt: Date.now() });
}

function committedPages(s: Standby, id = 'svc'): Buffer {
  return fs.readFileSync(path.join(s.stateDir, 'replicas', id, 'committed', 'pages-1.img'));
}

test('standby: epochs commit atomically; a cut-off epoch and a mismatching one leave the committed epoch intact', async () => {
  const s = await standby();
  const work = tmp('primary');
  try {
    const p = await Primary.connect(s.port);
    p.hello();
    assert.deepEqual(await p.next(), { t: 'replica-welcome', v: REPLICA_VERSION, committed: null, criuVersion: '4.2.1' });
    const e1 = randomBytes(32 * PAGE);
    await sendEpoch(p, work, 1, null, e1);
    const ack1 = await p.next();
    assert.equal(ack1.t, 'replica-committed');
    assert.ok(committedPages(s).equals(e1));
    const e2 = Buffer.from(e1);
    randomBytes(PAGE).copy(e2, 5 * PAGE);
    await sendEpoch(p, work, 2, 1, e2, e1);
    assert.equal((await p.next()).t, 'replica-committed');
    assert.ok(committedPages(s).equals(e2));
    assert.equal(fs.readlinkSync(path.join(s.stateDir, 'replicas', 'svc', 'committed')), 'epoch-2');
    assert.equal(fs.existsSync(path.join(s.stateDir, 'replicas', 'svc', 'epoch-1')), false, 'the old epoch is gone once the new one is committed');

    // Epoch 3 cut off half-way: the primary dies after the first file.
    p.send({ t: 'replica-epoch', epoch: 3, base: 2, files: [{ name: 'core.img', size: 5, sha256: 'x', kind: 'whole' }, { name: 'pages-1.img', size: e2.length, sha256: 'y', kind: 'delta' }] });
    fs.writeFileSync(path.join(work, 'c'), 'core3');
    await p.channel.sendFile('core.img', path.join(work, 'c'));
    p.channel.destroy();
    await p.closed;
    await waitFor(() => s.lines.some((l) => /epoch 3 discarded/.test(l.msg)));
    assert.ok(committedPages(s).equals(e2), 'epoch 2 still committed');
    assert.equal(fs.existsSync(path.join(s.stateDir, 'replicas', 'svc', 'incoming')), false);

    // A restarted primary: welcomed with epoch 2; a rebuilt file whose hash does not match is refused.
    const q = await Primary.connect(s.port);
    q.hello();
    assert.equal(((await q.next()) as { committed: number }).committed, 2);
    await sendEpoch(q, work, 3, 2, randomBytes(32 * PAGE), e2, true);
    const refused = await q.next();
    assert.equal(refused.t, 'replica-refuse');
    assert.match((refused as { reason: string }).reason, /pages-1\.img rebuilt here does not match the primary's/);
    await q.closed;
    assert.ok(committedPages(s).equals(e2), 'epoch 2 still committed after the refusal');
    assert.deepEqual(
      s.store.summaries().map((r) => [r.id, r.committed, r.connected, r.fenced]),
      [['svc', 2, false, false]],
    );
  } finally {
    await s.close();
    fs.rmSync(s.stateDir, { recursive: true, force: true });
    fs.rmSync(work, { recursive: true, force: true });
  }
});

test('standby: an epoch over the cap is refused with the sizes and the flag; one primary per replica id', async () => {
  const s = await standby(1);
  const work = tmp('primary');
  try {
    const a = await Primary.connect(s.port);
    a.hello('big');
    assert.equal((await a.next()).t, 'replica-welcome');
    const b = await Primary.connect(s.port);
    b.hello('big');
    const second = await b.next();
    assert.equal(second.t, 'replica-refuse');
    assert.match((second as { reason: string }).reason, /has a primary connected already/);
    // The standby refuses at the epoch's announcement (before any file) and ends the connection.
    a.send({ t: 'replica-epoch', epoch: 1, base: null, files: [{ name: 'pages-1.img', size: 2 * 1048576, sha256: 'x', kind: 'delta' }] });
    const over = await a.next();
    assert.equal(over.t, 'replica-refuse');
    assert.match((over as { reason: string }).reason, /epoch 1 needs 2\.0 MiB beside the committed 0\.0 MiB: over lazyd agent --replica-cap 1\.0 MiB — raise it/);
  } finally {
    await s.close();
    fs.rmSync(s.stateDir, { recursive: true, force: true });
    fs.rmSync(work, { recursive: true, force: true });
  }
});

test('standby: failover of an unknown replica, or of one without a committed epoch, is refused in one line', async () => {
  const s = await standby();
  try {
    await assert.rejects(s.store.failover('nothing-here', 'test'), /this agent holds no replica "nothing-here"/);
    await assert.rejects(s.store.failover('bad/id', 'test'), /replica id "bad\/id"/);
    fs.mkdirSync(path.join(s.stateDir, 'replicas', 'empty'), { recursive: true });
    await assert.rejects(s.store.failover('empty', 'test'), /replica empty has no committed epoch on this host/);
  } finally {
    await s.close();
    fs.rmSync(s.stateDir, { recursive: true, force: true });
  }
});

async function waitFor(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > until) throw new Error('condition not met');
    await new Promise((resolve) => setImmediate(resolve));
  }
}
