// The page_server_iov wire header in both layouts, header autodetection, dst_id encoding, and parsers for whole
// recorded sessions (docs/protocol.md §1.2–§1.6). The TypeScript twin of native/core/wire/wire.{h,cc}.
//
// Headers are native-endian unpacked C structs; lazyd (like its C++ codec) supports little-endian hosts only, so
// everything here is little-endian.
//
//   24 bytes (CRIU <= 4.1): u32 cmd @0, u32 nr_pages @4, u64 vaddr @8,  u64 dst_id @16
//   32 bytes (CRIU >= 4.2): u32 cmd @0, u32 pad @4,      u64 nr_pages @8, u64 vaddr @16, u64 dst_id @24
import {
  CLOSE_REPLY_SIZE,
  DEFAULT_PAGE_SIZE,
  HEADER_SIZE_V24,
  HEADER_SIZE_V32,
  OPEN2_REPLY_SIZE,
  PARENT_REPLY_SIZE,
  PE_PRESENT,
  PID_MAX_LIMIT,
  PS_CMD_BITS,
  PS_CMD_MASK,
  PS_IOV_ADD,
  PS_IOV_ADD_F,
  PS_IOV_CLOSE,
  PS_IOV_FORCE_CLOSE,
  PS_IOV_GET,
  PS_IOV_HOLE,
  PS_IOV_OPEN,
  PS_IOV_OPEN2,
  PS_IOV_PARENT,
  PS_TYPE_BITS,
  PS_TYPE_LEGACY_PID,
  PS_TYPE_LEGACY_SHMEM,
  PS_TYPE_MASK,
  PS_TYPE_PID,
  PS_TYPE_SHMEM,
} from '../../src/protocol/constants.js';

/** Header size in bytes, which is also the name of the layout. */
export type WireFormat = 24 | 32;

export interface PsHeader {
  /** Raw u32: (flags << 16) | command. */
  cmd: number;
  /** Bytes 4..7 of the 32-byte layout (CRIU 4.2.1 sends stack garbage, lazy replies echo it); 0 in the 24-byte one. */
  pad: number;
  nrPages: bigint;
  vaddr: bigint;
  dstId: bigint;
}

/** A malformed header or session stream. `offset` is the byte offset in the stream where it went wrong. */
export class WireError extends Error {
  readonly offset: number | undefined;
  constructor(message: string, offset?: number) {
    super(offset === undefined ? message : `${message} (at byte ${offset})`);
    this.name = 'WireError';
    this.offset = offset;
  }
}

const U32_MAX = 0xffffffff;
const U64_MAX = (1n << 64n) - 1n;
const PID_MAX_LIMIT_N = BigInt(PID_MAX_LIMIT);

// ---- cmd ----

/** The command: the low 16 bits of cmd. */
export function command(cmd: number): number {
  return cmd & PS_CMD_MASK;
}

/** The PE_* flags: cmd >> 16. */
export function flags(cmd: number): number {
  return cmd >>> PS_CMD_BITS;
}

/** Builds cmd = (flags << 16) | command as an unsigned u32. */
export function makeCmd(cmd: number, cmdFlags = 0): number {
  if (!Number.isInteger(cmd) || cmd < 0 || cmd > PS_CMD_MASK) throw new RangeError(`command ${cmd} is not a u16`);
  if (!Number.isInteger(cmdFlags) || cmdFlags < 0 || cmdFlags > PS_CMD_MASK) {
    throw new RangeError(`flags ${cmdFlags} do not fit in 16 bits`);
  }
  return ((cmdFlags << PS_CMD_BITS) | cmd) >>> 0;
}

