// Hostile page-server peers and the daemon-side measurements that judge them, for the hostile-session suite
// (test/e2e/hostile.test.ts) and the soak (test/soak/soak.ts). Each attack connects to a page server, does one
// wrong thing, checks whatever the server answered before it hung up, and ends by itself within a bound.
//
// The checkpoint under attack is a recorded plain dump of test/fixtures: one lazy pagemap entry of its pid holds
// the workload's data area (where, its session.json says), whose page p is known word for word (mix(seed, p, w),
// test/workload/workload.c), so a served page can be checked without the image (dataAreaServed).
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { encodeHeader } from './clients.js';
import { dataPage } from './page-pattern.js';

export const PAGE = 4096;

const GET = 7;
const CLOSE = 0x1023;
const OPEN2 = 4;
const ADD_F = 6;
const PE_LAZY = 2;
const PE_PRESENT = 4;

export interface Target {
  host: string;
  port: number;
}

// --- the expected bytes ---------------------------------------------------------------------------------

export { dataPage };

const M64 = (1n << 64n) - 1n;

/**
 * What the attacked server serves and the attacks check against: one lazy pagemap entry with data of one pid,
 * and the expected bytes of each of its pages.
 */
export interface Served {
  pid: bigint;
  /** A range that ends where its lazy pagemap entry ends: its first page and its length. */
  start: bigint;
  pages: number;
  /** The expected bytes of the entry's page i. */
  page(i: number): Buffer;
}

/** A workload's data area: where it starts, its pages, and the seed of its pattern. */
export interface DataAreaSpec {
  start: bigint;
  pages: number;
  seed: bigint;
}

/**
 * A checkpoint's data area and the pages after it to the end of its lazy pagemap entry (`entryEnd`); those pages
 * differ between runs, so only the data pages are known.
 */
export function dataAreaServed(pid: bigint, area: DataAreaSpec, entryEnd: bigint): Served {
  return {
    pid,
    start: area.start,
    pages: Number((entryEnd - area.start) / BigInt(PAGE)),
    page: (i) => (i < area.pages ? dataPage(i, area.seed) : Buffer.alloc(0)),
  };
}

/**
 * Checks every page of the served entry inside [vaddr, vaddr + payload) whose bytes are known: returns the
 * number checked, throws on a wrong one.
 */
export function checkServedPages(served: Served, vaddr: bigint, payload: Buffer, what: string): number {
  let checked = 0;
  for (let i = 0; i * PAGE < payload.length; i++) {
    const address = vaddr + BigInt(i * PAGE);
    if (address < served.start || address >= served.start + BigInt(served.pages * PAGE)) continue;
    const expected = served.page(Number((address - served.start) / BigInt(PAGE)));
    if (expected.length === 0) continue;
    const got = payload.subarray(i * PAGE, (i + 1) * PAGE);
    if (got.length < PAGE) continue; // a reply cut short by the peer's own reset
    if (!got.equals(expected)) throw new Error(`${what}: page 0x${address.toString(16)} was served with wrong bytes`);
    checked++;
  }
  return checked;
}

export interface Reply {
  header: Buffer;
  nrPages: number;
  vaddr: bigint;
  payload: Buffer;
}

/** Splits a lazy reply stream into GET replies; whatever follows the last complete reply is `rest`. */
export function splitReplies(stream: Buffer, headerSize: 24 | 32): { replies: Reply[]; rest: Buffer } {
  const replies: Reply[] = [];
  let off = 0;
  while (stream.length - off >= headerSize) {
    const header = stream.subarray(off, off + headerSize);
    if ((header.readUInt32LE(0) & 0xffff) !== ADD_F) break;
    const nrPages = headerSize === 24 ? header.readUInt32LE(4) : Number(header.readBigUInt64LE(8));
    const vaddr = header.readBigUInt64LE(headerSize === 24 ? 8 : 16);
    if (stream.length - off - headerSize < nrPages * PAGE) break;
    off += headerSize;
    replies.push({ header, nrPages, vaddr, payload: stream.subarray(off, off + nrPages * PAGE) });
    off += nrPages * PAGE;
  }
  return { replies, rest: stream.subarray(off) };
}

