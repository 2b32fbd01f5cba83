// `lazyd migrate --pre-copy` without CRIU's pre-dump (which aborts on this kernel: soft-dirty off): the stop rules
// (src/migrate/pre-copy-rules.ts), the iteration driver (src/migrate/pre-copy.ts) with the recorded plain dumps
// as each iteration's images, the agent's directories and parent links (src/agent/pre-dump-dirs.ts), and the
// chain they make read as the agent's lazy-pages and the source's relay read it: the final dump's in-parent pages
// are present (their bytes found in the iteration's pages file), neither lazy nor pulled.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { describeStop, PRE_COPY_LIMITS, preCopyStop } from '../../src/migrate/pre-copy-rules.js';
import { pagesInParent, pagesWritten, preCopy, preDumpDirName } from '../../src/migrate/pre-copy.js';
import { PreDumpDirs } from '../../src/agent/pre-dump-dirs.js';
import { loadCheckpoint, lazyRanges, resolveRange } from '../../src/images/index.js';
import { engineTasks } from '../../src/lazy-pages/engine-config.js';
import { relayPlan } from '../../src/staging/relay.js';
import { dataArea, FIXTURE_VERSIONS, fixturePath } from '../fixtures/fixtures.js';
import { dumpOnParent } from '../harness/pre-copy-chain.js';

const PAGE = 4096;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-pre-copy-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
let dirCount = 0;
const freshDir = (tag: string) => fs.mkdtempSync(path.join(tmp, `${tag}-${++dirCount}-`));

describe('stop rules', () => {
  test('P.Haul\'s limits: 8 iterations, 64 pages, 10 % growth', () => {
    assert.deepEqual(PRE_COPY_LIMITS, { maxIterations: 8, minPages: 64, maxGrowthPercent: 10 });
  });

  test('no iteration yet: go on; a shrinking tree: go on until the limit', () => {
    assert.equal(preCopyStop([]), undefined);
    assert.equal(preCopyStop([10000]), undefined);
    assert.equal(preCopyStop([10000, 5000, 2000]), undefined);
    assert.equal(preCopyStop([10000, 9000, 8000, 7000, 6000, 5000, 4000]), undefined);
    assert.equal(preCopyStop([10000, 9000, 8000, 7000, 6000, 5000, 4000, 3000]), 'max-iterations');
    assert.equal(preCopyStop([500, 500], { ...PRE_COPY_LIMITS, maxIterations: 2 }), 'max-iterations');
    assert.equal(preCopyStop([500], { ...PRE_COPY_LIMITS, maxIterations: 1 }), 'max-iterations');
  });

  test('fewer than 64 pages stops; 64 does not', () => {
    assert.equal(preCopyStop([63]), 'few-pages', 'even the first iteration');
    assert.equal(preCopyStop([0]), 'few-pages');
    assert.equal(preCopyStop([64]), undefined);
    assert.equal(preCopyStop([5000, 64]), undefined);
    assert.equal(preCopyStop([5000, 63]), 'few-pages');
  });

  test('more than 10 % over the previous iteration stops; exactly 10 % does not; the first has nothing to grow from', () => {
    assert.equal(preCopyStop([1000, 1100]), undefined, 'exactly 10 % more');
    assert.equal(preCopyStop([1000, 1101]), 'growth');
    assert.equal(preCopyStop([1000, 1000]), undefined, 'flat');
    assert.equal(preCopyStop([64, 70]), undefined, '9.4 %');
    assert.equal(preCopyStop([64, 71]), 'growth', '10.9 %');
    assert.equal(preCopyStop([100000, 2000, 2201]), 'growth', 'measured against the one before, not the first');
    assert.equal(preCopyStop([1_000_000_000, 1_100_000_001]), 'growth', 'large counts stay exact');
  });

  test('when several rules hold the limit is named first, then too few pages', () => {
    assert.equal(preCopyStop([1000, 2000], { ...PRE_COPY_LIMITS, maxIterations: 2 }), 'max-iterations');
    assert.equal(preCopyStop([10, 60]), 'few-pages', 'grew 6x but is small enough');
  });

  test('each rule in words', () => {
    assert.equal(describeStop('max-iterations', [9, 9, 9]), '3 iterations, the most allowed (--pre-copy-max-iterations 8)');
    assert.equal(describeStop('few-pages', [5000, 12]), 'iteration 2 wrote 12 pages, fewer than 64');
    assert.equal(describeStop('growth', [1000, 1200]), 'iteration 2 wrote 1200 pages, more than 10 % above the 1000 of iteration 1');
  });
});