/** The same names as wire.cc command_name(): "ADD" ... "FORCE_CLOSE", or "unknown". Takes the command, not cmd. */
export function commandName(cmd: number): string {
  switch (cmd) {
    case PS_IOV_ADD: return 'ADD';
    case PS_IOV_HOLE: return 'HOLE';
    case PS_IOV_OPEN: return 'OPEN';
    case PS_IOV_OPEN2: return 'OPEN2';
    case PS_IOV_PARENT: return 'PARENT';
    case PS_IOV_ADD_F: return 'ADD_F';
    case PS_IOV_GET: return 'GET';
    case PS_IOV_CLOSE: return 'CLOSE';
    case PS_IOV_FORCE_CLOSE: return 'FORCE_CLOSE';
    default: return 'unknown';
  }
}

/** OPEN, OPEN2, PARENT, HOLE, ADD, ADD_F: the commands whose dst_id is (id << 8) | type. */
export function isUploadCommand(cmd: number): boolean {
  return cmd >= PS_IOV_ADD && cmd <= PS_IOV_ADD_F;
}

export function isKnownCommand(cmd: number): boolean {
  return (cmd >= PS_IOV_ADD && cmd <= PS_IOV_GET) || cmd === PS_IOV_CLOSE || cmd === PS_IOV_FORCE_CLOSE;
}

export function isCloseCommand(cmd: number): boolean {
  return cmd === PS_IOV_CLOSE || cmd === PS_IOV_FORCE_CLOSE;
}

// ---- header codec ----

export function isWireFormat(value: unknown): value is WireFormat {
  return value === HEADER_SIZE_V24 || value === HEADER_SIZE_V32;
}

export function headerSize(format: WireFormat): number {
  checkFormat(format);
  return format;
}

function checkFormat(format: unknown): asserts format is WireFormat {
  if (!isWireFormat(format)) throw new RangeError(`wire format must be 24 or 32, not ${String(format)}`);
}

function asBuffer(buf: Uint8Array): Buffer {
  return Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
}

function checkU32(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 0 || value > U32_MAX) throw new RangeError(`${name} ${value} is not a u32`);
}

function checkU64(name: string, value: bigint, max = U64_MAX): void {
  if (typeof value !== 'bigint' || value < 0n || value > max) {
    throw new RangeError(`${name} ${String(value)} is out of range (0..${max})`);
  }
}

/**
 * Encodes a header. In the 24-byte layout nrPages must fit in a u32 and pad is not sent (as in wire.cc encode()).
 * Throws RangeError for a field out of range.
 */
export function encodeHeader(format: WireFormat, h: PsHeader): Buffer {
  checkFormat(format);
  checkU32('cmd', h.cmd);
  checkU64('vaddr', h.vaddr);
  checkU64('dst_id', h.dstId);
  const out = Buffer.alloc(format);
  out.writeUInt32LE(h.cmd, 0);
  if (format === HEADER_SIZE_V24) {
    checkU64('nr_pages', h.nrPages, BigInt(U32_MAX));
    out.writeUInt32LE(Number(h.nrPages), 4);
    out.writeBigUInt64LE(h.vaddr, 8);
    out.writeBigUInt64LE(h.dstId, 16);
  } else {
    checkU32('pad', h.pad);
    checkU64('nr_pages', h.nrPages);
    out.writeUInt32LE(h.pad, 4);
    out.writeBigUInt64LE(h.nrPages, 8);
    out.writeBigUInt64LE(h.vaddr, 16);
    out.writeBigUInt64LE(h.dstId, 24);
  }
  return out;
}

/** Decodes the `format` bytes at `offset`. Throws RangeError if the buffer is too short. */
export function decodeHeader(format: WireFormat, buf: Uint8Array, offset = 0): PsHeader {
  checkFormat(format);
  if (!Number.isInteger(offset) || offset < 0 || offset + format > buf.length) {
    throw new RangeError(`a ${format}-byte header at offset ${offset} does not fit in ${buf.length} bytes`);
  }
  const b = asBuffer(buf);
  const cmd = b.readUInt32LE(offset);
  if (format === HEADER_SIZE_V24) {
    return {
      cmd,
      pad: 0,
      nrPages: BigInt(b.readUInt32LE(offset + 4)),
      vaddr: b.readBigUInt64LE(offset + 8),
      dstId: b.readBigUInt64LE(offset + 16),
    };
  }
  return {
    cmd,
    pad: b.readUInt32LE(offset + 4),
    nrPages: b.readBigUInt64LE(offset + 8),
    vaddr: b.readBigUInt64LE(offset + 16),
    dstId: b.readBigUInt64LE(offset + 24),
  };
}