/** The data area's sha256 from a set of replies (every one of its pages must be there). */
export function dataAreaSha256(replies: Reply[], area: Pick<DataAreaSpec, 'start' | 'pages'>): string {
  const end = area.start + BigInt(area.pages * PAGE);
  const pages = new Map<bigint, Buffer>();
  for (const reply of replies) {
    for (let i = 0; i < reply.nrPages; i++) {
      const address = reply.vaddr + BigInt(i * PAGE);
      if (address >= area.start && address < end) pages.set(address, reply.payload.subarray(i * PAGE, (i + 1) * PAGE));
    }
  }
  const hash = createHash('sha256');
  for (let a = area.start; a < end; a += BigInt(PAGE)) {
    const page = pages.get(a);
    if (!page) throw new Error(`data page 0x${a.toString(16)} was never served`);
    hash.update(page);
  }
  return hash.digest('hex');
}

// --- raw sessions -----------------------------------------------------------------------------------------

export interface RawResult {
  received: Buffer;
  /** The server closed or reset the connection (not us, not the time limit). */
  closedByServer: boolean;
  reset: boolean;
}

/**
 * Connects (from the local address `from` when given: on loopback 127.0.0.2 is another host to an allow-list),
 * writes `request` (then half-closes unless keepOpen), collects until the server closes or timeoutMs.
 */
export function rawSession(
  target: Target,
  request: Buffer,
  { keepOpen = false, timeoutMs = 10_000, from }: { keepOpen?: boolean; timeoutMs?: number; from?: string } = {},
): Promise<RawResult> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let reset = false;
    let done = false;
    const socket = net.connect({ port: target.port, host: target.host, ...(from ? { localAddress: from } : {}) }, () => {
      if (keepOpen) socket.write(request);
      else socket.end(request);
    });
    const finish = (byServer: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      resolve({ received: Buffer.concat(chunks), closedByServer: byServer, reset });
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    socket.on('data', (d) => chunks.push(d));
    socket.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'ECONNRESET' || error.code === 'EPIPE') reset = true;
    });
    socket.on('end', () => finish(true));
    socket.on('close', () => finish(true));
  });
}

/** A well-behaved client: replays a recorded `criu lazy-pages` client stream and returns the whole answer. */
export async function replayRecorded(target: Target, stream: Buffer): Promise<Buffer> {
  const result = await rawSession(target, stream, { timeoutMs: 30_000 });
  if (!result.closedByServer) throw new Error('the good client got no complete answer within 30 s');
  return result.received;
}

// --- the attacks ------------------------------------------------------------------------------------------

export interface AttackOutcome {
  /** Pages of the data area the attack got served and checked byte for byte. */
  pagesChecked: number;
}

export interface Attack {
  name: string;
  /** A line the daemon's log must hold once the attack is over. */
  expectLog: RegExp;
  run(target: Target): Promise<AttackOutcome>;
}

function get(size: 24 | 32, nrPages: number | bigint, vaddr: bigint, pid: bigint): Buffer {
  if (size === 24) return encodeHeader(24, GET, Number(nrPages), vaddr, pid);
  const header = encodeHeader(32, GET, 0, vaddr, pid);
  header.writeBigUInt64LE(BigInt(nrPages), 8);
  return header;
}

/** A GET of nrPages at vaddr of pid, in the 24- or 32-byte layout. */
export function getRequest(size: 24 | 32, nrPages: number | bigint, vaddr: bigint, pid: bigint): Buffer {
  return get(size, nrPages, vaddr, pid);
}

