/**
 * The protobuf wire format (proto2) for the few CRIU image messages lazyd reads and writes (./schema.ts), without a
 * protobuf library: a restore waits for `lazyd lazy-pages` to read its images, and loading protobufjs cost more
 * (~25-50 ms) than everything else it does before it listens.
 *
 * Decoding follows what protobufjs' reflection decoder does, so results are the same on any input (checked against
 * protobufjs by test/unit/proto-wire.test.ts, on real images and on random bytes):
 *   - a known field is read as its declared type whatever its wire type; repeated scalars also packed (wire type 2);
 *   - unknown fields are skipped by wire type (groups too); wire types 4, 6, 7 there are an error;
 *   - an absent field reads as its default (0, 0n, false, "", null) from the message's prototype, so
 *     `has()` (own property) tells presence; repeated fields are always own arrays;
 *   - 64-bit fields decode to bigint (toBigInt() in ./int64.ts takes it); uint32 keeps the low 32 bits.
 * Where protobufjs is lenient with malformed bytes (a varint longer than 10 bytes, a varint cut by the end of the
 * record, invalid UTF-8) this decoder refuses them (an Error: decodeRecord() makes it an ImageError) or, for UTF-8,
 * puts U+FFFD; every well-formed message decodes the same.
 * Encoding writes the present fields in field-number order, repeated scalars unpacked (proto2), as protobufjs does.
 */

type Scalar = 'uint32' | 'uint64' | 'sint64' | 'bool' | 'string';

interface FieldSpec {
  name: string;
  id: number;
  repeated: boolean;
  /** A scalar type, or the name of a message type of the same schema. */
  type: Scalar | string;
}

const SCALARS: ReadonlySet<string> = new Set<Scalar>(['uint32', 'uint64', 'sint64', 'bool', 'string']);
const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_BYTES = 2;
const WIRE_GROUP_START = 3;
const WIRE_FIXED32 = 5;

/** Groups (unknown fields) nested deeper than this are refused rather than recursed into. */
const MAX_DEPTH = 100;

class Reader {
  pos = 0;
  depth = 0;
  constructor(
    readonly buf: Uint8Array,
    readonly len = buf.length,
  ) {}

  private outOfRange(need: number): RangeError {
    return new RangeError(`index out of range: ${this.pos} + ${need} > ${this.len}`);
  }

  private byte(): number {
    if (this.pos >= this.len) throw this.outOfRange(1);
    return this.buf[this.pos++]!;
  }

  /** A varint of up to 10 bytes as its low and high 32 bits. */
  varint(): [number, number] {
    let lo = 0;
    let hi = 0;
    let b: number;
    for (let i = 0; i < 4; i++) {
      b = this.byte();
      lo = (lo | ((b & 127) << (i * 7))) >>> 0;
      if (b < 128) return [lo, 0];
    }
    b = this.byte();
    lo = (lo | ((b & 127) << 28)) >>> 0;
    hi = (b & 127) >> 4;
    if (b < 128) return [lo, hi];
    for (let i = 0; i < 5; i++) {
      b = this.byte();
      hi = (hi | ((b & 127) << (i * 7 + 3))) >>> 0;
      if (b < 128) return [lo, hi];
    }
    throw new Error('invalid varint encoding');
  }

  uint32(): number {
    return this.varint()[0];
  }

  skip(n: number): void {
    if (this.pos + n > this.len) throw this.outOfRange(n);
    this.pos += n;
  }

  bytes(): Uint8Array {
    const n = this.uint32();
    const start = this.pos;
    this.skip(n);
    return this.buf.subarray(start, start + n);
  }