/**
 * Autodetects the layout from the first header of a session (at least 24 bytes; only bytes 0..23 are read).
 * Exactly the rule of wire.cc detect() — see the comment in wire.h and README "Wire formats":
 *   GET:    24 if u32@4 >= 1, u64@8 nonzero and page-aligned, u64@16 in 1..PID_MAX_LIMIT;
 *           32 if u64@8 in 1..2^32-1, u64@16 page-aligned and > PID_MAX_LIMIT; undefined if neither (or both).
 *   ADD, HOLE, OPEN, OPEN2, PARENT, ADD_F: 24 if the low byte of u64@16 (the type byte of a 24-byte dst_id)
 *           is nonzero, else 32 (u64@16 is then a page-aligned vaddr, or 0). Nothing else is checked.
 *   CLOSE, FORCE_CLOSE, anything else, or fewer than 24 bytes: undefined.
 * The 32-byte padding (bytes 4..7) is never looked at on its own.
 */
export function detectFormat(buf: Uint8Array, pageSize: number = DEFAULT_PAGE_SIZE): WireFormat | undefined {
  if (!Number.isInteger(pageSize) || pageSize <= 0 || (pageSize & (pageSize - 1)) !== 0) {
    throw new RangeError(`page size ${pageSize} is not a power of two`);
  }
  if (buf.length < HEADER_SIZE_V24) return undefined;
  const b = asBuffer(buf);
  const cmd = command(b.readUInt32LE(0));
  const at8 = b.readBigUInt64LE(8);
  const at16 = b.readBigUInt64LE(16);
  const pageMask = BigInt(pageSize) - 1n;

  if (cmd === PS_IOV_GET) {
    const nr24 = b.readUInt32LE(4);
    const fits24 = nr24 >= 1 && at8 !== 0n && (at8 & pageMask) === 0n && at16 >= 1n && at16 <= PID_MAX_LIMIT_N;
    const fits32 = at8 >= 1n && at8 <= BigInt(U32_MAX) && (at16 & pageMask) === 0n && at16 > PID_MAX_LIMIT_N;
    if (fits24 === fits32) return undefined;
    return fits24 ? HEADER_SIZE_V24 : HEADER_SIZE_V32;
  }
  if (isUploadCommand(cmd)) {
    return (at16 & BigInt(PS_TYPE_MASK)) !== 0n ? HEADER_SIZE_V24 : HEADER_SIZE_V32;
  }
  return undefined;
}

// ---- dst_id ----

export interface DstId {
  id: bigint;
  /** The canonical type: PS_TYPE_PID or PS_TYPE_SHMEM (legacy numbers are mapped). */
  type: typeof PS_TYPE_PID | typeof PS_TYPE_SHMEM;
  /** The type byte as sent. */
  rawType: number;
}

/** Maps a dst_id type byte (1, 2 or a legacy number) to PS_TYPE_PID / PS_TYPE_SHMEM; undefined if unknown. */
export function canonicalType(rawType: number): typeof PS_TYPE_PID | typeof PS_TYPE_SHMEM | undefined {
  if (rawType === PS_TYPE_PID || PS_TYPE_LEGACY_PID.includes(rawType)) return PS_TYPE_PID;
  if (rawType === PS_TYPE_SHMEM || PS_TYPE_LEGACY_SHMEM.includes(rawType)) return PS_TYPE_SHMEM;
  return undefined;
}

/**
 * dst_id of an upload command: (id << 8) | type. `type` may be PS_TYPE_PID, PS_TYPE_SHMEM or a legacy number;
 * anything else throws. (A GET's dst_id is the bare pid: do not encode it.)
 */
