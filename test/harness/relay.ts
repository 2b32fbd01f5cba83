// A TCP relay on loopback for failure tests: it forwards each client connection to a server byte for byte, and
// can break or slow one direction the way a network does:
//   cut       after N bytes one way on a connection, both sides are closed with a reset (SO_LINGER 0): each
//             peer sees ECONNRESET/EPIPE mid-stream, as when the link or the other host dies;
//   throttle  at most R bytes per second one way (a slow link), so a transfer is surely still in progress
//             when the test interferes;
//   record    keeps the first N bytes each way of every connection (recorded()), to check what a peer sent;
//   hold      (on demand) from now on the requests are swallowed: the server answers what it already got and then
//             waits at a header boundary, while the client waits for replies that never come;
//   cuts      resets the connection that carries the byte at each of these offsets of all the bytes one way (over
//             every connection, in the order forwarded): a link cut again and again, whichever connection it hits;
//   silence   (on demand) the connections open now forward nothing more either way and stay open, as a link that
//             went quiet; later connections pass;
//   down      (on demand) every connection is reset and every later one too, at once, until up();
//   flip      follows the lazy-fetch replies to the client (a lazyd link's HELLO reply and checksum trailers
//             included, docs/protocol.md §7) and flips one bit in one page of a chosen GET reply — and, with
//             `always`, in that same page of every later reply that carries it (the client's re-fetch).
// Once one side of a connection goes away the other is closed too, the way it went: a reset passes on as a reset
// (CRIU tells them apart: `criu dump --lazy-pages` takes an EOF for a finished transfer and a reset for a failed
// one), a close as a close — and a half-close as a half-close: the other direction carries on until its side ends.
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { decodeHeader, HELLO_MAGIC, HELLO_SIZE, LINK_FEATURE_CHECKSUM, type WireFormat } from './wire.js';

export type RelayDirection = 'to-server' | 'to-client';

export interface RelayOptions {
  cut?: { direction: RelayDirection; bytes: number };
  throttle?: { direction: RelayDirection; bytesPerSecond: number };
  /** Reset the connection carrying each of these byte offsets of the stream one way (all connections together). */
  cuts?: { direction: RelayDirection; at: number[] };
  /** Keep the first this many bytes each way of every connection (recorded()). */
  record?: number;
  /**
   * Flip a bit of a reply page to the client: in the first reply from the reply-th (1 by default) that carries a
   * page in range (when given), in the first such page; always: also in every later reply that carries it. format
   * is the images' header layout.
   */
  flip?: { format: WireFormat; reply?: number; range?: { start: bigint; end: bigint }; always?: boolean };
}

/** A bit the relay flipped: in the page at vaddr of pid, in the reply-th GET reply of its connection. */
export interface FlippedBit {
  reply: number;
  pid: number;
  vaddr: bigint;
}

export interface Relay {
  address: string;
  port: number;
  /** Resolves when a connection has been cut (options.cut). */
  cut: Promise<void>;
  /** Bytes forwarded so far, all connections. */
  forwarded: Record<RelayDirection, number>;
  /** Connections accepted so far. */
  connections(): number;
  /** options.record: the first bytes each way, one entry per connection in accept order. */
  recorded(): Record<RelayDirection, Buffer>[];
  /** options.flip: every bit flipped so far. */
  flipped: FlippedBit[];
  /**
   * Drops every byte to the server from now on; resolves once nothing has come back from the server for quietMs
   * (its answers to what it had got are through).
   */
  hold(quietMs?: number): Promise<void>;
  /** options.cuts: the cuts made so far. */
  cutsMade(): number;
  /** The connections open now forward nothing more, either way; they stay open. */
  silence(): void;
  /** Every connection is reset, and every new one at once, until up(). */
  down(): void;
  up(): void;
  /** Stops listening and destroys every connection. */
  close(): Promise<void>;
}