  skipType(wireType: number): void {
    switch (wireType) {
      case WIRE_VARINT:
        this.varint();
        return;
      case WIRE_FIXED64:
        this.skip(8);
        return;
      case WIRE_BYTES:
        this.skip(this.uint32());
        return;
      case WIRE_GROUP_START:
        if (++this.depth > MAX_DEPTH) throw new Error('maximum nesting depth exceeded');
        for (let t = this.uint32() & 7; t !== 4; t = this.uint32() & 7) this.skipType(t);
        this.depth--;
        return;
      case WIRE_FIXED32:
        this.skip(4);
        return;
      default:
        throw new Error(`invalid wire type ${wireType} at offset ${this.pos}`);
    }
  }
}

const u64 = ([lo, hi]: [number, number]): bigint => (BigInt(hi) << 32n) | BigInt(lo);
const UTF8 = new TextDecoder();

function readScalar(r: Reader, type: Scalar): unknown {
  switch (type) {
    case 'uint32':
      return r.uint32();
    case 'uint64':
      return u64(r.varint());
    case 'sint64': {
      const v = u64(r.varint());
      return BigInt.asIntN(64, (v >> 1n) ^ -(v & 1n));
    }
    case 'bool':
      return r.uint32() !== 0;
    case 'string':
      return UTF8.decode(r.bytes());
  }
}

function defaultOf(type: string): unknown {
  switch (type) {
    case 'uint32':
      return 0;
    case 'uint64':
    case 'sint64':
      return 0n;
    case 'bool':
      return false;
    case 'string':
      return '';
    default:
      return null;
  }
}

class Writer {
  private readonly bytes: number[] = [];
  varint(lo: number, hi: number): void {
    lo >>>= 0;
    hi >>>= 0;
    while (hi !== 0 || lo > 127) {
      this.bytes.push((lo & 127) | 128);
      lo = ((lo >>> 7) | (hi << 25)) >>> 0;
      hi >>>= 7;
    }
    this.bytes.push(lo);
  }
  uint64(v: bigint): void {
    const u = BigInt.asUintN(64, v);
    this.varint(Number(u & 0xffffffffn), Number(u >> 32n));
  }
  raw(data: Uint8Array): void {
    this.varint(data.length, 0);
    for (const b of data) this.bytes.push(b);
  }
  tag(id: number, wireType: number): void {
    this.varint(((id << 3) | wireType) >>> 0, 0);
  }
  finish(): Uint8Array {
    return Uint8Array.from(this.bytes);
  }
}

/** A 64-bit value as given to encode(): bigint, number, or protobufjs' {low, high} (./int64.ts fromBigInt). */
function toU64(v: unknown): bigint {
  if (typeof v === 'bigint') return v;
  if (typeof v === 'number') return BigInt(Math.trunc(v));
  if (typeof v === 'object' && v !== null && 'low' in v && 'high' in v) {
    const { low, high } = v as { low: number; high: number };
    return (BigInt(high >>> 0) << 32n) | BigInt(low >>> 0);
  }
  if (typeof v === 'string') return BigInt(v);
  throw new TypeError(`not a 64-bit integer: ${String(v)}`);
}

export type Decoded = Record<string, unknown>;

/** One message type of a schema: decode() and encode(), by the field table. */
export class MessageType {
  private readonly byId = new Map<number, FieldSpec>();
  private readonly defaults: Decoded;
  constructor(
    readonly name: string,
    readonly fields: readonly FieldSpec[],
    private readonly lookup: (name: string) => MessageType,
  ) {
    for (const f of fields) this.byId.set(f.id, f);
    this.defaults = Object.fromEntries(fields.filter((f) => !f.repeated).map((f) => [f.name, defaultOf(f.type)]));
  }

  decode(bytes: Uint8Array): Decoded {
    return this.read(new Reader(bytes), bytes.length);
  }