export function encodeDstId(id: bigint | number, type: number = PS_TYPE_PID): bigint {
  const big = typeof id === 'bigint' ? id : Number.isSafeInteger(id) ? BigInt(id) : -1n;
  if (big < 0n || big >= 1n << BigInt(64 - PS_TYPE_BITS)) {
    throw new RangeError(`dst_id id ${String(id)} does not fit in ${64 - PS_TYPE_BITS} bits`);
  }
  if (!Number.isInteger(type) || canonicalType(type) === undefined) {
    throw new RangeError(`unknown pagemap type ${type}`);
  }
  return (big << BigInt(PS_TYPE_BITS)) | BigInt(type);
}

/** Splits an upload dst_id; throws WireError for an unknown type byte ("Unknown pagemap type" in CRIU). */
export function decodeDstId(dstId: bigint | number): DstId {
  const big = typeof dstId === 'bigint' ? dstId : Number.isSafeInteger(dstId) ? BigInt(dstId) : -1n;
  if (big < 0n || big > U64_MAX) throw new RangeError(`dst_id ${String(dstId)} is not a u64`);
  const rawType = Number(big & BigInt(PS_TYPE_MASK));
  const type = canonicalType(rawType);
  if (type === undefined) throw new WireError(`unknown pagemap type ${rawType} in dst_id 0x${big.toString(16)}`);
  return { id: big >> BigInt(PS_TYPE_BITS), type, rawType };
}

// ---- whole sessions ----

/** Bytes of page data that follow a client header: nr_pages pages for ADD, and for ADD_F with PE_PRESENT. */
export function payloadLength(h: PsHeader, pageSize: number = DEFAULT_PAGE_SIZE): bigint {
  const cmd = command(h.cmd);
  if (cmd === PS_IOV_ADD || (cmd === PS_IOV_ADD_F && (flags(h.cmd) & PE_PRESENT) !== 0)) {
    return h.nrPages * BigInt(pageSize);
  }
  return 0n;
}

/** Size of the bare reply the server sends to a client command: 1 (OPEN2), 4 (PARENT, CLOSE), else 0. */
export function bareReplySize(cmd: number): number {
  switch (cmd) {
    case PS_IOV_OPEN2: return OPEN2_REPLY_SIZE;
    case PS_IOV_PARENT: return PARENT_REPLY_SIZE;
    case PS_IOV_CLOSE:
    case PS_IOV_FORCE_CLOSE: return CLOSE_REPLY_SIZE;
    default: return 0;
  }
}

export interface ClientMessage {
  /** Position in the stream, from 0. */
  index: number;
  /** Byte offset of the header. */
  offset: number;
  header: PsHeader;
  command: number;
  flags: number;
  /** Byte offset of the page data (= offset + header size, also when there is none). */
  payloadOffset: number;
  payloadLength: number;
}

function remainingFits(need: bigint, offset: number, total: number): boolean {
  return need <= BigInt(total - offset);
}

/**
 * Parses a whole client→server stream (upload or lazy): every header and the page data after ADD / ADD_F with
 * PE_PRESENT. Throws WireError on an unknown command, a truncated header or payload, or bytes after CLOSE.
 * A stream that ends at a header boundary without CLOSE is accepted (the caller can look at the last message).
 */
