/**
 * src/images against the real CRIU 4.1.1 and 4.2.1 images in ../shared/testdata (see its README.md), plus
 * round trips, error cases and a parent chain built in a temp dir.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  IMAGE_KINDS, ImageError, PE_LAZY, PE_PARENT, PE_PRESENT, VMA_AREA_GUARD, encodeImage, encodeMessage, encodePagemap,
  findEntry, lazyRanges, loadCheckpoint, loadParentChain, parseMm, parsePagemap, parsePstree, readCore,
  readInventory, readMm, readPagemap, readPstree, resolvePage, resolveRange, splitLazyRanges,
  type Pagemap, type PagemapEntryInput,
} from '../../src/images/index.js';
import { MmEntryType, PagemapEntryType, PagemapHeadType, InventoryEntryType } from '../../src/images/schema.js';

// ---------------------------------------------------------------------------------------------------------------
// Locating the testdata

function findRepoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`no package.json above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}

const REPO_ROOT = findRepoRoot();
const TESTDATA = process.env.LAZYD_TESTDATA ?? path.resolve(REPO_ROOT, '../shared/testdata');

/** Path inside the testdata; fails (never skips) with a clear message when the testdata is missing. */
function td(...parts: string[]): string {
  const p = path.join(TESTDATA, ...parts);
  if (!fs.existsSync(p)) {
    assert.fail(`CRIU testdata missing: ${p} does not exist. The tests need the shared testdata at ${TESTDATA} ` +
      '(repo/../shared/testdata, or set LAZYD_TESTDATA)');
  }
  return p;
}

const VERSIONS = ['4.1.1', '4.2.1'] as const;
const PAGE = 4096;
const DATA_START = 0x7ffff7cbd000n;
const DATA_END = 0x7ffff7dbd000n;
const DATA_SHA256 = 'a9ba08c753fb570ca33f968bb24d468bf78df69ab2e824ba1029c4c735d2adb3';

