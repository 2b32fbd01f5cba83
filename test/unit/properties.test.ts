// Property tests (fast-check): the wire codec round-trips in both layouts, the TypeScript autodetection agrees
// with the native one (wire.cc detect(), through the addon) on random and on structured headers, pagemaps
// round-trip through encode and parse in every encoding, and the image framing turns every truncation and
// corruption into an ImageError (or, cut at a record boundary, a shorter valid image) — never another exception.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { decodeHeader, detectFormat, encodeHeader, type PsHeader, type WireFormat } from '../harness/wire.js';
import { ImageError, encodePagemap, parsePagemap, type PagemapEncoding } from '../../src/images/index.js';
import { loadNative } from '../../src/native.js';

const RUNS = { numRuns: 2000 };
const U32 = 0xffffffff;
const U64 = (1n << 64n) - 1n;
const PAGE = 4096;
const PID_MAX_LIMIT = 4n * 1024n * 1024n;
const GET = 7;
const UPLOAD_COMMANDS = [1, 2, 3, 4, 5, 6];

const u32 = fc.integer({ min: 0, max: U32 });
const u64 = fc.bigInt({ min: 0n, max: U64 });
/** u64 values biased to the edges the rules look at. */
const edgyU64 = fc.oneof(
  u64,
  fc.constantFrom(0n, 1n, PID_MAX_LIMIT - 1n, PID_MAX_LIMIT, PID_MAX_LIMIT + 1n, BigInt(U32), BigInt(U32) + 1n, U64, U64 - 4095n),
  fc.bigInt({ min: 0n, max: (1n << 52n) - 1n }).map((n) => n * BigInt(PAGE)),
  fc.bigInt({ min: 1n, max: PID_MAX_LIMIT }),
);
const commandArb = fc.oneof(fc.constantFrom(GET, 0x1023, 0x1024, ...UPLOAD_COMMANDS), u32.map((c) => c & 0xffff), u32);

function headerArb(format: WireFormat): fc.Arbitrary<PsHeader> {
  return fc.record({
    cmd: fc.oneof(commandArb, u32),
    pad: format === 32 ? u32 : fc.constant(0),
    nrPages: format === 24 ? u32.map(BigInt) : edgyU64,
    vaddr: edgyU64,
    dstId: edgyU64,
  });
}

for (const format of [24, 32] as const) {
  test(`wire: ${format}-byte headers round-trip through encode and decode`, () => {
    fc.assert(
      fc.property(headerArb(format), (h) => {
        const bytes = encodeHeader(format, h);
        assert.equal(bytes.length, format);
        assert.deepEqual(decodeHeader(format, bytes), { ...h });
      }),
      RUNS,
    );
  });

  test(`wire: any ${format} bytes decode and re-encode to themselves`, () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: format, maxLength: format }), (raw) => {
        const bytes = Buffer.from(raw);
        assert.ok(encodeHeader(format, decodeHeader(format, bytes)).equals(bytes));
      }),
      RUNS,
    );
  });
}

test('wire: a 24-byte header refuses nr_pages above u32, and only those', () => {
  fc.assert(
    fc.property(u64, (nrPages) => {
      const h: PsHeader = { cmd: GET, pad: 0, nrPages, vaddr: 0x1000n, dstId: 1n };
      if (nrPages <= BigInt(U32)) assert.equal(encodeHeader(24, h).length, 24);
      else assert.throws(() => encodeHeader(24, h), RangeError);
    }),
    RUNS,
  );
});

test('detect: the TypeScript rule agrees with the native wire.cc detect() on random and structured headers', () => {
  const native = loadNative();
  const nativeDetect = (bytes: Uint8Array, pageSize: number): WireFormat | undefined => {
    const result = native.detectFormat(bytes, pageSize) as number;
    return result === 0 ? undefined : (result as WireFormat);
  };
  const structured = fc
    .tuple(fc.constantFrom<WireFormat>(24, 32), headerArb(32), fc.uint8Array({ maxLength: 16 }))
    .map(([format, h, tail]) => {
      const header = format === 24 ? { ...h, nrPages: h.nrPages & BigInt(U32), pad: 0 } : h;
      return Buffer.concat([encodeHeader(format, header), tail]);
    });
  const bytesArb = fc.oneof(fc.uint8Array({ maxLength: 48 }).map((a) => Buffer.from(a)), structured);
  fc.assert(
    fc.property(bytesArb, fc.constantFrom(4096, 16384, 65536), (bytes, pageSize) => {
      assert.equal(detectFormat(bytes, pageSize), nativeDetect(bytes, pageSize));
    }),
    { numRuns: 5000 },
  );
});