/** The start of a `criu dump --page-server` upload (24-byte layout): OPEN2 for pid, one ADD_F of `pages` lazy pages with their bytes. */
export function uploadRequest(pid: bigint, pages: number): Buffer {
  const dstId = (pid << 8n) | 1n;
  return Buffer.concat([
    encodeHeader(24, OPEN2, 0, 0n, dstId),
    encodeHeader(24, ((PE_LAZY | PE_PRESENT) << 16) | ADD_F, pages, 0x7f0000000000n, dstId),
    Buffer.alloc(pages * PAGE, 0x5a),
  ]);
}

/**
 * The allow-list attacks (--allow-from & co, README "Security"), against a server that lets `fetchOnly` fetch,
 * `uploadOnly` upload and nobody else in (all on loopback: 127.0.0.0/8 is this host's, each address a peer of
 * its own). The refused host's line is logged once a minute: run its attack first against a fresh server.
 */
export const makeAccessAttacks = (s: Served, hosts: { refused: string; fetchOnly: string; uploadOnly: string }): Attack[] => [
  {
    name: `a GET from ${hosts.refused}, which no allow-list covers: reset before a byte is read, nothing served`,
    expectLog: new RegExp(`connection from ${hosts.refused.replace(/\./g, '\\.')} refused: no --allow-from, --allow-fetch-from or --allow-upload-from block covers it`),
    run: (target) => refusedWithout(target, get(24, 1, s.start, s.pid), hosts.refused),
  },
  {
    name: `an upload (OPEN2, ADD_F with 16 pages) from the fetch-only host ${hosts.fetchOnly}: refused at OPEN2, nothing staged`,
    expectLog: new RegExp(`upload refused: ${hosts.fetchOnly.replace(/\./g, '\\.')} may not upload here: no --allow-from or --allow-upload-from block covers it`),
    run: (target) => refusedWithout(target, uploadRequest(998n, 16), hosts.fetchOnly),
  },
  {
    name: `a GET from the upload-only host ${hosts.uploadOnly}: refused, nothing served`,
    expectLog: new RegExp(`fetch refused: ${hosts.uploadOnly.replace(/\./g, '\\.')} may not fetch here: no --allow-from or --allow-fetch-from block covers it`),
    run: (target) => refusedWithout(target, get(24, 1, s.start, s.pid), hosts.uploadOnly),
  },
];

/** Expects the server to end the connection from `from` without answering a byte. */
async function refusedWithout(target: Target, request: Buffer, from: string): Promise<AttackOutcome> {
  const result = await rawSession(target, request, { from });
  if (!result.closedByServer) throw new Error(`the server kept the connection from ${from} open`);
  if (result.received.length !== 0) throw new Error(`the server answered ${result.received.length} bytes to ${from}`);
  return { pagesChecked: 0 };
}

/** One valid GET (data page 0) ahead of the bad header, so the bad one is judged with the format known. */
async function afterOneGoodGet(s: Served, target: Target, size: 24 | 32, bad: Buffer): Promise<AttackOutcome> {
  const result = await rawSession(target, Buffer.concat([get(size, 1, s.start, s.pid), bad]), { keepOpen: true });
  if (!result.closedByServer) throw new Error('the server kept a session open after a bad request');
  // The failing session is closed at once: the good reply may have left in full, in part, or not at all — but
  // whatever arrived must be a prefix of it, and nothing may follow it.
  const header = encodeHeader(size, (PE_PRESENT << 16) | ADD_F, 1, s.start, s.pid);
  const expected = Buffer.concat([header, s.page(0)]);
  if (result.received.length > expected.length || !result.received.equals(expected.subarray(0, result.received.length))) {
    throw new Error(`the ${result.received.length} bytes served around a bad request are not a prefix of the one good reply`);
  }
  if (s.page(0).length === 0 && result.received.length > header.length) {
    return { pagesChecked: 0 }; // page 0 of the entry is not known: only its header was checked
  }
  return { pagesChecked: result.received.length === expected.length ? 1 : 0 };
}