describe('the agent\'s directories and parent links', () => {
  test('siblings of the migration\'s directory, each linked relatively to the one before, the final one to the last', () => {
    const state = freshDir('agent');
    const id = '20261202T000000-1-1';
    const final = path.join(state, id);
    fs.mkdirSync(final);
    const dirs = new PreDumpDirs(state, id);
    assert.equal(dirs.target('core-1.img'), undefined, 'no iteration open: a final image');
    for (const n of [1, 2, 3]) {
      dirs.begin(n);
      const file = dirs.target('pages-1.img')!;
      assert.equal(file, path.join(state, `${id}.pre-${n}`, 'pages-1.img'));
      fs.writeFileSync(file, Buffer.alloc(n * PAGE));
      assert.equal(dirs.end(n, 1), n * PAGE);
    }
    assert.throws(() => fs.readlinkSync(path.join(state, `${id}.pre-1`, 'parent')), /ENOENT/, 'the first has no parent');
    assert.equal(fs.readlinkSync(path.join(state, `${id}.pre-2`, 'parent')), `../${id}.pre-1`);
    assert.equal(fs.readlinkSync(path.join(state, `${id}.pre-3`, 'parent')), `../${id}.pre-2`);
    dirs.linkFinal(final, 3);
    assert.equal(fs.readlinkSync(path.join(final, 'parent')), `../${id}.pre-3`);
    // Valid where they are: the chain ends at iteration 1's data.
    assert.equal(fs.statSync(path.join(final, 'parent', 'parent', 'parent', 'pages-1.img')).size, PAGE);
    assert.equal((fs.statSync(path.join(state, `${id}.pre-2`)).mode & 0o777), 0o700);
    dirs.remove();
    assert.deepEqual(fs.readdirSync(state), [id]);
  });

  test('out of order, miscounted or unfinished iterations are refused with one line', () => {
    const state = freshDir('agent-bad');
    const dirs = new PreDumpDirs(state, 'm');
    fs.mkdirSync(path.join(state, 'm'));
    assert.throws(() => dirs.begin(2), /^Error: pre-dump 2 out of order: 0 stored so far$/);
    assert.throws(() => dirs.end(1, 0), /^Error: pre-dump-end 1 without its pre-dump$/);
    dirs.begin(1);
    assert.throws(() => dirs.begin(2), /^Error: pre-dump 2 began while pre-dump 1 was still open$/);
    assert.throws(() => dirs.linkFinal(path.join(state, 'm'), 1), /^Error: the restore was asked for while pre-dump 1 was still open$/);
    dirs.target('pages-1.img');
    assert.throws(() => dirs.end(1, 2), /^Error: pre-dump 1: 1 image files arrived, the source sent 2$/);
    assert.throws(() => dirs.end(2, 1), /^Error: pre-dump-end 2 without its pre-dump$/);
  });

  test('the final dump\'s count of iterations must be what arrived', () => {
    const state = freshDir('agent-final');
    fs.mkdirSync(path.join(state, 'm'));
    const dirs = new PreDumpDirs(state, 'm');
    dirs.begin(1);
    assert.equal(dirs.end(1, 0), 0);
    assert.throws(() => dirs.linkFinal(path.join(state, 'm'), 2), /^Error: the final dump was made on 2 pre-dumps, 1 arrived here$/);
    assert.throws(() => dirs.linkFinal(path.join(state, 'm'), 0), /^Error: the final dump was made on 0 pre-dumps, 1 arrived here$/);
    const none = new PreDumpDirs(state, 'n');
    fs.mkdirSync(path.join(state, 'n'));
    none.linkFinal(path.join(state, 'n'), 0);
    assert.equal(fs.existsSync(path.join(state, 'n', 'parent')), false, 'no iterations: no link');
  });
});

/** Copies the recorded plain dump's images (what a pre-dump writes) into `dir`. */
function recordedIteration(version: string, dir: string): void {
  const images = fixturePath(version, 'plain-dump', 'images');
  for (const name of fs.readdirSync(images)) if (name.endsWith('.img')) fs.copyFileSync(path.join(images, name), path.join(dir, name));
}

