/**
 * 64-bit integers between protobufjs and bigint.
 *
 * protobufjs hands out 64-bit fields as Long objects ({low, high, unsigned}) when the `long` package is present,
 * otherwise as JS numbers (which may have lost precision). These helpers turn either into an exact bigint and
 * turn a bigint into the {low, high} shape the protobufjs writer accepts, so nothing is ever rounded.
 */

export interface LongBitsLike {
  low: number;
  high: number;
  unsigned: boolean;
}

function isLongLike(v: unknown): v is { low: number; high: number } {
  return typeof v === 'object' && v !== null && typeof (v as { low?: unknown }).low === 'number' &&
    typeof (v as { high?: unknown }).high === 'number';
}

/** Exact value of a decoded uint64/int64 (signed=false) or sint64/int64 (signed=true) field. */
export function toBigInt(v: unknown, signed = false): bigint {
  let raw: bigint;
  if (typeof v === 'bigint') {
    raw = v;
  } else if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) throw new RangeError(`64-bit value ${v} was decoded without the 'long' package and lost precision`);
    return BigInt(v);
  } else if (isLongLike(v)) {
    raw = (BigInt(v.high >>> 0) << 32n) | BigInt(v.low >>> 0);
  } else if (typeof v === 'string') {
    raw = BigInt(v);
  } else {
    throw new TypeError(`not a 64-bit integer: ${String(v)}`);
  }
  return signed ? BigInt.asIntN(64, raw) : BigInt.asUintN(64, raw);
}

/** The {low, high} form of a bigint for the protobufjs writer (two's complement for negatives). */
export function fromBigInt(v: bigint, signed = false): LongBitsLike {
  const min = signed ? -(1n << 63n) : 0n;
  const max = signed ? (1n << 63n) - 1n : (1n << 64n) - 1n;
  if (v < min || v > max) throw new RangeError(`${v} does not fit a ${signed ? 'signed' : 'unsigned'} 64-bit field`);
  const u = BigInt.asUintN(64, v);
  return { low: Number(u & 0xffffffffn) | 0, high: Number(u >> 32n) | 0, unsigned: !signed };
}

/** bigint → number, for counts that must be exact. */
export function toSafeNumber(v: bigint, what: string): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
    throw new RangeError(`${what} ${v} is too large`);
  }
  return Number(v);
}
