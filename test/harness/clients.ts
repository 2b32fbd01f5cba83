// Misbehaving page-server clients, for robustness tests: each connects, does one wrong thing, and reports whether
// (and when) the server closed the connection.
import { randomBytes } from 'node:crypto';
import net from 'node:net';

export const PS_IOV_GET = 7;

export type RogueKind =
  /** 4 KiB of random bytes, then silence. */
  | 'random-bytes'
  /** One well-formed header with an unknown command (0x7777). */
  | 'unknown-command'
  /** Connects and never sends anything. */
  | 'silent'
  /** Half of a GET header, then nothing. */
  | 'half-header';

export const ROGUE_KINDS: readonly RogueKind[] = ['random-bytes', 'unknown-command', 'silent', 'half-header'];

export interface RogueClient {
  kind: RogueKind;
  socket: net.Socket;
  /** Bytes the server sent us. */
  received: number;
  /** Resolves when the server ends or resets the connection, with the ms since we connected (never after destroy()). */
  closedByServer: Promise<number>;
  /** True once the server has closed or reset the connection. */
  readonly closed: boolean;
  /** Drops the connection (our side). */
  destroy(): void;
}

/** A page_server_iov header in the 24-byte (CRIU <= 4.1) or 32-byte (CRIU >= 4.2) layout, little-endian. */
export function encodeHeader(size: 24 | 32, cmd: number, nrPages: number, vaddr: bigint, dstId: bigint): Buffer {
  const header = Buffer.alloc(size);
  header.writeUInt32LE(cmd, 0);
  if (size === 24) {
    header.writeUInt32LE(nrPages, 4);
    header.writeBigUInt64LE(vaddr, 8);
    header.writeBigUInt64LE(dstId, 16);
  } else {
    header.writeBigUInt64LE(BigInt(nrPages), 8);
    header.writeBigUInt64LE(vaddr, 16);
    header.writeBigUInt64LE(dstId, 24);
  }
  return header;
}

export function roguePayload(kind: RogueKind, headerSize: 24 | 32): Buffer {
  switch (kind) {
    case 'random-bytes': {
      const bytes = randomBytes(4096);
      bytes.writeUInt32LE(0xdeadbeef, 0); // never a valid command, whatever the rest happens to be
      return bytes;
    }
    case 'unknown-command':
      return encodeHeader(headerSize, 0x7777, 1, 0x1000n, 1n);
    case 'half-header':
      return encodeHeader(headerSize, PS_IOV_GET, 1, 0x7f0000000000n, 1n).subarray(0, headerSize / 2);
    case 'silent':
      return Buffer.alloc(0);
  }
}

/** Connects and misbehaves; resolves once connected and the bad bytes are written. */
export async function connectRogueClient(
  address: string,
  port: number,
  kind: RogueKind,
  headerSize: 24 | 32,
): Promise<RogueClient> {
  const socket = net.connect({ host: address, port });
  const connectedAt = performance.now();
  let closed = false;
  let destroyedByUs = false;
  const client: RogueClient = {
    kind,
    socket,
    received: 0,
    closedByServer: new Promise<number>((resolve) => {
      const done = () => {
        if (destroyedByUs || closed) return;
        closed = true;
        resolve(performance.now() - connectedAt);
      };
      socket.on('end', done);
      socket.on('close', done);
    }),
    get closed() {
      return closed;
    },
    destroy() {
      destroyedByUs = true;
      socket.destroy();
    },
  };
  socket.on('data', (chunk: Buffer) => (client.received += chunk.length));
  socket.on('error', () => undefined); // ECONNRESET is an answer too
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const payload = roguePayload(kind, headerSize);
  if (payload.length) await new Promise<void>((resolve) => socket.write(payload, () => resolve()));
  return client;
}
