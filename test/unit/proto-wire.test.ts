// lazyd's own protobuf codec (src/images/proto-wire.ts) against protobufjs, the reference it replaced on the
// start-up path: every record of the real CRIU 4.1.1 and 4.2.1 images in test/fixtures decodes the same, random
// well-formed messages (unknown fields, packed and unpacked repeats, groups included) decode the same and encode
// to the same bytes, and arbitrary bytes only ever give a message or an Error.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import protobuf from 'protobufjs';
import { CRIU_PROTO, root } from '../../src/images/schema.js';
import { IMAGE_KINDS, splitImage } from '../../src/images/image-file.js';
import type { MessageType } from '../../src/images/proto-wire.js';
import { FIXTURE_VERSIONS, fixturePath } from '../fixtures/fixtures.js';

const reference = protobuf.parse(CRIU_PROTO, { keepCase: true }).root;
const refType = (name: string) => reference.lookupType(`lazyd.criu.${name}`);
const ours = (name: string): MessageType => root.get(name)!;

/** protobufjs' 64-bit values (Long), and what its writer takes for them. */
interface LongLike {
  low: number;
  high: number;
  unsigned: boolean;
}
function isLong(v: unknown): v is LongLike {
  return typeof v === 'object' && v !== null && typeof (v as LongLike).low === 'number' && typeof (v as LongLike).high === 'number';
}
function long(v: bigint, unsigned: boolean): LongLike {
  const u = BigInt.asUintN(64, v);
  return { low: Number(u & 0xffffffffn) | 0, high: Number(u >> 32n) | 0, unsigned };
}

/** A decoded message as plain data: own fields only, Long and bigint as decimal text, nested alike. */
function plain(value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (isLong(value)) {
    const bits = (BigInt(value.high >>> 0) << 32n) | BigInt(value.low >>> 0);
    return (value.unsigned ? bits : BigInt.asIntN(64, bits)).toString();
  }
  if (Array.isArray(value)) return value.map(plain);
  if (value instanceof Uint8Array) return [...value];
  if (typeof value === 'object' && value !== null) {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, plain((value as Record<string, unknown>)[k])]));
  }
  return value;
}

/** What an absent field reads as (the prototype's default), as plain data. */
function defaults(type: protobuf.Type, msg: object): unknown {
  return plain(Object.fromEntries(type.fieldsArray.filter((f) => !f.repeated).map((f) => [f.name, (msg as Record<string, unknown>)[f.name]])));
}

function assertSameDecode(name: string, bytes: Uint8Array, what: string): void {
  const theirs = refType(name).decode(bytes);
  const mine = ours(name).decode(bytes);
  assert.deepEqual(plain(mine), plain(theirs), `${what}: fields`);
  assert.deepEqual(defaults(refType(name), mine), defaults(refType(name), theirs), `${what}: absent fields read as their defaults`);
}

const IMAGE_MESSAGES: [RegExp, keyof typeof IMAGE_KINDS, string[]][] = [
  [/^inventory\.img$/, 'inventory', ['InventoryEntry']],
  [/^pstree\.img$/, 'pstree', ['PstreeEntry']],
  [/^core-\d+\.img$/, 'core', ['CoreEntry']],
  [/^mm-\d+\.img$/, 'mm', ['MmEntry']],
  [/^pagemap-\d+\.img$/, 'pagemap', ['PagemapHead', 'PagemapEntry']],
];

test('every record of the recorded CRIU images decodes as protobufjs decodes it', () => {
  let records = 0;
  for (const { version } of FIXTURE_VERSIONS) {
    for (const dir of ['plain-dump/images', 'remote-lazy/images', 'upload/dump-images', 'upload/page-server-images']) {
      const full = fixturePath(version, dir.split('/')[0] as 'plain-dump', ...dir.split('/').slice(1));
      if (!fs.existsSync(full)) continue;
      for (const file of fs.readdirSync(full)) {
        const kind = IMAGE_MESSAGES.find(([re]) => re.test(file));
        if (!kind) continue;
        const [, image, [first, rest = first]] = kind;
        splitImage(fs.readFileSync(path.join(full, file)), IMAGE_KINDS[image], file).forEach((rec, i) => {
          assertSameDecode(i === 0 ? first : rest, rec.data, `${version} ${dir}/${file} record ${i}`);
          records++;
        });
      }
    }
  }
  assert.ok(records > 50, `${records} records compared`);
});