/** Expects the server to hang up without serving anything. */
async function servedNothing(target: Target, request: Buffer, opts: { keepOpen?: boolean } = {}): Promise<AttackOutcome> {
  const result = await rawSession(target, request, opts);
  if (!result.closedByServer) throw new Error('the server kept a bad session open');
  if (result.received.length !== 0) throw new Error(`the server answered ${result.received.length} bytes to a bad request`);
  return { pagesChecked: 0 };
}

export function truncatedHeader(s: Served, size: 24 | 32, length: number): Attack {
  return {
    name: `truncated ${size}-byte GET header (${length} bytes), then close`,
    expectLog: new RegExp(`truncated header: the peer closed the connection after ${length} bytes of a header`),
    run: (target) => servedNothing(target, get(size, 1, s.start, s.pid).subarray(0, length)),
  };
}

/** Every malformed or hostile session, against a server that serves `s`. */
export const makeAttacks = (s: Served): Attack[] => [
  truncatedHeader(s, 24, 1),
  truncatedHeader(s, 24, 3),
  truncatedHeader(s, 24, 23),
  truncatedHeader(s, 32, 31),
  {
    name: 'a truncated header after a good GET, then close',
    expectLog: /truncated header: the peer closed the connection after 10 bytes/,
    async run(target) {
      const result = await rawSession(target, Buffer.concat([get(24, 1, s.start, s.pid), get(24, 1, s.start, s.pid).subarray(0, 10)]));
      const { replies } = splitReplies(result.received, 24);
      if (replies.length !== 1) throw new Error(`expected the one good reply, got ${replies.length}`);
      return { pagesChecked: checkServedPages(s, replies[0].vaddr, replies[0].payload, 'good GET before a truncated one') };
    },
  },
  {
    name: '1 MiB of garbage (first u32 0xdeadbeef)',
    expectLog: /malformed first header \(command unknown 0xbeef\)|unknown command 0xdeadbeef/,
    run(target) {
      const garbage = Buffer.alloc(1 << 20);
      for (let i = 0; i < garbage.length; i += 4) garbage.writeUInt32LE((i * 2654435761) >>> 0, i);
      garbage.writeUInt32LE(0xdeadbeef, 0);
      return servedNothing(target, garbage, { keepOpen: true });
    },
  },
  {
    name: 'an oversized header: a GET whose 24-byte nr_pages is u32 max as the first header',
    expectLog: /more than the limit of \d+ pages per request \(--max-request-pages\)/,
    run: (target) => servedNothing(target, get(24, 0xffffffff, s.start, s.pid), { keepOpen: true }),
  },
  {
    name: 'unknown command as the first header',
    expectLog: /malformed first header \(command unknown 0x7777\)/,
    run: (target) => servedNothing(target, encodeHeader(24, 0x7777, 1, s.start, s.pid), { keepOpen: true }),
  },
  {
    name: 'unknown command after a good GET',
    expectLog: /unknown command 0x7777: not a CRIU page-server request/,
    run: (target) => afterOneGoodGet(s, target, 24, encodeHeader(24, 0x7777, 1, s.start, s.pid)),
  },
  {
    name: 'GET for an unknown pid',
    expectLog: /GET pid 4242 .*: no task with this pid in the checkpoint/,
    run: (target) => afterOneGoodGet(s, target, 24, get(24, 1, s.start, 4242n)),
  },
  {
    name: 'GET with nr_pages 0',
    expectLog: /nr_pages 0: nr_pages is 0/,
    run: (target) => afterOneGoodGet(s, target, 32, get(32, 0, s.start, s.pid)),
  },
  {
    name: 'GET with nr_pages u32 max (24-byte)',
    expectLog: /nr_pages 4294967295: more than the limit/,
    run: (target) => afterOneGoodGet(s, target, 24, get(24, 0xffffffff, s.start, s.pid)),
  },
  {
    name: 'GET with nr_pages u64 max (32-byte)',
    expectLog: /nr_pages 18446744073709551615: more than the limit/,
    run: (target) => afterOneGoodGet(s, target, 32, get(32, M64, s.start, s.pid)),
  },
  {
    name: 'GET at the top of the address space (vaddr + size overflows u64)',
    expectLog: /vaddr 0xfffffffffffff000 nr_pages 16: no pagemap entry covers this address/,
    run: (target) => afterOneGoodGet(s, target, 24, get(24, 16, 0xfffffffffffff000n, s.pid)),
  },
  {
    name: 'GET with a vaddr that is not page-aligned',
    expectLog: /vaddr is not page-aligned/,
    run: (target) => afterOneGoodGet(s, target, 32, get(32, 1, s.start + 8n, s.pid)),
  },
  {
    name: 'GET for an address no entry covers',
    expectLog: /vaddr 0x1000 nr_pages 1: no pagemap entry covers this address/,
    run: (target) => afterOneGoodGet(s, target, 24, get(24, 1, 0x1000n, s.pid)),
  },
  {
    name: 'GET reaching beyond its pagemap entry is clamped to the entry, never past it',
    expectLog: /Page-server session finished/,
    async run(target) {
      const result = await rawSession(target, Buffer.concat([get(24, s.pages + 100, s.start, s.pid), encodeHeader(24, CLOSE, 0, 0n, 0n)]));
      const { replies, rest } = splitReplies(result.received, 24);
      if (replies.length !== 1 || replies[0].nrPages !== s.pages) {
        throw new Error(`expected one reply of ${s.pages} pages, got ${replies.map((r) => r.nrPages).join(',')}`);
      }
      if (!rest.equals(Buffer.alloc(4))) throw new Error('expected the CLOSE status 0 after the reply');
      return { pagesChecked: checkServedPages(s, replies[0].vaddr, replies[0].payload, 'clamped GET') };
    },
  },
  {
    name: 'RST in the middle of a reply (SO_LINGER 0)',
    expectLog: /Connection reset by peer|Broken pipe/,
    run: (target) => resetMidReply(s, target),
  },
  {
    name: 'an upload that lies: ADD_F for 2^32-1 pages',
    expectLog: /Upload failed: ADD_F .* nr_pages 4294967295 .*more than the limit of \d+ pages per entry/,
    run: (target) => lyingUpload(s, target, 0xffffffff, 0),
  },
  {
    name: 'an upload that lies: ADD_F for 1024 pages, 5000 bytes sent, then close',
    expectLog: /Upload failed: ADD_F .* the dump disconnected after 5000 of 4194304 payload bytes/,
    run: (target) => lyingUpload(s, target, 1024, 5000),
  },
];

