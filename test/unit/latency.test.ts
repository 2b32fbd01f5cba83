import { test } from 'node:test';
import assert from 'node:assert/strict';
import { latencyLine, quantileUpperBoundUs } from '../../src/lazy-pages/latency.js';

const bounds = [5, 10, 20, 50, 100, Infinity];

test('quantiles come from the bucket holding the rank', () => {
  const h = { latencyBoundsUs: bounds, latencyCounts: [0, 50, 49, 0, 1, 0] };
  assert.equal(quantileUpperBoundUs(h, 0.5), 10);
  assert.equal(quantileUpperBoundUs(h, 0.99), 20);
  assert.equal(quantileUpperBoundUs(h, 1), 100);
  assert.equal(latencyLine(h), 'fault service time: p50 <= 10 us, p99 <= 20 us, max <= 100 us (100 faults)');
});

test('no faults, and faults beyond the last finite bound', () => {
  assert.equal(quantileUpperBoundUs({ latencyBoundsUs: bounds, latencyCounts: [0, 0, 0, 0, 0, 0] }, 0.5), undefined);
  assert.equal(latencyLine({ latencyBoundsUs: bounds, latencyCounts: [0, 0, 0, 0, 0, 0] }), 'fault service time: no faults');
  assert.match(latencyLine({ latencyBoundsUs: bounds, latencyCounts: [1, 0, 0, 0, 0, 1] }), /max > 100 us/);
});

test('the native histogram resolves 4 buckets per doubling from 8 us to 1 s, and the summary line tells 90 from 250 us', async () => {
  const { loadNative } = await import('../../src/native.js');
  const addon = loadNative();
  const fs = await import('node:fs');
  const os = await import('node:os');
  const path = await import('node:path');
  const { lazyPagesOptions, defaultValues } = await import('../../src/config/resolve.js');
  const { LAZY_PAGES } = await import('../../src/config/flags.js');
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-latency-'));
  try {
    const engine = new addon.LazyPages({
      ...lazyPagesOptions(LAZY_PAGES, defaultValues(LAZY_PAGES)),
      format: 24,
      workDir,
      nrTasks: 1,
      tasks: [],
      source: 'local',
      address: undefined,
      port: undefined,
      tls: undefined,
      onEvent: () => undefined,
    });
    const b = engine.stats().latencyBoundsUs;
    engine.stop();
    assert.equal(b.at(-1), Infinity);
    const finite = b.slice(0, -1);
    assert.ok(finite[0] <= 8 && finite.at(-1)! >= 1_000_000, `${finite[0]}..${finite.at(-1)}`);
    for (let i = 1; i < finite.length; i++) assert.ok(finite[i] > finite[i - 1], 'increasing');
    // Every doubling [x, 2x] within 8 us..1 s holds at least 4 bucket bounds past x.
    for (let x = 8; x * 2 <= 1_000_000; x *= 2) {
      const inside = finite.filter((v) => v > x && v <= 2 * x).length;
      assert.ok(inside >= 4, `(${x}, ${2 * x}]: ${inside} bounds`);
    }
    const counts = (us: number) => b.map((bound, i) => (us <= bound && (i === 0 || us > b[i - 1]) ? 1 : 0));
    assert.match(latencyLine({ latencyBoundsUs: b, latencyCounts: counts(90) }), /p50 <= 91 us/);
    assert.match(latencyLine({ latencyBoundsUs: b, latencyCounts: counts(250) }), /p50 <= 256 us/);
  } finally {
    fs.rmSync(workDir, { recursive: true, force: true });
  }
});