describe('the iteration driver', () => {
  const recordedPages = fs.statSync(fixturePath('4.2.1', 'plain-dump', 'images', 'pages-1.img')).size / PAGE;

  test('each iteration into a sibling of the final directory, each on the one before; a flat tree runs to the limit', async () => {
    const base = freshDir('src');
    const imagesDir = path.join(base, 'migrate-42-abc');
    fs.mkdirSync(imagesDir);
    const dumps: [string, string | undefined][] = [];
    const sent: number[] = [];
    const seen: number[] = [];
    const result = await preCopy({
      imagesDir,
      pageSize: PAGE,
      limits: { ...PRE_COPY_LIMITS, maxIterations: 3 },
      dump: async (dir, parent) => {
        dumps.push([path.relative(base, dir), parent]);
        recordedIteration('4.2.1', dir);
      },
      send: async (n, dir) => {
        sent.push(n);
        assert.ok(fs.existsSync(path.join(dir, 'pagemap-1.img')), 'sent after the dump wrote it');
        return 1000 * n;
      },
      onIteration: (it) => seen.push(it.n),
    });
    assert.deepEqual(dumps, [
      ['migrate-42-abc.pre-1', undefined],
      ['migrate-42-abc.pre-2', '../migrate-42-abc.pre-1'],
      ['migrate-42-abc.pre-3', '../migrate-42-abc.pre-2'],
    ]);
    assert.deepEqual(sent, [1, 2, 3]);
    assert.deepEqual(seen, [1, 2, 3]);
    assert.equal(result.stop, 'max-iterations');
    assert.equal(result.parent, '../migrate-42-abc.pre-3');
    assert.deepEqual(result.dirs.map((d) => path.basename(d)), ['migrate-42-abc.pre-1', 'migrate-42-abc.pre-2', 'migrate-42-abc.pre-3']);
    assert.deepEqual(result.iterations.map((it) => [it.n, it.pagesWritten, it.bytes]), [[1, recordedPages, 1000], [2, recordedPages, 2000], [3, recordedPages, 3000]]);
    assert.equal(preDumpDirName(imagesDir, 7), 'migrate-42-abc.pre-7');
  });

  test('a tree that dirties little stops after the iteration that wrote fewer than 64 pages; one that grows, after the growth', async () => {
    const run = async (sizes: number[]) => {
      const base = freshDir('src-rule');
      const imagesDir = path.join(base, 'm');
      fs.mkdirSync(imagesDir);
      let n = 0;
      return preCopy({
        imagesDir,
        pageSize: PAGE,
        dump: async (dir) => fs.writeFileSync(path.join(dir, 'pages-1.img'), Buffer.alloc(sizes[n++] * PAGE)),
        send: async () => 0,
      });
    };
    const few = await run([4000, 900, 40, 30]);
    assert.deepEqual([few.stop, few.iterations.map((i) => i.pagesWritten)], ['few-pages', [4000, 900, 40]]);
    const grows = await run([4000, 1000, 1200, 900]);
    assert.deepEqual([grows.stop, grows.iterations.map((i) => i.pagesWritten)], ['growth', [4000, 1000, 1200]]);
  });

  test('a failed pre-dump or a failed send ends the iterations with its error', async () => {
    const imagesDir = path.join(freshDir('src-fail'), 'm');
    fs.mkdirSync(imagesDir);
    await assert.rejects(
      preCopy({ imagesDir, pageSize: PAGE, dump: async () => Promise.reject(new Error('criu pre-dump failed (exit 1)')), send: async () => 0 }),
      /^Error: criu pre-dump failed \(exit 1\)$/,
    );
    const other = path.join(freshDir('src-fail'), 'm');
    fs.mkdirSync(other);
    await assert.rejects(
      preCopy({ imagesDir: other, pageSize: PAGE, dump: async () => undefined, send: async () => Promise.reject(new Error('the agent closed the control connection')) }),
      /the agent closed/,
    );
  });
});

