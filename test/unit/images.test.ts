/**
 * src/images against the real CRIU 4.1.1 and 4.2.1 images recorded in test/fixtures (see its README.md): each
 * against the recorder's own decoding and crit's in session.json, plus round trips, error cases and a parent
 * chain built in a temp dir.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  IMAGE_KINDS, ImageError, PE_LAZY, PE_PARENT, PE_PRESENT, VMA_AREA_GUARD, encodeImage, encodeMessage, encodePagemap,
  findEntry, lazyRanges, loadCheckpoint, loadParentChain, parseMm, parsePagemap, parsePstree, readCore,
  readInventory, readMm, readPagemap, readPstree, resolvePage, resolveRange, splitLazyRanges,
  type Pagemap, type PagemapEntryInput,
} from '../../src/images/index.js';
import { MmEntryType, PagemapEntryType, PagemapHeadType, InventoryEntryType } from '../../src/images/schema.js';
import { dataArea as recordedDataArea, fixturePath, fixturesRoot, sessionFacts, uploadPageServerImages, type SessionFacts } from '../fixtures/fixtures.js';

// ---------------------------------------------------------------------------------------------------------------
// The recorded images (test/fixtures) and what the recorder measured of them (session.json)

const VERSIONS = ['4.1.1', '4.2.1'] as const;
const PAGE = 4096;

/** The pagemaps with the recorder's decoding and crit's (the upload's beside its rebuilt pages image). */
function pagemapCases(v: string): Array<{ name: string; img: string; facts: SessionFacts }> {
  return [
    { name: 'plain-dump', img: fixturePath(v, 'plain-dump', 'images/pagemap-1.img'), facts: sessionFacts(v, 'plain-dump') },
    { name: 'remote-lazy', img: fixturePath(v, 'remote-lazy', 'images/pagemap-1.img'), facts: sessionFacts(v, 'remote-lazy') },
    { name: 'upload', img: path.join(uploadPageServerImages(v), 'pagemap-1.img'), facts: sessionFacts(v, 'upload') },
  ];
}

/** The VMAs of the session's mm-1.img, as crit decoded them when they were recorded. */
function critVmas(facts: SessionFacts): Array<[bigint, bigint]> {
  return facts.mm_vmas_crit.map((v) => [BigInt(v.start), BigInt(v.end)]);
}

/** The pagemap entry holding the data area, as the recorder decoded it. */
function dataEntry(facts: SessionFacts) {
  return facts.pagemap.entries[facts.workload.data_area.entry_index]!;
}

// ---------------------------------------------------------------------------------------------------------------
// The workload's page pattern (README: splitmix-style mix(seed, p, w))

const M64 = (1n << 64n) - 1n;
function mix(seed: bigint, p: bigint, w: bigint): bigint {
  let z = (seed * 0x9E3779B97F4A7C15n + p * 0xBF58476D1CE4E5B9n + w * 0x94D049BB133111EBn + 1n) & M64;
  z = ((z ^ (z >> 30n)) * 0xBF58476D1CE4E5B9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94D049BB133111EBn) & M64;
  return z ^ (z >> 31n);
}

const expectedAreas = new Map<string, Buffer>();
/** The data area of version v's workload: page p holds mix(seed, p, w) in word w. */
function dataArea(v: string): Buffer {
  let buf = expectedAreas.get(v);
  if (!buf) {
    const { pages, seed } = recordedDataArea(v);
    buf = Buffer.alloc(pages * PAGE);
    for (let p = 0; p < pages; p++) {
      for (let w = 0; w < 512; w++) buf.writeBigUInt64LE(mix(seed, BigInt(p), BigInt(w)), p * PAGE + 8 * w);
    }
    expectedAreas.set(v, buf);
  }
  return buf;
}