/** Asks for up to 16 MiB, reads 64 KiB of it, then resets the connection. */
async function resetMidReply(s: Served, target: Target): Promise<AttackOutcome> {
  const nr = Math.min(256, s.pages);
  const requests = Buffer.concat(Array.from({ length: 16 }, () => get(24, nr, s.start, s.pid)));
  const received: Buffer[] = [];
  let got = 0;
  await new Promise<void>((resolve, reject) => {
    const socket = net.connect(target.port, target.host, () => socket.write(requests));
    socket.on('error', () => undefined);
    socket.on('data', (chunk) => {
      received.push(chunk);
      got += chunk.length;
      if (got >= 64 * 1024) {
        socket.resetAndDestroy();
        resolve();
      }
    });
    socket.on('close', () => (got >= 64 * 1024 ? resolve() : reject(new Error('the server closed before the reset'))));
  });
  // What arrived before the reset must still be right: the first reply's header and its first pages.
  const stream = Buffer.concat(received);
  const header = stream.subarray(0, 24);
  if ((header.readUInt32LE(0) & 0xffff) !== ADD_F || header.readUInt32LE(4) !== nr || header.readBigUInt64LE(8) !== s.start) {
    throw new Error('the reply before the reset does not start with the expected header');
  }
  const whole = Math.floor((stream.length - 24) / PAGE);
  const first = stream.subarray(24, 24 + Math.min(whole, nr) * PAGE);
  return { pagesChecked: checkServedPages(s, s.start, first, 'reply before the reset') };
}