export function parseClientStream(
  buf: Uint8Array,
  format: WireFormat,
  pageSize: number = DEFAULT_PAGE_SIZE,
): ClientMessage[] {
  checkFormat(format);
  const messages: ClientMessage[] = [];
  let offset = 0;
  while (offset < buf.length) {
    if (buf.length - offset < format) {
      throw new WireError(`truncated header: ${buf.length - offset} of ${format} bytes`, offset);
    }
    const header = decodeHeader(format, buf, offset);
    const cmd = command(header.cmd);
    if (!isKnownCommand(cmd)) {
      throw new WireError(`unknown command 0x${header.cmd.toString(16).padStart(8, '0')}`, offset);
    }
    const payloadOffset = offset + format;
    const length = payloadLength(header, pageSize);
    if (!remainingFits(length, payloadOffset, buf.length)) {
      throw new WireError(
        `truncated payload: ${commandName(cmd)} of ${header.nrPages} pages needs ${length} bytes, ` +
          `${buf.length - payloadOffset} left`,
        payloadOffset,
      );
    }
    messages.push({
      index: messages.length,
      offset,
      header,
      command: cmd,
      flags: flags(header.cmd),
      payloadOffset,
      payloadLength: Number(length),
    });
    offset = payloadOffset + Number(length);
    if (isCloseCommand(cmd) && offset !== buf.length) {
      throw new WireError(`${buf.length - offset} bytes after ${commandName(cmd)}`, offset);
    }
  }
  return messages;
}

export interface LazyReply {
  index: number;
  offset: number;
  header: PsHeader;
  /** Index in `requests` of the GET this answers (replies come in request order). */
  requestIndex: number;
  request: PsHeader;
  payloadOffset: number;
  payloadLength: number;
}

export interface StatusReply {
  offset: number;
  requestIndex: number;
  request: PsHeader;
  /** The command answered (OPEN2, PARENT, CLOSE, FORCE_CLOSE). */
  command: number;
  length: number;
  /** has_parent (u8) for OPEN2, the native int32 otherwise. */
  value: number;
}

export interface LazyReplyStream {
  replies: LazyReply[];
  /** The 4-byte status answering CLOSE / FORCE_CLOSE, if the requests had one. */
  close: StatusReply | undefined;
}

function headerOf(request: ClientMessage | PsHeader): PsHeader {
  return 'header' in request ? request.header : request;
}

function readBareReply(b: Buffer, offset: number, cmd: number, requestIndex: number, request: PsHeader): StatusReply {
  const length = bareReplySize(cmd);
  if (b.length - offset < length) {
    throw new WireError(`truncated ${commandName(cmd)} reply: ${b.length - offset} of ${length} bytes`, offset);
  }
  const value = length === 1 ? b.readUInt8(offset) : b.readInt32LE(offset);
  return { offset, requestIndex, request, command: cmd, length, value };
}

/**
 * Parses a whole server→client lazy stream, given the client's requests in order (parseClientStream output, or
 * bare headers): one reply per GET — a header whose nr_pages is 1..the requested count, then nr_pages pages —
 * and the 4-byte status for a CLOSE / FORCE_CLOSE. Like CRIU's client, it does not look at the reply's cmd,
 * vaddr or dst_id: check those yourself. Throws WireError on a truncated stream, a reply with 0 or too many
 * pages, a request that is not GET/CLOSE, or trailing bytes.
 */
export function parseLazyReplies(
  buf: Uint8Array,
  format: WireFormat,
  requests: readonly (ClientMessage | PsHeader)[],
  pageSize: number = DEFAULT_PAGE_SIZE,
): LazyReplyStream {
  checkFormat(format);
  const b = asBuffer(buf);
  const replies: LazyReply[] = [];
  let close: StatusReply | undefined;
  let offset = 0;
  for (let requestIndex = 0; requestIndex < requests.length; requestIndex++) {
    const request = headerOf(requests[requestIndex]!);
    const cmd = command(request.cmd);
    if (close) throw new WireError(`request #${requestIndex} (${commandName(cmd)}) after CLOSE`);
    if (isCloseCommand(cmd)) {
      close = readBareReply(b, offset, cmd, requestIndex, request);
      offset += close.length;
      continue;
    }
    if (cmd !== PS_IOV_GET) {
      throw new WireError(`request #${requestIndex} is ${commandName(cmd)}, not part of a lazy session`);
    }
    if (b.length - offset < format) {
      throw new WireError(`truncated reply header for GET #${requestIndex}: ${b.length - offset} of ${format} bytes`, offset);
    }
    const header = decodeHeader(format, b, offset);
    if (header.nrPages < 1n || header.nrPages > request.nrPages) {
      throw new WireError(
        `reply to GET #${requestIndex} has ${header.nrPages} pages, ${request.nrPages} were requested`,
        offset,
      );
    }
    const payloadOffset = offset + format;
    const length = header.nrPages * BigInt(pageSize);
    if (!remainingFits(length, payloadOffset, b.length)) {
      throw new WireError(
        `truncated reply to GET #${requestIndex}: ${length} bytes of pages, ${b.length - payloadOffset} left`,
        payloadOffset,
      );
    }
    replies.push({
      index: replies.length,
      offset,
      header,
      requestIndex,
      request,
      payloadOffset,
      payloadLength: Number(length),
    });
    offset = payloadOffset + Number(length);
  }
  if (offset !== b.length) throw new WireError(`${b.length - offset} unexpected bytes after the last reply`, offset);
  return { replies, close };
}

