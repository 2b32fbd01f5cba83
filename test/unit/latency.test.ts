import { test } from 'node:test';
import assert from 'node:assert/strict';
import { latencyLine } from '../../src/lazy-pages/latency.js';

test('the summary line gives the fine p50 and p99 as upper bounds and the exact max', () => {
  const figures = { latencyCount: 100, latencyP50Us: 5949, latencyP99Us: 6015, latencyMaxUs: 40000 };
  assert.equal(latencyLine(figures), 'fault service time: p50 <= 5949 us, p99 <= 6015 us, max 40000 us (100 faults)');
  assert.equal(latencyLine({ latencyCount: 0, latencyP50Us: 0, latencyP99Us: 0, latencyMaxUs: 0 }), 'fault service time: no faults');
});

test('the native Prometheus histogram resolves 4 buckets per doubling from 8 us to 1 s; the fine figures start at 0', async () => {
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
    const stats = engine.stats();
    engine.stop();
    const b = stats.latencyBoundsUs;
    assert.equal(b.at(-1), Infinity);
    const finite = b.slice(0, -1);
    assert.ok(finite[0] <= 8 && finite.at(-1)! >= 1_000_000, `${finite[0]}..${finite.at(-1)}`);
    for (let i = 1; i < finite.length; i++) assert.ok(finite[i] > finite[i - 1], 'increasing');
    // Every doubling [x, 2x] within 8 us..1 s holds at least 4 bucket bounds past x.
    for (let x = 8; x * 2 <= 1_000_000; x *= 2) {
      const inside = finite.filter((v) => v > x && v <= 2 * x).length;
      assert.ok(inside >= 4, `(${x}, ${2 * x}]: ${inside} bounds`);
    }
    assert.deepEqual([stats.latencyP50Us, stats.latencyP99Us, stats.latencyMaxUs, stats.latencyCount], [0, 0, 0, 0]);
    assert.equal(latencyLine(stats), 'fault service time: no faults');
  } finally {
    fs.rmSync(workDir, { recursive: true, force: true });
  }
});
