// Fuzz target: lazyd's CRIU image parsers (src/images) on arbitrary bytes, in the libFuzzer/Jazzer.js shape
// (`fuzz(data)`). Driven by test/fuzz/run-images.ts from scripts/fuzz.sh, never by the default suite. The first
// input byte picks the parser, the rest is the file.
//
// A parser may only fail with an ImageError (one line naming file, entry, byte offset); any other exception
// (TypeError, RangeError from a Buffer read, a raw protobufjs error) is a finding. A pagemap that parses must
// round-trip: encodePagemap() in every encoding and parsePagemap() again give the same entries. The driver
// catches hangs (a per-input time limit) and runaway memory (heap growth).
import {
  ImageError,
  encodePagemap,
  parseCore,
  parseInventory,
  parseMm,
  parsePagemap,
  parsePstree,
  splitImage,
  IMAGE_KINDS,
  type PagemapEncoding,
} from '../../src/images/index.js';

const FILE = 'fuzz.img';
const KINDS = Object.values(IMAGE_KINDS);

function parse(selector: number, body: Buffer): void {
  switch (selector % 7) {
    case 0: {
      const pagemap = parsePagemap(body, { file: FILE, pagesFileSize: selector & 8 ? body.length * 4 : undefined });
      roundTrip(pagemap.pagesId, pagemap.entries);
      return;
    }
    case 1:
      parsePstree(body, FILE);
      return;
    case 2:
      parseMm(body, FILE);
      return;
    case 3:
      parseCore(body, FILE);
      return;
    case 4:
      parseInventory(body, FILE);
      return;
    case 5:
      splitImage(body, KINDS[(selector >> 3) % KINDS.length], FILE);
      return;
    default:
      parsePagemap(body, { file: FILE, pageSize: 1 << (12 + ((selector >> 3) % 4)) });
  }
}

function roundTrip(pagesId: number, entries: ReturnType<typeof parsePagemap>['entries']): void {
  // Only what encodePagemap accepts (sorted, non-overlapping, known flags) is re-encoded.
  let encodable = true;
  let prevEnd = -1n;
  for (const e of entries) {
    if (e.nrPages <= 0 || e.vaddr < prevEnd || e.flags <= 0 || e.flags & ~7) encodable = false;
    prevEnd = e.vaddr + BigInt(e.nrPages) * 4096n;
  }
  if (!encodable) return;
  const encodings: PagemapEncoding[] = ['4.1', '4.2', 'both'];
  for (const encoding of encodings) {
    if (encoding === '4.1' && entries.some((e) => e.nrPages > 0xffffffff)) continue;
    const again = parsePagemap(encodePagemap({ pagesId }, entries, { encoding }), { file: FILE });
    if (again.pagesId !== pagesId || again.entries.length !== entries.length) throw new Error(`pagemap round trip (${encoding}) lost entries`);
    again.entries.forEach((e, i) => {
      const o = entries[i];
      if (e.vaddr !== o.vaddr || e.nrPages !== o.nrPages || e.flags !== o.flags) {
        throw new Error(`pagemap round trip (${encoding}) changed entry ${i}`);
      }
    });
  }
}

export function fuzz(data: Buffer): void {
  if (data.length === 0) return;
  try {
    parse(data[0], data.subarray(1));
  } catch (error) {
    if (error instanceof ImageError) {
      if (error.message.includes('\n')) throw new Error(`an ImageError message spans lines: ${JSON.stringify(error.message)}`);
      return;
    }
    throw error;
  }
}