  private read(r: Reader, length: number): Decoded {
    const end = r.pos + length;
    const m: Decoded = Object.create(this.defaults);
    for (const f of this.fields) if (f.repeated) m[f.name] = [];
    while (r.pos < end) {
      const tag = r.uint32();
      const f = this.byId.get(tag >>> 3);
      if (!f) {
        r.skipType(tag & 7);
        continue;
      }
      const value = (): unknown => (SCALARS.has(f.type) ? readScalar(r, f.type as Scalar) : this.lookup(f.type).read(r, r.uint32()));
      if (!f.repeated) {
        m[f.name] = value();
      } else if (SCALARS.has(f.type) && f.type !== 'string' && (tag & 7) === WIRE_BYTES) {
        const packedEnd = r.uint32() + r.pos;
        while (r.pos < packedEnd) (m[f.name] as unknown[]).push(readScalar(r, f.type as Scalar));
      } else {
        (m[f.name] as unknown[]).push(value());
      }
    }
    return m;
  }

  /** The fields that are set (not undefined or null), in field-number order. */
  encode(fields: Readonly<Record<string, unknown>>): Uint8Array {
    const w = new Writer();
    this.write(w, fields);
    return w.finish();
  }

  private write(w: Writer, fields: Readonly<Record<string, unknown>>): void {
    for (const f of [...this.fields].sort((a, b) => a.id - b.id)) {
      const v = Object.prototype.hasOwnProperty.call(fields, f.name) ? fields[f.name] : undefined;
      if (v === undefined || v === null) continue;
      for (const item of f.repeated ? (v as unknown[]) : [v]) this.writeOne(w, f, item);
    }
  }

  private writeOne(w: Writer, f: FieldSpec, v: unknown): void {
    switch (f.type) {
      case 'uint32':
        w.tag(f.id, WIRE_VARINT);
        w.varint(Number(v) >>> 0, 0);
        return;
      case 'bool':
        w.tag(f.id, WIRE_VARINT);
        w.varint(v ? 1 : 0, 0);
        return;
      case 'uint64':
        w.tag(f.id, WIRE_VARINT);
        w.uint64(toU64(v));
        return;
      case 'sint64': {
        const s = BigInt.asIntN(64, toU64(v));
        w.tag(f.id, WIRE_VARINT);
        w.uint64((s << 1n) ^ (s >> 63n));
        return;
      }
      case 'string':
        w.tag(f.id, WIRE_BYTES);
        w.raw(new TextEncoder().encode(String(v)));
        return;
      default: {
        const inner = new Writer();
        this.lookup(f.type).write(inner, v as Record<string, unknown>);
        w.tag(f.id, WIRE_BYTES);
        w.raw(inner.finish());
      }
    }
  }
}

const MESSAGE_RE = /message\s+(\w+)\s*\{([^}]*)\}/g;
const FIELD_RE = /^\s*(optional|required|repeated)\s+(\w+)\s+(\w+)\s*=\s*(\d+)\s*;/;

/**
 * The message types of a proto2 schema text in the subset ./schema.ts writes: `message Name { optional|repeated
 * <scalar or message> name = N; }`, `//` comments, no nesting. Anything else in a message body is an error.
 */
export function parseSchema(text: string): Map<string, MessageType> {
  const types = new Map<string, MessageType>();
  const lookup = (name: string): MessageType => {
    const t = types.get(name);
    if (!t) throw new Error(`schema: unknown message type ${name}`);
    return t;
  };
  for (const [, name, body] of text.matchAll(MESSAGE_RE)) {
    const fields: FieldSpec[] = [];
    for (const raw of body!.split('\n')) {
      const line = raw.replace(/\/\/.*$/, '').trim();
      if (!line) continue;
      const m = FIELD_RE.exec(line);
      if (!m) throw new Error(`schema: message ${name}: cannot read "${line}"`);
      fields.push({ repeated: m[1] === 'repeated', type: m[2]!, name: m[3]!, id: Number(m[4]) });
    }
    types.set(name!, new MessageType(name!, fields, lookup));
  }
  for (const t of types.values()) {
    for (const f of t.fields) if (!SCALARS.has(f.type)) lookup(f.type);
  }
  return types;
}