for (const { version } of FIXTURE_VERSIONS) {
  test(`CRIU ${version}: the chain as the agent lays it out — in-parent pages present, neither lazy nor pulled`, async () => {
    const state = freshDir(`chain-${version}`);
    const id = 'mig';
    const final = path.join(state, id);
    fs.mkdirSync(final);
    const dirs = new PreDumpDirs(state, id);
    dirs.begin(1);
    const images = fixturePath(version, 'plain-dump', 'images');
    let files = 0;
    for (const name of fs.readdirSync(images)) {
      if (!name.endsWith('.img')) continue;
      fs.copyFileSync(path.join(images, name), dirs.target(name)!);
      files++;
    }
    dirs.end(1, files);
    const made = await dumpOnParent(path.join(state, `${id}.pre-1`), final, 'final', version === '4.1.1' ? '4.1' : '4.2');
    dirs.linkFinal(final, 1);
    assert.ok(made.parentPages > 0 && made.lazyPages > 0, JSON.stringify(made));
    assert.equal(await pagesInParent(final, PAGE), made.parentPages);
    assert.equal(pagesWritten(final, PAGE), made.writtenPages);

    // The destination's lazy-pages (src/commands/lazy-pages.ts reads the images this way at the hand-over).
    const checkpoint = await loadCheckpoint(final);
    assert.equal(checkpoint.parentDir, path.join(state, `${id}.pre-1`));
    const engine = engineTasks(checkpoint, false);
    assert.equal(engine.lazyPages, made.lazyPages, 'only the PE_LAZY pages are the engine\'s');
    const task = checkpoint.tasks.find((t) => t.pagemap)!;
    for (const range of lazyRanges(task)) assert.equal(range.hasData, false);

    // The data area: its first half in the parent (the iteration's bytes), its second half fetched.
    const area = dataArea(version);
    const segments = resolveRange(task.pagemap!, area.start, area.pages);
    const data = segments.filter((s) => s.kind === 'data');
    const remote = segments.filter((s) => s.kind === 'remote');
    assert.ok(data.length >= 1 && data.every((s) => s.kind === 'data' && s.depth === 1), JSON.stringify(segments, (_, v) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v)));
    assert.equal(data.reduce((n, s) => n + s.nrPages, 0) + remote.reduce((n, s) => n + s.nrPages, 0), area.pages);
    const whole = fs.readFileSync(fixturePath(version, 'plain-dump', 'images', 'pages-1.img'));
    const recorded = await loadCheckpoint(images);
    const [full] = resolveRange(recorded.tasks.find((t) => t.pagemap)!.pagemap!, area.start, area.pages);
    assert.equal(full.kind, 'data');
    const areaBytes = full.kind === 'data' ? whole.subarray(Number(full.offset), Number(full.offset) + area.pages * PAGE) : Buffer.alloc(0);
    assert.equal(createHash('sha256').update(areaBytes).digest('hex'), area.sha256);
    for (const s of data) {
      if (s.kind !== 'data') continue;
      const from = Number(s.start - area.start);
      const bytes = fs.readFileSync(s.pagesPath).subarray(Number(s.offset), Number(s.offset) + s.nrPages * PAGE);
      assert.ok(bytes.equals(areaBytes.subarray(from, from + s.nrPages * PAGE)), 'in-parent bytes are the iteration\'s');
    }

    // The source's relay pulls only the PE_LAZY pages from the final dump.
    const plan = await relayPlan(final);
    assert.equal(plan.pages, made.lazyPages);
    for (const fd of engine.openFds) fs.closeSync(fd);
  });
}

test('the report and the progress lines name each iteration and the rule that stopped them', async () => {
  const { formatReport, MigrationProgress } = await import('../../src/migrate/report.js');
  const text = formatReport({
    outcome: 'migrated', exitCode: 0, message: 'lazyd migrate: pid 1 now runs on dst as pid 2; the original is gone', pid: 1, destination: 'dst:1',
    criu: {}, bytes: { images: 0, pages: 0, requests: 0, control: 0, total: 0 }, stages: [], lazyPages: 40, pagesServed: 40, pagesInParent: 4000,
    preCopy: '2 iterations (pages written 4096, 40); stopped: iteration 2 wrote 40 pages, fewer than 64', preCopyStop: 'few-pages',
    preCopyIterations: [
      { n: 1, pagesWritten: 4096, dumpMs: 120, sendMs: 300, bytes: 16 * 1048576 },
      { n: 2, pagesWritten: 40, dumpMs: 30, sendMs: 5, bytes: 163840 },
    ],
  });
  assert.match(text, /lazy pages 40 served of 40, 4000 in-parent pages not fetched/);
  assert.match(text, /\n {2}pre-copy: 2 iterations \(pages written 4096, 40\); stopped: iteration 2 wrote 40 pages, fewer than 64\n/);
  assert.match(text, /\n {4}pre-dump 1: 4096 pages written, 16\.0 MiB streamed, dump 120 ms, on the destination 300 ms later\n {4}pre-dump 2: 40 pages written/);

  const lines: string[] = [];
  const write = process.stderr.write;
  process.stderr.write = ((chunk: string) => (lines.push(chunk), true)) as typeof process.stderr.write;
  try {
    const progress = new MigrationProgress(PAGE, false);
    progress.update({ phase: 'pre-copy', iteration: 1 });
    progress.update({ phase: 'pre-copy', iteration: 2 });
    progress.update({ phase: 'dump' });
  } finally {
    process.stderr.write = write;
  }
  assert.deepEqual(lines.map((l) => { const o = JSON.parse(l) as Record<string, unknown>; return [o.progress, o.iteration]; }), [['pre-copy', 1], ['pre-copy', 2], ['dump', undefined]]);
});