export async function startRelay(target: { address: string; port: number }, options: RelayOptions = {}): Promise<Relay> {
  const forwarded: Record<RelayDirection, number> = { 'to-server': 0, 'to-client': 0 };
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  const recordings: Record<RelayDirection, Buffer[]>[] = [];
  let holding = false;
  let lastToClientAt = performance.now();
  let resolveCut!: () => void;
  const cut = new Promise<void>((resolve) => (resolveCut = resolve));
  const flipped: FlippedBit[] = [];
  // One page flipped per relay, whichever connection carries it first (a lazyd link has two: the drain's and the
  // faults', docs/protocol.md §7.5); with `always`, again in every later reply that carries it, on either.
  const flipTarget: FlipTarget = {};
  const cutPoints = [...(options.cuts?.at ?? [])].sort((a, b) => a - b);
  let cutsMade = 0;
  let isDown = false;
  const silenced = new WeakSet<net.Socket>();
  const resets = new Set<() => void>();

  // Half-open: a peer that sends its FIN and still reads (lazyd's relay after CLOSE, which waits for the dump's
  // answer: criu corks it until the socket closes) gets what the other side sends until that side ends too.
  const server = net.createServer({ allowHalfOpen: true }, (client) => {
    accepted++;
    if (isDown) {
      client.resetAndDestroy();
      return;
    }
    const recording: Record<RelayDirection, Buffer[]> = { 'to-server': [], 'to-client': [] };
    recordings.push(recording);
    const upstream = net.connect({ port: target.port, host: target.address, allowHalfOpen: true });
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.setNoDelay(true);
      socket.on('close', () => sockets.delete(socket));
    }
    const reset = () => {
      client.resetAndDestroy();
      upstream.resetAndDestroy();
      resolveCut();
    };
    resets.add(reset);
    client.on('close', () => resets.delete(reset));
    const forward = (from: net.Socket, to: net.Socket, direction: RelayDirection) => {
      const cutAt = options.cut?.direction === direction ? options.cut.bytes : Infinity;
      const rate = options.throttle?.direction === direction ? options.throttle.bytesPerSecond : Infinity;
      // When the link is free again (performance.now() ms). A link that sat idle does not pass a burst afterwards:
      // measured from the connection's start, the time a restore spends before it asks for its pages would let
      // that many seconds' worth of bytes through at once, and the transfer would not be in progress any more.
      let freeAt = 0;
      let count = 0;
      const flipper = options.flip && direction === 'to-client' ? replyFlipper(options.flip, flipped, flipTarget) : undefined;
      from.on('data', (data: Buffer) => {
        if (silenced.has(client)) return;
        const chunk = flipper ? flipper(data) : data;
        if (direction === 'to-client') lastToClientAt = performance.now();
        if (options.cuts?.direction === direction && cutPoints.length > 0 && forwarded[direction] + chunk.length > cutPoints[0]) {
          // This chunk carries the next cut point: what comes before it passes, then the connection is reset.
          const before = cutPoints.shift()! - forwarded[direction];
          while (cutPoints.length > 0 && cutPoints[0] <= forwarded[direction] + before) cutPoints.shift();
          forwarded[direction] += Math.max(before, 0);
          cutsMade++;
          to.write(chunk.subarray(0, Math.max(before, 0)), () => reset());
          from.pause();
          return;
        }
        if (count >= cutAt || (holding && direction === 'to-server')) return;
        const part = count + chunk.length >= cutAt ? chunk.subarray(0, cutAt - count) : chunk;
        if (options.record && count < options.record) recording[direction].push(Buffer.from(part.subarray(0, options.record - count)));
        count += part.length;
        forwarded[direction] += part.length;
        const last = count >= cutAt;
        const flushed = to.write(part, () => {
          if (last) reset();
        });
        if (last) return;
        // Throttled: the chunk occupies the link for part.length / rate; always wait for the peer to drain.
        const now = performance.now();
        freeAt = Math.max(freeAt, now) + (part.length / rate) * 1000;
        const aheadMs = freeAt - now;
        if (flushed && aheadMs <= 0) return;
        from.pause();
        const drained = flushed ? Promise.resolve() : new Promise((resolve) => to.once('drain', resolve));
        void Promise.all([drained, aheadMs > 0 ? sleep(aheadMs) : undefined]).then(() => from.resume());
      });
      // A FIN passes on as a FIN; the way back stays open.
      from.on('end', () => to.end());
    };
    forward(client, upstream, 'to-server');
    forward(upstream, client, 'to-client');
    const passOn = (to: net.Socket) => (error: NodeJS.ErrnoException) => {
      if (error.code === 'ECONNRESET') to.resetAndDestroy();
      else to.destroy();
    };
    client.on('error', passOn(upstream));
    upstream.on('error', passOn(client));
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;
  return {
    address: '127.0.0.1',
    port,
    cut,
    forwarded,
    connections: () => accepted,
    cutsMade: () => cutsMade,
    silence() {
      for (const socket of sockets) silenced.add(socket);
    },
    down() {
      isDown = true;
      for (const reset of [...resets]) reset();
    },
    up() {
      isDown = false;
    },
    flipped,
    recorded: () => recordings.map((r) => ({ 'to-server': Buffer.concat(r['to-server']), 'to-client': Buffer.concat(r['to-client']) })),
    async hold(quietMs = 500) {
      holding = true;
      lastToClientAt = performance.now();
      while (performance.now() - lastToClientAt < quietMs) await sleep(50);
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

const PAGE_SIZE = 4096;
/** Where in a page the bit is flipped: not at its start, so a page that begins with a header field is not spared. */
const FLIP_OFFSET = 1000;

/**
 * Follows one connection's server-to-client bytes (an optional HELLO reply, then GET replies: header, pages, and
 * under feature checksum a trailer of 4 bytes a page) and returns each chunk with the chosen bit flipped.
 */
interface FlipTarget {
  page?: { pid: number; vaddr: bigint };
}

function replyFlipper(flip: NonNullable<RelayOptions['flip']>, flipped: FlippedBit[], shared: FlipTarget): (chunk: Buffer) => Buffer {
  let phase: 'first' | 'hello' | 'head' | 'pages' | 'trailer' | 'other' = 'first';
  let head = Buffer.alloc(0);
  let checksums = false;
  let replies = 0;
  let left = 0;
  let pos = 0;
  let flipAt = -1;
  let pages = 0;
  let current = { pid: 0, vaddr: 0n };
  return (chunk) => {
    const out = Buffer.from(chunk);
    let i = 0;
    while (i < out.length && phase !== 'other') {
      if (phase === 'first' || phase === 'hello' || phase === 'head') {
        const size = phase === 'first' ? 4 : phase === 'hello' ? HELLO_SIZE : flip.format;
        const take = Math.min(size - head.length, out.length - i);
        head = Buffer.concat([head, out.subarray(i, i + take)]);
        i += take;
        if (head.length < size) continue;
        if (phase === 'first') {
          phase = head.readUInt32LE(0) === HELLO_MAGIC ? 'hello' : 'head';
          continue;
        }
        if (phase === 'hello') {
          checksums = (head.readBigUInt64LE(8) & LINK_FEATURE_CHECKSUM) !== 0n;
          head = Buffer.alloc(0);
          phase = 'head';
          continue;
        }
        const h = decodeHeader(flip.format, head);
        head = Buffer.alloc(0);
        if (h.cmd !== 0x40006) {
          phase = 'other'; // the CLOSE answer, or not a lazy-fetch stream: passed on as it is
          continue;
        }
        replies++;
        pages = Number(h.nrPages);
        current = { pid: Number(h.dstId), vaddr: h.vaddr };
        flipAt = -1;
        const end = h.vaddr + BigInt(pages * PAGE_SIZE);
        const range = flip.range ?? { start: 0n, end: 1n << 64n };
        const target = shared.page;
        if (!target && replies >= (flip.reply ?? 1) && h.vaddr < range.end && end > range.start) {
          shared.page = { pid: current.pid, vaddr: h.vaddr > range.start ? h.vaddr : range.start };
          flipAt = Number(shared.page.vaddr - h.vaddr) + FLIP_OFFSET;
        } else if (flip.always && target && target.pid === current.pid && target.vaddr >= h.vaddr && target.vaddr < end) {
          flipAt = Number(target.vaddr - h.vaddr) + FLIP_OFFSET;
        }
        phase = 'pages';
        left = pages * PAGE_SIZE;
        pos = 0;
        continue;
      }
      const take = Math.min(left, out.length - i);
      if (phase === 'pages' && flipAt >= pos && flipAt < pos + take) {
        out[i + flipAt - pos] ^= 0x01;
        flipped.push({ reply: replies, pid: current.pid, vaddr: current.vaddr + BigInt(flipAt - FLIP_OFFSET) });
        flipAt = -1;
      }
      pos += take;
      left -= take;
      i += take;
      if (left > 0) continue;
      if (phase === 'pages' && checksums) {
        phase = 'trailer';
        left = pages * 4;
      } else {
        phase = 'head';
      }
    }
    return out;
  };
}
