// The set-up every end-to-end test file (test/e2e) shares: the host prerequisites, the stage timeouts, a
// progress callback that writes test diagnostics, and the check that a log holds no "Error" line.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import type { TestContext } from 'node:test';
import { checkHost, CRIU_VERSIONS } from './criu.js';
import type { Timeouts } from './migration.js';

/** Every harness stage gives up (and cleans up) well before a test's own timeout. */
export const E2E_TIMEOUTS: Timeouts = { dumpMs: 30_000, readyMs: 15_000, restoreMs: 30_000, allPagesMs: 45_000, passesMs: 20_000 };

let hostChecked: Error | true | undefined;

/**
 * Root, CRIU 4.1.1 and 4.2.1 under /opt/lazyd-criu (scripts/install-criu.sh) and fs.pipe-max-size, checked once
 * per process: a missing one FAILS every test that calls this, with the reason; it is never a skip.
 */
export function requireHost(): void {
  if (hostChecked === undefined) {
    try {
      checkHost(CRIU_VERSIONS);
      hostChecked = true;
    } catch (error) {
      hostChecked = error as Error;
    }
  }
  if (hostChecked !== true) throw hostChecked;
}

/** A harness progress callback that writes each message as a diagnostic of test t. */
export function testProgress(t: TestContext): (message: string) => void {
  return (message: string) => t.diagnostic(message);
}

/** A criu-style log must exist and hold no "Error" line (tools grep criu logs for it). */
export function assertCleanLog(file: string): void {
  assert.ok(fs.existsSync(file), `no log at ${file} (-o is relative to -D, as with criu)`);
  const errors = fs.readFileSync(file, 'utf8').split('\n').filter((line) => /\bError\b/.test(line));
  assert.deepEqual(errors, [], `errors in ${file}`);
}