/** OPEN2 + ADD_F|PE_LAZY|PE_PRESENT for nrPages (24-byte, pid 999), payloadBytes of it, then close. */
async function lyingUpload(s: Served, target: Target, nrPages: number, payloadBytes: number): Promise<AttackOutcome> {
  const dstId = (999n << 8n) | 1n;
  const request = Buffer.concat([
    encodeHeader(24, OPEN2, 0, 0n, dstId),
    encodeHeader(24, ((PE_LAZY | PE_PRESENT) << 16) | ADD_F, nrPages, s.start, dstId),
    Buffer.alloc(payloadBytes, 0x5a),
  ]);
  const result = await rawSession(target, request);
  // OPEN2's answer (has_parent = 0, one byte) may or may not have left before the failure; nothing else may.
  if (result.received.length > 1 || (result.received.length === 1 && result.received[0] !== 0)) {
    throw new Error(`the lying upload got ${result.received.length} bytes back`);
  }
  return { pagesChecked: 0 };
}

/**
 * A peer that asks for 16 MiB and then reads one byte per second, until `stop` aborts or maxMs. The server's drop
 * is judged on the server's side (its log, its fds): the bytes already in this socket's receive buffer hide the
 * server's close from a reader this slow.
 */
export async function slowReader(s: Served, target: Target, maxMs: number, stop?: AbortSignal): Promise<{ bytesRead: number }> {
  const started = performance.now();
  const socket = net.connect({ port: target.port, host: target.host });
  socket.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  socket.pause();
  socket.write(Buffer.concat(Array.from({ length: 64 }, () => get(24, Math.min(64, s.pages), s.start, s.pid))));
  let bytesRead = 0;
  while (!stop?.aborted && !socket.destroyed && performance.now() - started < maxMs) {
    await sleep(1000);
    const chunk = socket.read(1) as Buffer | null;
    if (chunk) bytesRead += chunk.length;
  }
  socket.destroy();
  return { bytesRead };
}

/** Opens `count` connections that never send a byte; resolves once all are connected. */
export async function idleConnections(target: Target, count: number): Promise<net.Socket[]> {
  const sockets: net.Socket[] = [];
  for (let i = 0; i < count; i += 100) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(100, count - i) }, () =>
        new Promise<net.Socket>((resolve, reject) => {
          const socket = net.connect(target.port, target.host, () => resolve(socket));
          socket.on('error', (error) => (socket.connecting ? reject(error) : undefined));
        }),
      ),
    );
    sockets.push(...batch);
  }
  return sockets;
}

// --- the daemon's side ------------------------------------------------------------------------------------

export interface DaemonUsage {
  rssKiB: number;
  fds: number;
}

/** VmRSS and the number of open fds of a process (from /proc). */
export function daemonUsage(pid: number): DaemonUsage {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const rss = status.match(/^VmRSS:\s+(\d+) kB/m);
  if (!rss) throw new Error(`/proc/${pid}/status has no VmRSS line`);
  return { rssKiB: Number(rss[1]), fds: fs.readdirSync(`/proc/${pid}/fd`).length };
}

/** Waits until the daemon's fd count is back to at most `fds` (sessions closing) or throws after timeoutMs. */
export async function fdsBackTo(pid: number, fds: number, timeoutMs: number): Promise<number> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const now = daemonUsage(pid).fds;
    if (now <= fds) return now;
    if (performance.now() > deadline) throw new Error(`the daemon still holds ${now} fds, ${now - fds} above its baseline of ${fds}`);
    await sleep(100);
  }
}