test('detect: real GETs are read in their own layout (24-byte always; 32-byte above PID_MAX_LIMIT)', () => {
  const aligned = fc.bigInt({ min: 1n, max: (1n << 35n) }).map((n) => n * BigInt(PAGE));
  fc.assert(
    fc.property(fc.integer({ min: 1, max: U32 }), aligned, fc.bigInt({ min: 1n, max: PID_MAX_LIMIT }), u32, (nr, vaddr, pid, pad) => {
      assert.equal(detectFormat(encodeHeader(24, { cmd: GET, pad: 0, nrPages: BigInt(nr), vaddr, dstId: pid })), 24);
      if (vaddr > PID_MAX_LIMIT) {
        assert.equal(detectFormat(encodeHeader(32, { cmd: GET, pad, nrPages: BigInt(nr), vaddr, dstId: pid })), 32);
      }
    }),
    RUNS,
  );
});

// ---- pagemaps ----

interface EntryInput {
  vaddr: bigint;
  nrPages: number;
  flags: number;
}

/** Sorted, non-overlapping entries, as CRIU writes them. */
const entriesArb = (maxPages: number) =>
  fc
    .array(fc.record({ gap: fc.integer({ min: 0, max: 1 << 20 }), nrPages: fc.integer({ min: 1, max: maxPages }), flags: fc.integer({ min: 1, max: 7 }) }), { maxLength: 40 })
    .chain((raw) =>
      fc.bigInt({ min: 0n, max: 1n << 30n }).map((start) => {
        let at = start * BigInt(PAGE);
        return raw.map((r): EntryInput => {
          at += BigInt(r.gap) * BigInt(PAGE);
          const entry = { vaddr: at, nrPages: r.nrPages, flags: r.flags };
          at += BigInt(r.nrPages) * BigInt(PAGE);
          return entry;
        });
      }),
    );

for (const encoding of ['4.1', '4.2', 'both'] as PagemapEncoding[]) {
  test(`pagemap: encode then parse gives the same entries (${encoding} encoding)`, () => {
    fc.assert(
      fc.property(u32, entriesArb(encoding === '4.1' ? 1 << 20 : U32), (pagesId, entries) => {
        const parsed = parsePagemap(encodePagemap({ pagesId }, entries, { encoding }), { file: 'pagemap-1.img' });
        assert.equal(parsed.pagesId, pagesId);
        assert.deepEqual(
          parsed.entries.map((e) => ({ vaddr: e.vaddr, nrPages: e.nrPages, flags: e.flags })),
          entries,
        );
        if (entries.length) assert.equal(parsed.encoding, encoding === 'both' ? parsed.encoding : encoding);
      }),
      { numRuns: 500 },
    );
  });
}

test('image framing: every truncation is an ImageError or a shorter valid pagemap, never another exception', () => {
  fc.assert(
    fc.property(entriesArb(1 << 16), fc.constantFrom<PagemapEncoding>('4.1', '4.2', 'both'), fc.double({ min: 0, max: 1, noNaN: true }), (entries, encoding, where) => {
      const image = encodePagemap({ pagesId: 1 }, entries, { encoding });
      const cut = Math.min(image.length - 1, Math.floor(where * image.length));
      try {
        const parsed = parsePagemap(image.subarray(0, cut), { file: 'pagemap-1.img' });
        // Cut exactly at a record boundary: a valid image holding a prefix of the entries.
        assert.ok(parsed.entries.length < entries.length);
        parsed.entries.forEach((e, i) => assert.equal(e.vaddr, entries[i].vaddr));
      } catch (error) {
        assert.ok(error instanceof ImageError, `cut at ${cut} of ${image.length}: ${(error as Error).name}: ${(error as Error).message}`);
        assert.ok(!(error as Error).message.includes('\n'), 'one line');
        assert.match((error as Error).message, /^pagemap-1\.img: /);
      }
    }),
    { numRuns: 1000 },
  );
});

test('image framing: corrupted bytes give an ImageError or a parse, never another exception', () => {
  fc.assert(
    fc.property(entriesArb(1 << 16), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }), (entries, edits) => {
      const image = Buffer.from(encodePagemap({ pagesId: 1 }, entries, { encoding: 'both' }));
      for (const [at, value] of edits) image[at % image.length] = value;
      try {
        parsePagemap(image, { file: 'pagemap-1.img' });
      } catch (error) {
        assert.ok(error instanceof ImageError, `${(error as Error).name}: ${(error as Error).message}`);
      }
    }),
    { numRuns: 1000 },
  );
});
