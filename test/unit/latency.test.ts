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
