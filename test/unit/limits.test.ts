// The session limits' flags: bad values are refused with one line naming the flag, before anything listens.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { limitsError } from '../../src/commands/page-server.js';
import { lazydBin } from '../harness/page-server.js';

test('limitsError names the bad flag and accepts sane values', () => {
  const base = { mode: 'serve' as const, imagesDir: '.', verbosity: 2 };
  assert.equal(limitsError({ ...base, maxSessions: 1, maxInflight: 1, maxSessionBytes: 4096, idleTimeoutSeconds: 0, stallTimeoutSeconds: 1 }), undefined);
  assert.equal(limitsError({ ...base, maxInflight: 0 }), '--max-inflight 0: expected a whole number >= 1');
  assert.equal(limitsError({ ...base, maxSessionBytes: -5 }), '--max-session-bytes -5: expected a whole number >= 1');
  assert.equal(limitsError({ ...base, idleTimeoutSeconds: 1.5 }), '--idle-timeout 1.5: expected a whole number >= 0');
  assert.equal(limitsError({ ...base, maxSessions: Number.NaN }), '--max-sessions NaN: expected a whole number >= 1');
});

test('lazyd --page-server --max-inflight 0 exits 1 with one line naming the flag', () => {
  const run = spawnSync(process.execPath, [lazydBin(), '--page-server', '-D', '.', '--port', '0', '--max-inflight', '0'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(run.status, 1);
  assert.match(run.stderr, /--max-inflight 0: expected a whole number >= 1/);
  assert.doesNotMatch(run.stdout, /listening/);
});