// Random values for each field of a message type, as protobufjs' encoder takes them.
function valuesOf(type: protobuf.Type, depth = 0): fc.Arbitrary<Record<string, unknown>> {
  const fields: Record<string, fc.Arbitrary<unknown>> = {};
  for (const f of type.fieldsArray) {
    let one: fc.Arbitrary<unknown>;
    switch (f.type) {
      case 'uint32':
        one = fc.integer({ min: 0, max: 0xffffffff });
        break;
      case 'uint64':
        one = fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }).map((v) => long(v, true));
        break;
      case 'sint64':
        one = fc.bigInt({ min: -(1n << 63n), max: (1n << 63n) - 1n }).map((v) => long(v, false));
        break;
      case 'bool':
        one = fc.boolean();
        break;
      case 'string':
        one = fc.string({ unit: 'grapheme', maxLength: 20 });
        break;
      default:
        one = depth > 2 ? fc.constant({}) : valuesOf(refType(f.type), depth + 1);
    }
    fields[f.name] = f.repeated ? fc.array(one, { maxLength: 5 }) : one;
  }
  return fc.record(fields, { requiredKeys: [] });
}

/** Fields lazyd's schema does not know, as a newer CRIU may write them: every wire type, groups included. */
const unknownFields = fc.array(
  fc.oneof(
    fc.tuple(fc.integer({ min: 40, max: 5000 }), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })).map(([id, v]) => {
      const w = protobuf.Writer.create().uint32((id << 3) | 0);
      return w.uint64(long(v, true) as unknown as number).finish();
    }),
    fc.tuple(fc.integer({ min: 40, max: 5000 }), fc.uint8Array({ maxLength: 12 })).map(([id, b]) => protobuf.Writer.create().uint32((id << 3) | 2).bytes(b).finish()),
    fc.integer({ min: 40, max: 5000 }).map((id) => protobuf.Writer.create().uint32((id << 3) | 1).fixed64(7).finish()),
    fc.integer({ min: 40, max: 5000 }).map((id) => protobuf.Writer.create().uint32((id << 3) | 5).fixed32(9).finish()),
    fc.integer({ min: 40, max: 5000 }).map((id) => protobuf.Writer.create().uint32((id << 3) | 3).uint32((41 << 3) | 0).uint32(5).uint32((id << 3) | 4).finish()),
  ),
  { maxLength: 4 },
);

const NAMES = [...root.keys()];

test('random well-formed messages (and unknown fields) decode as protobufjs decodes them, and encode to its bytes', () => {
  for (const name of NAMES) {
    const type = refType(name);
    fc.assert(
      fc.property(valuesOf(type), unknownFields, fc.boolean(), (values, extra, extraFirst) => {
        const theirBytes = type.encode(type.create(values)).finish();
        // Our encoder takes what ./int64.ts fromBigInt gives ({low, high}), which a Long is.
        assert.deepEqual([...ours(name).encode(values)], [...theirBytes], `${name}: encoded bytes`);
        const bytes = Buffer.concat(extraFirst ? [...extra, theirBytes] : [theirBytes, ...extra]);
        assertSameDecode(name, bytes, name);
      }),
      { numRuns: 300 },
    );
  }
});

test('repeated scalars decode packed and unpacked alike (pstree threads)', () => {
  const packed = protobuf.Writer.create().uint32((5 << 3) | 2).fork().uint32(7).uint32(300).uint32(0xffffffff).ldelim().finish();
  const unpacked = protobuf.Writer.create().uint32(5 << 3).uint32(7).uint32(5 << 3).uint32(300).finish();
  assertSameDecode('PstreeEntry', packed, 'packed');
  assertSameDecode('PstreeEntry', unpacked, 'unpacked');
  assert.deepEqual(ours('PstreeEntry').decode(packed).threads, [7, 300, 0xffffffff]);
});

test('arbitrary bytes give a message or an Error, never anything else', () => {
  for (const name of NAMES) {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        try {
          ours(name).decode(bytes);
        } catch (error) {
          assert.ok(error instanceof Error, `${name}: threw ${String(error)}`);
        }
      }),
      { numRuns: 2000 },
    );
  }
});