/**
 * Parses a whole server→client upload stream, given the client's requests in order: 1 byte for every OPEN2,
 * a 4-byte int32 for every PARENT, CLOSE and FORCE_CLOSE, nothing for the rest. Throws WireError on a GET
 * (use parseLazyReplies), a truncated stream or trailing bytes.
 */
export function parseUploadReplies(buf: Uint8Array, requests: readonly (ClientMessage | PsHeader)[]): StatusReply[] {
  const b = asBuffer(buf);
  const replies: StatusReply[] = [];
  let offset = 0;
  for (let requestIndex = 0; requestIndex < requests.length; requestIndex++) {
    const request = headerOf(requests[requestIndex]!);
    const cmd = command(request.cmd);
    if (cmd === PS_IOV_GET) throw new WireError(`request #${requestIndex} is a GET, not part of an upload`);
    if (!isKnownCommand(cmd)) throw new WireError(`request #${requestIndex} has unknown command 0x${cmd.toString(16)}`);
    if (bareReplySize(cmd) === 0) continue;
    const reply = readBareReply(b, offset, cmd, requestIndex, request);
    replies.push(reply);
    offset += reply.length;
  }
  if (offset !== b.length) throw new WireError(`${b.length - offset} unexpected bytes after the last reply`, offset);
  return replies;
}

// ---- The lazyd link (docs/protocol.md §7; native/core/wire/link_ext.h) ----

export const HELLO_MAGIC = 0x4c5a4b48;
export const HELLO_SIZE = 32;
export const LINK_FEATURE_BIND = 1n;
export const LINK_FEATURE_CHECKSUM = 2n;
/** Feature priority (§7.5): the restore's second connection, for demand faults. */
export const LINK_FEATURE_PRIORITY = 4n;
/** Feature resume (§7.6): a cut session is reconnected and its unanswered requests asked again. */
export const LINK_FEATURE_RESUME = 8n;

/** A HELLO (§7.2): magic, link version, the features wanted, the 16-byte token. */
export function encodeHello(token: Uint8Array, options: { version?: number; features?: bigint } = {}): Buffer {
  const out = Buffer.alloc(HELLO_SIZE);
  out.writeUInt32LE(HELLO_MAGIC, 0);
  out.writeUInt32LE(options.version ?? 1, 4);
  out.writeBigUInt64LE(options.features ?? LINK_FEATURE_BIND, 8);
  Buffer.from(token).copy(out, 16);
  return out;
}

/** A GET of nrPages pages at vaddr of pid, in the layout `format` (the 32-byte form's padding 0). */
export function encodeGet(format: WireFormat, pid: number, vaddr: bigint, nrPages = 1): Buffer {
  return encodeHeader(format, { cmd: PS_IOV_GET, pad: 0, nrPages: BigInt(nrPages), vaddr, dstId: BigInt(pid) });
}

const CRC32C_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    table[i] = c >>> 0;
  }
  return table;
})();

/** CRC32C (Castagnoli) of bytes: the per-page checksum of feature checksum (§7.4). */
export function crc32c(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC32C_TABLE[(c ^ b) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
