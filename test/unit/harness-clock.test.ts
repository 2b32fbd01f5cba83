import { test } from 'node:test';
import assert from 'node:assert/strict';
import { nowNs } from '../harness/workload.js';

test("the harness's realtime clock follows a step of the wall clock (the workload's stamps do)", () => {
  const realDateNow = Date.now;
  try {
    const before = nowNs();
    assert.ok(Math.abs(Number(before / 1_000_000n) - realDateNow()) <= 5, 'agrees with the wall clock');
    Date.now = () => realDateNow() + 60_000; // the wall clock stepped a minute ahead
    const ahead = nowNs() - before;
    assert.ok(ahead >= 59_990_000_000n && ahead <= 60_100_000_000n, `followed the step: ${ahead} ns`);
    const a = nowNs(), b = nowNs(); // and keeps its sub-ms resolution after it
    assert.ok(b >= a && b - a < 5_000_000n, `${b - a} ns`);
    Date.now = () => realDateNow() - 60_000; // and back
    const back = nowNs() - before;
    assert.ok(back <= -59_900_000_000n, `followed the step back: ${back} ns`);
  } finally {
    Date.now = realDateNow;
  }
  assert.ok(Math.abs(Number(nowNs() / 1_000_000n) - Date.now()) <= 5, 'back on the wall clock');
});