/** The pagemaps with their two decoded JSONs. */
function pagemapCases(v: string): Array<{ name: string; img: string; json: string; crit: string }> {
  const base = `criu-${v}`;
  return [
    { name: 'plain-dump', img: td(base, 'plain-dump/images/pagemap-1.img'), json: td(base, 'plain-dump/pagemap-1.json'), crit: td(base, 'plain-dump/pagemap-1.crit.json') },
    { name: 'remote-lazy', img: td(base, 'remote-lazy/images/pagemap-1.img'), json: td(base, 'remote-lazy/pagemap-1.json'), crit: td(base, 'remote-lazy/pagemap-1.crit.json') },
    { name: 'upload', img: td(base, 'upload/page-server-images/pagemap-1.img'), json: td(base, 'upload/page-server-pagemap-1.json'), crit: td(base, 'upload/page-server-pagemap-1.crit.json') },
  ];
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

let expectedArea: Buffer | undefined;
function dataArea(): Buffer {
  if (!expectedArea) {
    const buf = Buffer.alloc(256 * PAGE);
    for (let p = 0; p < 256; p++) {
      for (let w = 0; w < 512; w++) buf.writeBigUInt64LE(mix(1n, BigInt(p), BigInt(w)), p * PAGE + 8 * w);
    }
    expectedArea = buf;
  }
  return expectedArea;
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

describe('testdata is present', () => {
  test(`shared testdata at ${TESTDATA}`, () => {
    td('README.md');
    for (const v of VERSIONS) td(`criu-${v}`, 'plain-dump/images/pagemap-1.img');
  });
});

for (const v of VERSIONS) {
  describe(`CRIU ${v} pagemaps`, () => {
    for (const c of pagemapCases(v)) {
      test(`${c.name}: equals pagemap-1.json and agrees with crit`, async () => {
        const j = JSON.parse(fs.readFileSync(c.json, 'utf8'));
        const crit = JSON.parse(fs.readFileSync(c.crit, 'utf8'));
        const pm = await readPagemap(c.img);

        assert.deepEqual(j.magic, ['0x54564319', '0x56084025']);
        assert.equal(pm.pagesId, j.head.pages_id);
        assert.equal(pm.pagesPath, path.join(path.dirname(c.img), `pages-${j.head.pages_id}.img`));
        assert.equal(pm.entries.length, j.entries.length);
        assert.equal(pm.encoding, v === '4.1.1' ? '4.1' : '4.2');
        j.entries.forEach((je: Record<string, unknown>, i: number) => {
          const e = pm.entries[i]!;
          const at = `${c.name} entry ${i}`;
          assert.equal(e.index, i);
          assert.equal(e.vaddr, BigInt(je.vaddr as string), at);
          assert.equal(e.nrPages, je.nr_pages, at);
          assert.equal(e.flags, je.flags, at);
          assert.equal(e.recordOffset, je.record_offset, at);
          if (je.pages_img_offset === undefined || je.pages_img_offset === null) {
            assert.equal(e.pagesOffset, undefined, at);
          } else {
            assert.equal(e.pagesOffset, BigInt(je.pages_img_offset as number), at);
          }
          assert.equal(e.wire.compatNrPages, je.field2_nr_pages, at);
          assert.equal(e.wire.nrPages, je.field5_nr_pages === null ? undefined : BigInt(je.field5_nr_pages as number), at);
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

    test('plain-dump: the 256 data pages read through the offsets match the workload pattern', async () => {
      const pm = await readPagemap(td(`criu-${v}`, 'plain-dump/images/pagemap-1.img'));
      const segs = resolveRange(pm, DATA_START, 256);
      assert.equal(segs.length, 1);
      const seg = segs[0]!;
      assert.equal(seg.kind, 'data');
      if (seg.kind !== 'data') return;
      // entry 0x7ffff7cbb000 +260 starts at byte 24576; the data area is 2 pages into it
      assert.equal(seg.offset, 24576n + 2n * 4096n);
      const bytes = readAt(seg.pagesPath, seg.offset, 256 * PAGE);
      assert.equal(createHash('sha256').update(bytes).digest('hex'), DATA_SHA256);
      assert.ok(bytes.equals(dataArea()), 'data area differs from mix(1, p, w)');
      assert.deepEqual([...bytes.subarray(0, 16)], [0xc1, 0x5c, 0x02, 0x89, 0xec, 0x2d, 0x0a, 0x91, 0x9a, 0x66, 0x43, 0x7d, 0xa1, 0x0d, 0xc2, 0x0c]);
      let sum = 0n;
      for (let i = 0; i < bytes.length; i += 8) sum = (sum + bytes.readBigUInt64LE(i)) & M64;
      assert.equal(sum, 0x28e67e1252d1f17dn);

      // page by page through resolvePage, including unaligned addresses
      for (const p of [0, 1, 127, 255]) {
        const r = resolvePage(pm, DATA_START + BigInt(p * PAGE) + 123n);
        assert.ok(r);
        assert.equal(r.vaddr, DATA_START + BigInt(p * PAGE));
        assert.equal(r.offset, seg.offset + BigInt(p * PAGE));
        assert.equal(r.depth, 0);
        assert.ok(readAt(r.pagesPath, r.offset, PAGE).equals(dataArea().subarray(p * PAGE, (p + 1) * PAGE)));
      }
      assert.equal(resolvePage(pm, 0x1000n), undefined, 'an address outside the pagemap has no data');
    });

    test('upload: pages-65537.img holds the same data area', async () => {
      const pm = await readPagemap(td(`criu-${v}`, 'upload/page-server-images/pagemap-1.img'));
      assert.equal(pm.pagesId, 65537);
      const [seg, ...rest] = resolveRange(pm, DATA_START, 256);
      assert.equal(rest.length, 0);
      assert.ok(seg && seg.kind === 'data');
      assert.equal(path.basename(seg.pagesPath), 'pages-65537.img');
      assert.ok(readAt(seg.pagesPath, seg.offset, 256 * PAGE).equals(dataArea()));
    });

    test('remote-lazy: lazy pages have no local data; eager pages do', async () => {
      const pm = await readPagemap(td(`criu-${v}`, 'remote-lazy/images/pagemap-1.img'));
      assert.deepEqual(resolveRange(pm, DATA_START, 256), [{ kind: 'remote', start: DATA_START, nrPages: 256 }]);
      assert.equal(resolvePage(pm, DATA_START), undefined);
      assert.equal(findEntry(pm, DATA_START)?.flags, PE_LAZY);
      // the first entry (exe text COW page) is eager and is the first page of pages-1.img
      const r = resolvePage(pm, 0x555555555000n);
      assert.deepEqual(r, { vaddr: 0x555555555000n, pagesPath: pm.pagesPath, offset: 0n, depth: 0 });
      assert.equal(pm.pagesFileSize, 14 * PAGE);
    });

    test('pstree, mm, inventory and core of the plain dump', async () => {
      const dir = td(`criu-${v}`, 'plain-dump/images');
      assert.deepEqual(await readPstree(path.join(dir, 'pstree.img')), [{ pid: 1, ppid: 0, pgid: 1, sid: 1, threads: [1, 2] }]);

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
      assert.equal(mm.vmas.length, 27);
      assert.equal(mm.guards.length, 0);
      const containing = mm.vmas.filter((x) => x.start <= DATA_START && DATA_END <= x.end);
      assert.equal(containing.length, 1);
      const data = containing[0]!;
      assert.equal(data.start, 0x7ffff74bd000n);
      assert.equal(data.end, 0x7ffff7dbd000n);
      assert.equal(data.prot, 3); // rw-
      assert.equal(data.flags, 0x22); // MAP_PRIVATE|MAP_ANONYMOUS
      assert.equal(data.fd, -1n);
      assert.equal(data.madv, 1n << 15n); // MADV_NOHUGEPAGE
      for (let i = 1; i < mm.vmas.length; i++) assert.ok(mm.vmas[i - 1]!.end <= mm.vmas[i]!.start);
    });

    test('pstree/mm/core of the other sessions are the same', async () => {
      for (const sub of ['remote-lazy/images', 'upload/dump-images']) {
        const dir = td(`criu-${v}`, sub);
        assert.deepEqual((await readPstree(path.join(dir, 'pstree.img')))[0]?.threads, [1, 2]);
        assert.equal((await readCore(path.join(dir, 'core-1.img'))).state, 'alive');
        assert.equal((await readMm(path.join(dir, 'mm-1.img'))).vmas.length, 27);
        assert.equal((await readInventory(path.join(dir, 'inventory.img'))).imgVersion, 2);
      }
    });

    test('loadCheckpoint(plain-dump) and its lazy ranges', async () => {
      const dir = td(`criu-${v}`, 'plain-dump/images');
      const cp = await loadCheckpoint(dir);
      assert.equal(cp.inventory.imgVersion, 2);
      assert.equal(cp.tasks.length, 1);
      const t = cp.tasks[0]!;
      assert.equal(t.pid, 1);
      assert.equal(t.ppid, 0);
      assert.deepEqual(t.threads, [1, 2]);
      assert.equal(t.state, 'alive');
      assert.equal(t.vmas.length, 27);
      assert.ok(t.pagemap);
      assert.equal(t.pagemap.pagesPath, path.join(dir, 'pages-1.img'));
      assert.equal(cp.parentDir, undefined);

      const ranges = lazyRanges(t);
      assert.equal(ranges.reduce((s, r) => s + r.nrPages, 0), 275);
      assert.ok(ranges.every((r) => r.hasData && r.pagesPath === t.pagemap!.pagesPath));
      // the 260-page entry is split at the VMA end 0x7ffff7dbd000
      const big = ranges.filter((r) => r.entryIndex === 4);
      assert.deepEqual(big.map((r) => [r.start, r.nrPages, r.pagesOffset]), [
        [0x7ffff7cbb000n, 258, 24576n],
        [0x7ffff7dbd000n, 2, 24576n + 258n * 4096n],
      ]);
      assert.equal(big[0]!.vma?.end, 0x7ffff7dbd000n);
      assert.equal(big[1]!.vma?.start, 0x7ffff7dbd000n);
      // no range crosses a VMA end, and each lies inside its VMA
      for (const r of ranges) {
        assert.ok(r.vma, `range ${r.start.toString(16)} has no VMA`);
        assert.ok(r.vma.start <= r.start && r.start + BigInt(r.nrPages * PAGE) <= r.vma.end);
      }
      assert.equal(ranges.length, 10);
    });

    test('loadCheckpoint(remote-lazy): lazy ranges without data', async () => {
      const cp = await loadCheckpoint(td(`criu-${v}`, 'remote-lazy/images'));
      const ranges = lazyRanges(cp.tasks[0]!);
      assert.equal(ranges.reduce((s, r) => s + r.nrPages, 0), 275);
      assert.ok(ranges.every((r) => !r.hasData && r.pagesOffset === undefined && r.pagesPath === undefined));
    });

    test('loadCheckpoint(upload: dump-images + page-server-images merged) reads the data area from pages-65537.img', async () => {
      const dir = await tmpDir(`merged-${v}`);
      for (const sub of ['upload/dump-images', 'upload/page-server-images']) {
        for (const f of fs.readdirSync(td(`criu-${v}`, sub))) fs.copyFileSync(td(`criu-${v}`, sub, f), path.join(dir, f));
      }
      const cp = await loadCheckpoint(dir);
      const t = cp.tasks[0]!;
      assert.equal(path.basename(t.pagemap!.pagesPath), 'pages-65537.img');
      const ranges = lazyRanges(t).filter((r) => r.start <= DATA_START && DATA_START < r.start + BigInt(r.nrPages * PAGE));
      assert.equal(ranges.length, 1);
      const r = ranges[0]!;
      const off = r.pagesOffset! + (DATA_START - r.start);
      assert.ok(readAt(r.pagesPath!, off, 256 * PAGE).equals(dataArea()));
    });

    test('loadCheckpoint(upload/dump-images): missing pagemap of an alive task is an error with a fix', async () => {
      const dir = td(`criu-${v}`, 'upload/dump-images');
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
    const orig = fs.readFileSync(td('criu-4.2.1/plain-dump/images/inventory.img'));
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
  const src = (): string => td('criu-4.2.1/plain-dump/images/pagemap-1.img');
  const json = (): { entries: Array<{ record_offset: number; record_len: number }> } =>
    JSON.parse(fs.readFileSync(td('criu-4.2.1/plain-dump/pagemap-1.json'), 'utf8'));

  test('wrong magic', () => {
    const file = '/x/pagemap-1.img';
    const pstree = fs.readFileSync(td('criu-4.2.1/plain-dump/images/pstree.img'));
    assertImageError(() => parsePagemap(pstree, { file }), { file, entry: 'magic', offset: 4, reason: /wrong magic 0x50273030 \(pstree\), expected 0x56084025 \(pagemap\).*pstree image/ });
    const inv = fs.readFileSync(td('criu-4.2.1/plain-dump/images/inventory.img'));
    assertImageError(() => parsePagemap(inv, { file }), { file, entry: 'magic', offset: 0, reason: /wrong magic 0x58313116/ });
    const swapped = Buffer.from(fs.readFileSync(src()));
    swapped.writeUInt32BE(0x54564319, 0);
    assertImageError(() => parsePagemap(swapped, { file }), { file, entry: 'magic', offset: 0, reason: /other byte order/ });
    assertImageError(() => parsePagemap(Buffer.alloc(0), { file }), { file, entry: 'magic', offset: 0, reason: /empty file/ });
  });

  test('truncated record length', () => {
    const file = '/x/pagemap-1.img';
    const buf = Buffer.concat([fs.readFileSync(src()), Buffer.from([1, 0])]);
    assertImageError(() => parsePagemap(buf, { file }), { file, entry: 14, offset: 267, reason: /truncated record length \(needs 4 bytes, 2 left\).*copy it again/ });
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
    const pages = fs.readFileSync(td('criu-4.2.1/plain-dump/images/pages-1.img'));
    fs.writeFileSync(path.join(dir, 'pages-1.img'), pages.subarray(0, 24576 + 4096)); // ends inside entry 4
    const e4 = json().entries[4]!;
    const err = await assertImageErrorAsync(readPagemap(pmFile), { file: pmFile, entry: 4, offset: e4.record_offset, reason: /pages-1\.img.*only 28672 bytes/ });
    assert.match(err.message, /truncated/);
    // without the pages file at all
    fs.unlinkSync(path.join(dir, 'pages-1.img'));
    await assertImageErrorAsync(readPagemap(pmFile), { file: pmFile, entry: 0, offset: 14, reason: /pages-1\.img cannot be opened/ });
    // the check can be switched off
    assert.equal((await readPagemap(pmFile, { checkPages: false })).entries.length, 14);
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
      fs.copyFileSync(td('criu-4.2.1/plain-dump/images', f), path.join(child, f));
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