function readAt(file: string, offset: bigint, length: number): Buffer {
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    const n = fs.readSync(fd, buf, 0, length, Number(offset));
    assert.equal(n, length, `short read from ${file}`);
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

function flagsFromCrit(s: string): number {
  let f = 0;
  for (const part of s.split('|').map((x) => x.trim())) {
    if (part === 'PE_PARENT') f |= PE_PARENT;
    else if (part === 'PE_LAZY') f |= PE_LAZY;
    else if (part === 'PE_PRESENT') f |= PE_PRESENT;
    else assert.fail(`unknown crit flag ${part}`);
  }
  return f;
}

/** Asserts an ImageError whose message names the file, the entry and the offset. */
function assertImageError(fn: () => unknown, want: { file: string; entry: number | string; offset: number; reason: RegExp }): void {
  assert.throws(fn, (err: unknown) => checkImageError(err, want));
}
async function assertImageErrorAsync(p: Promise<unknown>, want: { file: string; entry?: number | string; offset?: number; reason: RegExp }): Promise<ImageError> {
  let caught: unknown;
  await assert.rejects(p, (err: unknown) => {
    caught = err;
    return checkImageError(err, want);
  });
  return caught as ImageError;
}
function checkImageError(err: unknown, want: { file: string; entry?: number | string; offset?: number; reason: RegExp }): true {
  assert.ok(err instanceof ImageError, `expected ImageError, got ${String(err)}`);
  assert.ok(err.message.includes(path.basename(want.file)), `message does not name ${path.basename(want.file)}: ${err.message}`);
  assert.equal(err.file, want.file);
  if (want.entry !== undefined) {
    assert.equal(err.entry, want.entry, err.message);
    const label = typeof want.entry === 'number' ? `entry ${want.entry}` : want.entry;
    assert.ok(err.message.includes(label), `message does not name ${label}: ${err.message}`);
  }
  if (want.offset !== undefined) {
    assert.equal(err.offset, want.offset, err.message);
    assert.ok(err.message.includes(`at byte ${want.offset}`), `message does not name byte ${want.offset}: ${err.message}`);
  }
  assert.match(err.message, want.reason);
  assert.ok(!err.message.includes('\n'), 'message must be one line');
  return true;
}

let tmpRoot = '';
before(async () => {
  tmpRoot = await fsp.mkdtemp(path.join(os.tmpdir(), 'lazyd-images-test-'));
});
after(async () => {
  if (tmpRoot) await fsp.rm(tmpRoot, { recursive: true, force: true });
});
async function tmpDir(name: string): Promise<string> {
  const d = path.join(tmpRoot, name);
  await fsp.mkdir(d, { recursive: true });
  return d;
}

// ---------------------------------------------------------------------------------------------------------------

describe('the recorded images are present', () => {
  test('test/fixtures', () => {
    assert.ok(fs.existsSync(path.join(fixturesRoot(), 'README.md')), `no README.md in ${fixturesRoot()}`);
    for (const v of VERSIONS) fixturePath(v, 'plain-dump', 'images/pagemap-1.img');
  });
});

for (const v of VERSIONS) {
  describe(`CRIU ${v} pagemaps`, () => {
    const plain = sessionFacts(v, 'plain-dump');
    const area = recordedDataArea(v);
    const DATA_START = area.start;
    const DATA_END = area.end;
    const DATA_PAGES = area.pages;

    for (const c of pagemapCases(v)) {
      test(`${c.name}: equals the recorder's decoding and agrees with crit`, async () => {
        const j = c.facts.pagemap;
        const crit = c.facts.pagemap_crit as { magic: string; entries: Array<Record<string, any>> }; // eslint-disable-line @typescript-eslint/no-explicit-any
        const pm = await readPagemap(c.img);

        assert.deepEqual(j.magic, ['0x54564319', '0x56084025']);
        assert.equal(pm.pagesId, j.head.pages_id);
        assert.equal(pm.pagesPath, path.join(path.dirname(c.img), `pages-${j.head.pages_id}.img`));
        assert.equal(pm.entries.length, j.entries.length);
        assert.equal(pm.encoding, v === '4.1.1' ? '4.1' : '4.2');
        assert.equal(pm.encoding, c.facts.criu.pagemap_encoding);
        j.entries.forEach((je, i) => {
          const e = pm.entries[i]!;
          const at = `${c.name} entry ${i}`;
          assert.equal(e.index, i);
          assert.equal(e.vaddr, BigInt(je.vaddr), at);
          assert.equal(e.nrPages, je.nr_pages, at);
          assert.equal(e.flags, je.flags, at);
          assert.equal(e.recordOffset, je.record_offset, at);
          if (je.pages_img_offset === undefined || je.pages_img_offset === null) {
            assert.equal(e.pagesOffset, undefined, at);
          } else {
            assert.equal(e.pagesOffset, BigInt(je.pages_img_offset), at);
          }
          assert.equal(e.wire.compatNrPages, je.field2_nr_pages, at);
          assert.equal(e.wire.nrPages, je.field5_nr_pages === null ? undefined : BigInt(je.field5_nr_pages), at);
          assert.equal(e.wire.flags, je.field4_flags, at);
          assert.equal(e.wire.inParent, je.field3_in_parent === null ? undefined : je.field3_in_parent, at);
        });
        assert.deepEqual(
          { entries: pm.totals.entries, pages: pm.totals.pages, present_pages: pm.totals.presentPages, lazy_pages: pm.totals.lazyPages, lazy_only_pages: pm.totals.lazyOnlyPages },
          j.totals,
        );
        assert.equal(pm.pagesBytes, BigInt(j.pages_img_expected_size));
        assert.equal(pm.pagesFileSize, j.pages_img_actual_size);

        // crit: record 0 is the head, then the entries
        assert.equal(crit.magic, 'PAGEMAP');
        assert.equal(crit.entries[0].pages_id, pm.pagesId);
        assert.equal(crit.entries.length, pm.entries.length + 1);
        pm.entries.forEach((e, i) => {
          const ce = crit.entries[i + 1];
          assert.equal(BigInt(ce.vaddr), e.vaddr);
          assert.equal(ce.nr_pages, e.nrPages);
          assert.equal(flagsFromCrit(ce.flags), e.flags);
          if (v === '4.2.1') assert.equal(ce.compat_nr_pages, 0);
        });
      });
    }

    test(`plain-dump: the ${DATA_PAGES} data pages read through the offsets match the workload pattern`, async () => {
      const pm = await readPagemap(fixturePath(v, 'plain-dump', 'images/pagemap-1.img'));
      const segs = resolveRange(pm, DATA_START, DATA_PAGES);
      assert.equal(segs.length, 1);
      const seg = segs[0]!;
      assert.equal(seg.kind, 'data');
      if (seg.kind !== 'data') return;
      // The data area lies inside one pagemap entry (with a thread stack's top before it): its data starts that
      // entry's offset in pages-1.img plus the pages before the area.
      const entry = dataEntry(plain);
      assert.equal(seg.offset, BigInt(entry.pages_img_offset!) + (DATA_START - BigInt(entry.vaddr)));
      const bytes = readAt(seg.pagesPath, seg.offset, DATA_PAGES * PAGE);
      assert.equal(createHash('sha256').update(bytes).digest('hex'), area.sha256);
      assert.ok(bytes.equals(dataArea(v)), `data area differs from mix(${area.seed}, p, w)`);
      assert.equal(area.seed, 1n, 'the check bytes below are those of seed 1');
      assert.deepEqual([...bytes.subarray(0, 16)], [0xc1, 0x5c, 0x02, 0x89, 0xec, 0x2d, 0x0a, 0x91, 0x9a, 0x66, 0x43, 0x7d, 0xa1, 0x0d, 0xc2, 0x0c]);
      let sum = 0n;
      for (let i = 0; i < bytes.length; i += 8) sum = (sum + bytes.readBigUInt64LE(i)) & M64;
      assert.equal(sum, area.checksum);

      // page by page through resolvePage, including unaligned addresses
      for (const p of [0, 1, DATA_PAGES / 2 - 1, DATA_PAGES - 1]) {
        const r = resolvePage(pm, DATA_START + BigInt(p * PAGE) + 123n);
        assert.ok(r);
        assert.equal(r.vaddr, DATA_START + BigInt(p * PAGE));
        assert.equal(r.offset, seg.offset + BigInt(p * PAGE));
        assert.equal(r.depth, 0);
        assert.ok(readAt(r.pagesPath, r.offset, PAGE).equals(dataArea(v).subarray(p * PAGE, (p + 1) * PAGE)));
      }
      assert.equal(resolvePage(pm, 0x1000n), undefined, 'an address outside the pagemap has no data');
    });

    test('upload: the pages image criu page-server wrote holds the same data area', async () => {
      const upload = sessionFacts(v, 'upload');
      const pm = await readPagemap(path.join(uploadPageServerImages(v), 'pagemap-1.img'));
      assert.equal(pm.pagesId, upload.pagemap.head.pages_id);
      const [seg, ...rest] = resolveRange(pm, DATA_START, DATA_PAGES);
      assert.equal(rest.length, 0);
      assert.ok(seg && seg.kind === 'data');
      assert.equal(path.basename(seg.pagesPath), upload.pagemap.pages_img);
      assert.ok(readAt(seg.pagesPath, seg.offset, DATA_PAGES * PAGE).equals(dataArea(v)));
    });

    test('remote-lazy: lazy pages have no local data; eager pages do', async () => {
      const lazy = sessionFacts(v, 'remote-lazy');
      const pm = await readPagemap(fixturePath(v, 'remote-lazy', 'images/pagemap-1.img'));
      assert.deepEqual(resolveRange(pm, DATA_START, DATA_PAGES), [{ kind: 'remote', start: DATA_START, nrPages: DATA_PAGES }]);
      assert.equal(resolvePage(pm, DATA_START), undefined);
      assert.equal(findEntry(pm, DATA_START)?.flags, PE_LAZY);
      // the first entry (the exe's text page, a private copy since CRIU's parasite wrote into it) is eager and is
      // the first page of pages-1.img
      const first = lazy.pagemap.entries[0]!;
      assert.equal(first.flags, PE_PRESENT, 'the recorded first entry is eager');
      const r = resolvePage(pm, BigInt(first.vaddr));
      assert.deepEqual(r, { vaddr: BigInt(first.vaddr), pagesPath: pm.pagesPath, offset: 0n, depth: 0 });
      assert.equal(pm.pagesFileSize, lazy.pagemap.totals.present_pages * PAGE);
    });

    test('pstree, mm, inventory and core of the plain dump', async () => {
      const dir = fixturePath(v, 'plain-dump', 'images');
      const w = plain.workload;
      assert.deepEqual(await readPstree(path.join(dir, 'pstree.img')), [{ pid: w.ns_pid, ppid: 0, pgid: w.ns_pid, sid: w.ns_pid, threads: w.ns_tids }]);

      const inv = await readInventory(path.join(dir, 'inventory.img'));
      assert.equal(inv.imgVersion, 2);
      assert.match(inv.dumpCriuRunId ?? '', /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      assert.equal(inv.rootIds?.vm_id, 1);
      assert.equal(inv.preDumpMode, undefined);

      const core = await readCore(path.join(dir, 'core-1.img'));
      assert.equal(core.state, 'alive');
      assert.equal(core.taskStateCode, 1);
      assert.equal(core.exitCode, 0);
      assert.equal(core.comm, 'workload');
      const thread = await readCore(path.join(dir, 'core-2.img'));
      assert.equal(thread.hasTaskCore, false, 'a non-leader thread core has no TaskCoreEntry');
      assert.equal(thread.state, undefined);

      const mm = await readMm(path.join(dir, 'mm-1.img'));
      assert.equal(mm.vmas.length, plain.mm_vmas_crit.length);
      assert.deepEqual(mm.vmas.map((vma) => [vma.start, vma.end]), critVmas(plain), 'the VMAs crit decoded');
      assert.equal(mm.guards.length, 0);
      const containing = mm.vmas.filter((x) => x.start <= DATA_START && DATA_END <= x.end);
      assert.equal(containing.length, 1);
      const data = containing[0]!;
      assert.equal(data.start, BigInt(w.data_area.vma.start));
      assert.equal(data.end, BigInt(w.data_area.vma.end));
      assert.equal(data.prot, 3); // rw-
      assert.equal(data.flags, 0x22); // MAP_PRIVATE|MAP_ANONYMOUS
      assert.equal(data.fd, -1n);
      assert.equal(data.madv, 1n << 15n); // MADV_NOHUGEPAGE
      for (let i = 1; i < mm.vmas.length; i++) assert.ok(mm.vmas[i - 1]!.end <= mm.vmas[i]!.start);
    });

    test('pstree/mm/core of the other sessions are the same', async () => {
      for (const [session, sub] of [['remote-lazy', 'images'], ['upload', 'dump-images']] as const) {
        const facts = sessionFacts(v, session);
        const dir = fixturePath(v, session, sub);
        assert.deepEqual((await readPstree(path.join(dir, 'pstree.img')))[0]?.threads, facts.workload.ns_tids);
        assert.equal((await readCore(path.join(dir, 'core-1.img'))).state, 'alive');
        assert.equal((await readMm(path.join(dir, 'mm-1.img'))).vmas.length, facts.mm_vmas_crit.length);
        assert.equal((await readInventory(path.join(dir, 'inventory.img'))).imgVersion, 2);
      }
    });

    test('loadCheckpoint(plain-dump) and its lazy ranges', async () => {
      const dir = fixturePath(v, 'plain-dump', 'images');
      const cp = await loadCheckpoint(dir);
      assert.equal(cp.inventory.imgVersion, 2);
      assert.equal(cp.tasks.length, 1);
      const t = cp.tasks[0]!;
      assert.equal(t.pid, plain.workload.ns_pid);
      assert.equal(t.ppid, 0);
      assert.deepEqual(t.threads, plain.workload.ns_tids);
      assert.equal(t.state, 'alive');
      assert.equal(t.vmas.length, plain.mm_vmas_crit.length);
      assert.ok(t.pagemap);
      assert.equal(t.pagemap.pagesPath, path.join(dir, 'pages-1.img'));
      assert.equal(cp.parentDir, undefined);

      const ranges = lazyRanges(t);
      assert.equal(ranges.reduce((s, r) => s + r.nrPages, 0), plain.pagemap.totals.lazy_pages);
      assert.ok(ranges.every((r) => r.hasData && r.pagesPath === t.pagemap!.pagesPath));
      // the data area's entry (a thread stack's top, the data area, and 2 pages of the next VMA) is split at the
      // end of the data area's VMA
      const index = plain.workload.data_area.entry_index;
      const vmaEnd = BigInt(plain.workload.data_area.vma.end);
      const entry = dataEntry(plain);
      const big = ranges.filter((r) => r.entryIndex === index);
      const before = Number((vmaEnd - BigInt(entry.vaddr)) / BigInt(PAGE));
      assert.deepEqual(big.map((r) => [r.start, r.nrPages, r.pagesOffset]), [
        [BigInt(entry.vaddr), before, BigInt(entry.pages_img_offset!)],
        [vmaEnd, entry.nr_pages - before, BigInt(entry.pages_img_offset!) + BigInt(before * PAGE)],
      ]);
      assert.equal(big[0]!.vma?.end, vmaEnd);
      assert.equal(big[1]!.vma?.start, vmaEnd);
      // no range crosses a VMA end, and each lies inside its VMA
      for (const r of ranges) {
        assert.ok(r.vma, `range ${r.start.toString(16)} has no VMA`);
        assert.ok(r.vma.start <= r.start && r.start + BigInt(r.nrPages * PAGE) <= r.vma.end);
      }
      // every range, as the recorder split the PE_LAZY entries at the ends of the VMAs crit decoded
      assert.deepEqual(
        ranges.map((r) => [r.start, r.nrPages, r.entryIndex, r.pagesOffset, r.vma?.start, r.vma?.end]),
        plain.lazy_ranges.map((r) => [BigInt(r.start), r.nr_pages, r.entry_index, BigInt(r.pages_img_offset!), BigInt(r.vma.start), BigInt(r.vma.end)]),
      );
    });

    test('loadCheckpoint(remote-lazy): lazy ranges without data', async () => {
      const lazy = sessionFacts(v, 'remote-lazy');
      const cp = await loadCheckpoint(fixturePath(v, 'remote-lazy', 'images'));
      const ranges = lazyRanges(cp.tasks[0]!);
      assert.equal(ranges.reduce((s, r) => s + r.nrPages, 0), lazy.pagemap.totals.lazy_pages);
      assert.ok(ranges.every((r) => !r.hasData && r.pagesOffset === undefined && r.pagesPath === undefined));
      assert.deepEqual(
        ranges.map((r) => [r.start, r.nrPages, r.entryIndex]),
        lazy.lazy_ranges.map((r) => [BigInt(r.start), r.nr_pages, r.entry_index]),
      );
    });

    test('loadCheckpoint(upload: dump-images + page-server-images merged) reads the data area from the page server\'s pages image', async () => {
      const upload = sessionFacts(v, 'upload');
      const dir = await tmpDir(`merged-${v}`);
      for (const from of [fixturePath(v, 'upload', 'dump-images'), uploadPageServerImages(v)]) {
        for (const f of fs.readdirSync(from)) fs.copyFileSync(path.join(from, f), path.join(dir, f));
      }
      const cp = await loadCheckpoint(dir);
      const t = cp.tasks[0]!;
      assert.equal(path.basename(t.pagemap!.pagesPath), upload.pagemap.pages_img);
      const ranges = lazyRanges(t).filter((r) => r.start <= DATA_START && DATA_START < r.start + BigInt(r.nrPages * PAGE));
      assert.equal(ranges.length, 1);
      const r = ranges[0]!;
      const off = r.pagesOffset! + (DATA_START - r.start);
      assert.ok(readAt(r.pagesPath!, off, DATA_PAGES * PAGE).equals(dataArea(v)));
    });

    test('loadCheckpoint(upload/dump-images): missing pagemap of an alive task is an error with a fix', async () => {
      const dir = fixturePath(v, 'upload', 'dump-images');
      const err = await assertImageErrorAsync(loadCheckpoint(dir), { file: path.join(dir, 'pagemap-1.img'), reason: /not found.*alive/ });
      assert.match(err.message, /page.server/);
    });
  });
}

// ---------------------------------------------------------------------------------------------------------------

describe('encodePagemap', () => {
  const example: PagemapEntryInput[] = [{ vaddr: 0x7f0000000000n, nrPages: 16, flags: PE_LAZY | PE_PRESENT }];
  const magic = '19435654 25400856'.replace(/ /g, '');
  const headRec = '02000000' + '0801';

  test('docs/protocol.md §2.3 example bytes, in all three encodings', () => {
    const hexOf = (b: Buffer): string => b.toString('hex');
    assert.equal(hexOf(encodePagemap({ pagesId: 1 }, example, { encoding: '4.1' })), magic + headRec + '0c000000' + '088080808080e01f10102006');
    assert.equal(hexOf(encodePagemap({ pagesId: 1 }, example, { encoding: '4.2' })), magic + headRec + '0e000000' + '088080808080e01f100020062810');
    assert.equal(hexOf(encodePagemap({ pagesId: 1 }, example, { encoding: 'both' })), magic + headRec + '0e000000' + '088080808080e01f101020062810');
    assert.equal(hexOf(encodePagemap({ pagesId: 1 }, example)), hexOf(encodePagemap({ pagesId: 1 }, example, { encoding: 'both' })));
  });

  for (const v of VERSIONS) {
    test(`CRIU ${v} pagemaps round-trip in every encoding, byte-exact in their own`, async () => {
      for (const c of pagemapCases(v)) {
        const orig = await readPagemap(c.img);
        for (const encoding of ['4.1', '4.2', 'both'] as const) {
          const buf = encodePagemap({ pagesId: orig.pagesId }, orig.entries, { encoding });
          const back = parsePagemap(buf, { file: `roundtrip-${encoding}.img` });
          assert.equal(back.encoding, encoding);
          assert.equal(back.pagesId, orig.pagesId);
          assert.deepEqual(
            back.entries.map((e) => [e.vaddr, e.nrPages, e.flags, e.pagesOffset, e.recordOffset === undefined]),
            orig.entries.map((e) => [e.vaddr, e.nrPages, e.flags, e.pagesOffset, false]),
          );
          assert.deepEqual(back.totals, orig.totals);
          if ((encoding === '4.1' && v === '4.1.1') || (encoding === '4.2' && v === '4.2.1')) {
            assert.ok(buf.equals(fs.readFileSync(c.img)), `${c.name}: re-encoding in ${encoding} is not byte-identical`);
          }
        }
      }
    });
  }

  test('counts above u32: both writes field 2 = 0, 4.1 refuses', () => {
    const big: PagemapEntryInput[] = [{ vaddr: 0n, nrPages: 0x1_0000_0001n, flags: PE_LAZY }];
    const pm = parsePagemap(encodePagemap({ pagesId: 7 }, big, { encoding: 'both' }), { file: 'big.img' });
    assert.equal(pm.entries[0]!.nrPages, 0x1_0000_0001);
    assert.equal(pm.entries[0]!.wire.compatNrPages, 0);
    assert.throws(() => encodePagemap({ pagesId: 7 }, big, { encoding: '4.1' }), RangeError);
  });

  test('refuses unsorted, overlapping, unaligned or empty entries', () => {
    const e = (vaddr: bigint, nrPages: number, flags = PE_PRESENT): PagemapEntryInput => ({ vaddr, nrPages, flags });
    assert.throws(() => encodePagemap({ pagesId: 1 }, [e(0x2000n, 1), e(0x1000n, 1)]), RangeError);
    assert.throws(() => encodePagemap({ pagesId: 1 }, [e(0x1000n, 2), e(0x2000n, 1)]), RangeError);
    assert.throws(() => encodePagemap({ pagesId: 1 }, [e(0x1001n, 1)]), RangeError);
    assert.throws(() => encodePagemap({ pagesId: 1 }, [e(0x1000n, 0)]), RangeError);
    assert.throws(() => encodePagemap({ pagesId: 1 }, [e(0x1000n, 1, 8)]), RangeError);
  });
});

describe('normalisation of pagemap entries', () => {
  const rec = (fields: Record<string, unknown>): Uint8Array => encodeMessage(PagemapEntryType, fields);
  const head = encodeMessage(PagemapHeadType, { pages_id: 3 });

  test('missing flags means PE_PRESENT; in_parent adds PE_PARENT; field 5 wins over field 2', () => {
    const buf = encodeImage(IMAGE_KINDS.pagemap, [
      head,
      rec({ vaddr: 0x1000, compat_nr_pages: 2 }),
      rec({ vaddr: 0x3000, compat_nr_pages: 1, in_parent: true }),
      rec({ vaddr: 0x4000, compat_nr_pages: 1, in_parent: true, flags: PE_LAZY }),
      rec({ vaddr: 0x5000, compat_nr_pages: 9, nr_pages: 2, flags: PE_PRESENT }),
    ]);
    const pm = parsePagemap(buf, { file: 'norm.img' });
    assert.deepEqual(pm.entries.map((e) => [e.vaddr, e.nrPages, e.flags, e.pagesOffset]), [
      [0x1000n, 2, PE_PRESENT, 0n],
      [0x3000n, 1, PE_PARENT, undefined],
      [0x4000n, 1, PE_PARENT | PE_LAZY, undefined],
      [0x5000n, 2, PE_PRESENT, 8192n],
    ]);
    assert.equal(pm.encoding, 'mixed');
    assert.equal(pm.totals.parentPages, 2);
  });
});

describe('other images', () => {
  test('pstree threads: packed and non-packed both decode', () => {
    const magic = Buffer.from('1943565430302750', 'hex');
    const packed = Buffer.from('0801100018012001' + '2a020102', 'hex');
    const plain = Buffer.from('0803100118032001' + '28032804', 'hex');
    const len = (b: Buffer): Buffer => { const l = Buffer.alloc(4); l.writeUInt32LE(b.length); return l; };
    const buf = Buffer.concat([magic, len(packed), packed, len(plain), plain]);
    assert.deepEqual(parsePstree(buf, 'pstree.img'), [
      { pid: 1, ppid: 0, pgid: 1, sid: 1, threads: [1, 2] },
      { pid: 3, ppid: 1, pgid: 3, sid: 1, threads: [3, 4] },
    ]);
  });

  test('inventory: unknown fields are tolerated', async () => {
    const orig = fs.readFileSync(fixturePath('4.2.1', 'plain-dump', 'images/inventory.img'));
    // append field 99 (varint) and field 100 (bytes) to the record
    const extra = Buffer.from([0x98, 0x06, 0x2a, 0xa2, 0x06, 0x03, 0x61, 0x62, 0x63]);
    const len = orig.readUInt32LE(4);
    const rec = Buffer.concat([orig.subarray(8, 8 + len), extra]);
    const l = Buffer.alloc(4);
    l.writeUInt32LE(rec.length);
    const dir = await tmpDir('inventory-unknown');
    const file = path.join(dir, 'inventory.img');
    fs.writeFileSync(file, Buffer.concat([orig.subarray(0, 4), l, rec]));
    const inv = await readInventory(file);
    assert.equal(inv.imgVersion, 2);
    // and our own encoding of just the fields we know
    const mine = encodeImage(IMAGE_KINDS.inventory, [encodeMessage(InventoryEntryType, { img_version: 2, pre_dump_mode: 2 })]);
    fs.writeFileSync(file, mine);
    assert.deepEqual(await readInventory(file), { imgVersion: 2, preDumpMode: 2 });
  });

  test('mm: VMA_AREA_GUARD pseudo-VMAs are kept apart and do not split lazy ranges', () => {
    const vma = (start: number, end: number, status: number): Record<string, unknown> => ({
      start, end, pgoff: 0, shmid: 0, prot: 3, flags: 0x22, status, fd: -1,
    });
    const buf = encodeImage(IMAGE_KINDS.mm, [encodeMessage(MmEntryType, {
      vmas: [vma(0x10000, 0x20000, 0x201), vma(0x20000, 0x30000, 0x201), vma(0x12000, 0x13000, 0x201 | VMA_AREA_GUARD)],
    })]);
    const mm = parseMm(buf, 'mm-1.img');
    assert.equal(mm.vmas.length, 2);
    assert.equal(mm.guards.length, 1);
    assert.equal(mm.vmas[0]!.fd, -1n);
    const pm = parsePagemap(encodePagemap({ pagesId: 1 }, [{ vaddr: 0x11000n, nrPages: 0x18, flags: PE_LAZY }]), { file: 'pagemap-1.img' });
    const ranges = splitLazyRanges(pm, [...mm.vmas, ...mm.guards]);
    assert.deepEqual(ranges.map((r) => [r.start, r.nrPages]), [[0x11000n, 0xf], [0x20000n, 9]]);
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe('errors name file, entry and offset', () => {
  const src = (): string => fixturePath('4.2.1', 'plain-dump', 'images/pagemap-1.img');
  const facts = (): SessionFacts => sessionFacts('4.2.1', 'plain-dump');
  const json = () => facts().pagemap;

  test('wrong magic', () => {
    const file = '/x/pagemap-1.img';
    const pstree = fs.readFileSync(fixturePath('4.2.1', 'plain-dump', 'images/pstree.img'));
    assertImageError(() => parsePagemap(pstree, { file }), { file, entry: 'magic', offset: 4, reason: /wrong magic 0x50273030 \(pstree\), expected 0x56084025 \(pagemap\).*pstree image/ });
    const inv = fs.readFileSync(fixturePath('4.2.1', 'plain-dump', 'images/inventory.img'));
    assertImageError(() => parsePagemap(inv, { file }), { file, entry: 'magic', offset: 0, reason: /wrong magic 0x58313116/ });
    const swapped = Buffer.from(fs.readFileSync(src()));
    swapped.writeUInt32BE(0x54564319, 0);
    assertImageError(() => parsePagemap(swapped, { file }), { file, entry: 'magic', offset: 0, reason: /other byte order/ });
    assertImageError(() => parsePagemap(Buffer.alloc(0), { file }), { file, entry: 'magic', offset: 0, reason: /empty file/ });
  });

  test('truncated record length', () => {
    const file = '/x/pagemap-1.img';
    // 2 bytes after the last entry: the record after it, at the old end of the file
    const orig = fs.readFileSync(src());
    const buf = Buffer.concat([orig, Buffer.from([1, 0])]);
    assertImageError(() => parsePagemap(buf, { file }), { file, entry: json().entries.length, offset: orig.length, reason: /truncated record length \(needs 4 bytes, 2 left\).*copy it again/ });
  });

  test('truncated record', () => {
    const file = '/x/pagemap-1.img';
    const e3 = json().entries[3]!;
    const buf = fs.readFileSync(src()).subarray(0, e3.record_offset + 10);
    assertImageError(() => parsePagemap(buf, { file }), {
      file, entry: 3, offset: e3.record_offset,
      reason: new RegExp(`truncated record \\(needs ${e3.record_len} bytes, 6 left\\) — the image is incomplete; copy it again from the source`),
    });
  });

  test('undecodable record', () => {
    const file = '/x/pagemap-1.img';
    const buf = Buffer.from(fs.readFileSync(src()));
    const e2 = json().entries[2]!;
    buf.fill(0xff, e2.record_offset + 4, e2.record_offset + 4 + e2.record_len);
    assertImageError(() => parsePagemap(buf, { file }), { file, entry: 2, offset: e2.record_offset, reason: /cannot decode PagemapEntry/ });
  });

  test('pagemap pointing past the end of the pages file', async () => {
    const dir = await tmpDir('short-pages');
    const pmFile = path.join(dir, 'pagemap-1.img');
    fs.copyFileSync(src(), pmFile);
    const pages = fs.readFileSync(fixturePath('4.2.1', 'plain-dump', 'images/pages-1.img'));
    // ends one page into the data area's entry
    const index = facts().workload.data_area.entry_index;
    const big = json().entries[index]!;
    const cut = big.pages_img_offset! + PAGE;
    fs.writeFileSync(path.join(dir, 'pages-1.img'), pages.subarray(0, cut));
    const err = await assertImageErrorAsync(readPagemap(pmFile), { file: pmFile, entry: index, offset: big.record_offset, reason: new RegExp(`pages-1\\.img.*only ${cut} bytes`) });
    assert.match(err.message, /truncated/);
    // without the pages file at all: the first entry with data names it
    fs.unlinkSync(path.join(dir, 'pages-1.img'));
    const first = json().entries.findIndex((e) => e.pages_img_offset !== null);
    await assertImageErrorAsync(readPagemap(pmFile), { file: pmFile, entry: first, offset: json().entries[first]!.record_offset, reason: /pages-1\.img cannot be opened/ });
    // the check can be switched off
    assert.equal((await readPagemap(pmFile, { checkPages: false })).entries.length, json().entries.length);
  });

  test('unsorted, overlapping and unaligned entries', () => {
    const file = '/x/pagemap-9.img';
    const head = encodeMessage(PagemapHeadType, { pages_id: 1 });
    const rec = (vaddr: number, n: number): Uint8Array => encodeMessage(PagemapEntryType, { vaddr, compat_nr_pages: n, flags: PE_PRESENT });
    const unsorted = encodeImage(IMAGE_KINDS.pagemap, [head, rec(0x2000, 1), rec(0x1000, 1)]);
    // magic 8 + head (4+2) + first entry (4 + 7) = 25
    assertImageError(() => parsePagemap(unsorted, { file }), { file, entry: 1, offset: 25, reason: /vaddr 0x1000 is below the end 0x3000 of entry 0.*sorted/ });
    const overlap = encodeImage(IMAGE_KINDS.pagemap, [head, rec(0x1000, 2), rec(0x2000, 1)]);
    assertImageError(() => parsePagemap(overlap, { file }), { file, entry: 1, offset: 25, reason: /below the end 0x3000/ });
    const unaligned = encodeImage(IMAGE_KINDS.pagemap, [head, rec(0x1000, 1), rec(0x2800, 1)]);
    assertImageError(() => parsePagemap(unaligned, { file }), { file, entry: 1, offset: 25, reason: /not aligned/ });
    const zero = encodeImage(IMAGE_KINDS.pagemap, [head, rec(0x1000, 0)]);
    assertImageError(() => parsePagemap(zero, { file }), { file, entry: 0, offset: 14, reason: /0 pages/ });
  });
});

// ---------------------------------------------------------------------------------------------------------------

describe('parent chains', () => {
  /** Page content: the page's address in every u64, xor a per-dir tag. */
  function pageBytes(vaddr: bigint, tag: bigint): Buffer {
    const b = Buffer.alloc(PAGE);
    for (let i = 0; i < PAGE; i += 8) b.writeBigUInt64LE(vaddr ^ tag ^ BigInt(i), i);
    return b;
  }
  async function writeDump(dir: string, entries: PagemapEntryInput[], tag: bigint, encoding: '4.1' | '4.2' | 'both'): Promise<void> {
    await fsp.mkdir(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'pagemap-1.img'), encodePagemap({ pagesId: 1 }, entries, { encoding }));
    const data: Buffer[] = [];
    for (const e of entries) {
      if (!(e.flags & PE_PRESENT)) continue;
      for (let p = 0; p < Number(e.nrPages); p++) data.push(pageBytes(e.vaddr + BigInt(p * PAGE), tag));
    }
    fs.writeFileSync(path.join(dir, 'pages-1.img'), Buffer.concat(data));
  }

  let root = '';
  before(async () => {
    root = await tmpDir('chain');
    // grandparent 0: 0x12000 +1
    await writeDump(path.join(root, '0'), [{ vaddr: 0x12000n, nrPages: 1, flags: PE_PRESENT | PE_LAZY }], 0xa0n, '4.1');
    // parent 1: 0x10000 +2 (data), 0x12000 +1 (in 0), 0x13000 +3 (data)
    await writeDump(path.join(root, '1'), [
      { vaddr: 0x10000n, nrPages: 2, flags: PE_PRESENT | PE_LAZY },
      { vaddr: 0x12000n, nrPages: 1, flags: PE_PARENT },
      { vaddr: 0x13000n, nrPages: 3, flags: PE_PRESENT },
    ], 0xa1n, '4.2');
    fs.symlinkSync('../0', path.join(root, '1', 'parent'));
    // child 2: 0x10000 +1 (data), 0x11000 +4 (parent: spans three parent entries), 0x20000 +1 lazy only
    const child = path.join(root, '2');
    await writeDump(child, [
      { vaddr: 0x10000n, nrPages: 1, flags: PE_PRESENT },
      { vaddr: 0x11000n, nrPages: 4, flags: PE_PARENT },
      { vaddr: 0x20000n, nrPages: 1, flags: PE_LAZY },
    ], 0xa2n, 'both');
    fs.symlinkSync('../1', path.join(child, 'parent'));
    // make 2 a full images dir: the other images of the 4.2.1 plain dump
    for (const f of ['inventory.img', 'pstree.img', 'core-1.img', 'mm-1.img']) {
      fs.copyFileSync(fixturePath('4.2.1', 'plain-dump', 'images', f), path.join(child, f));
    }
  });

  const expectPage = (r: ReturnType<typeof resolvePage>, vaddr: bigint, dir: string, tag: bigint, depth: number): void => {
    assert.ok(r, `no data for ${vaddr.toString(16)}`);
    assert.equal(r.depth, depth);
    assert.equal(fs.realpathSync(path.dirname(r.pagesPath)), fs.realpathSync(path.join(root, dir)));
    assert.ok(readAt(r.pagesPath, r.offset, PAGE).equals(pageBytes(vaddr, tag)), `wrong bytes for ${vaddr.toString(16)}`);
  };

  test('loadParentChain + resolvePage follow PE_PARENT through two levels', async () => {
    const pm = await readPagemap(path.join(root, '2', 'pagemap-1.img'));
    await loadParentChain(pm);
    assert.ok(pm.parent?.parent);
    assert.equal(pm.parent.parent.parent, undefined);
    expectPage(resolvePage(pm, 0x10000n), 0x10000n, '2', 0xa2n, 0);
    expectPage(resolvePage(pm, 0x11000n), 0x11000n, '1', 0xa1n, 1);
    expectPage(resolvePage(pm, 0x12000n), 0x12000n, '0', 0xa0n, 2);
    expectPage(resolvePage(pm, 0x13000n), 0x13000n, '1', 0xa1n, 1);
    expectPage(resolvePage(pm, 0x14000n), 0x14000n, '1', 0xa1n, 1);
    assert.equal(resolvePage(pm, 0x15000n), undefined);
    assert.equal(resolvePage(pm, 0x20000n), undefined);
    const segs = resolveRange(pm, 0x10000n, 0x11);
    assert.deepEqual(segs.map((s) => [s.kind, s.start, s.nrPages, s.kind === 'data' ? s.depth : -1]), [
      ['data', 0x10000n, 1, 0],
      ['data', 0x11000n, 1, 1],
      ['data', 0x12000n, 1, 2],
      ['data', 0x13000n, 2, 1],
      ['none', 0x15000n, 0xb, -1],
      ['remote', 0x20000n, 1, -1],
    ]);
  });

  test('loadCheckpoint resolves the chain for the task', async () => {
    const cp = await loadCheckpoint(path.join(root, '2'));
    assert.equal(cp.parentDir, path.join(root, '1'));
    const t = cp.tasks[0]!;
    expectPage(resolvePage(t, 0x12000n + 17n), 0x12000n, '0', 0xa0n, 2);
    expectPage(resolvePage(t, 0x11000n), 0x11000n, '1', 0xa1n, 1);
    // only the top-level PE_LAZY entry is lazy; PE_PARENT is never lazy
    assert.deepEqual(lazyRanges(t).map((r) => [r.start, r.nrPages, r.hasData]), [[0x20000n, 1, false]]);
  });

  test('a parent without the range is an error naming the child entry', async () => {
    const dir = path.join(root, 'bad');
    await writeDump(path.join(dir, 'p'), [{ vaddr: 0x10000n, nrPages: 1, flags: PE_PRESENT }], 0xb0n, 'both');
    await writeDump(path.join(dir, 'c'), [{ vaddr: 0x8000n, nrPages: 1, flags: PE_PRESENT }, { vaddr: 0x10000n, nrPages: 2, flags: PE_PARENT }], 0xb1n, 'both');
    const childPm = path.join(dir, 'c', 'pagemap-1.img');
    // no parent link yet
    const e1 = parsePagemap(fs.readFileSync(childPm), { file: childPm }).entries[1]!;
    await assertImageErrorAsync(readPagemap(childPm).then((pm) => loadParentChain(pm)), {
      file: childPm, entry: 1, offset: e1.recordOffset, reason: /PE_PARENT but .*parent does not exist.*symlink/,
    });
    fs.symlinkSync('../p', path.join(dir, 'c', 'parent'));
    await assertImageErrorAsync(readPagemap(childPm).then((pm) => loadParentChain(pm)), {
      file: childPm, entry: 1, offset: e1.recordOffset, reason: /pages 0x11000\.\.0x12000 are PE_PARENT but .*p\/pagemap-1\.img has no entry/,
    });
  });

  test('resolveRange without a loaded parent is an error', async () => {
    const pm: Pagemap = await readPagemap(path.join(root, '2', 'pagemap-1.img'));
    assert.throws(() => resolvePage(pm, 0x11000n), (err: unknown) => err instanceof ImageError && /not loaded/.test(err.message));
  });
});
