// criu's TLS flags → the native options (src/cli/tls-options.ts), and the CLI's start-up errors for bad files.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { tlsOptionsFrom } from '../../src/cli/tls-options.js';
import { repoRoot } from '../../src/paths.js';

test('without --tls: plain, and TLS flags given anyway are reported', () => {
  const warnings: string[] = [];
  assert.equal(tlsOptionsFrom({ tls: false }, '10.0.0.1', (m) => warnings.push(m)), undefined);
  assert.equal(warnings.length, 0);
  assert.equal(tlsOptionsFrom({ tlsCert: 'c.pem', tlsNoCnVerify: true }, undefined, (m) => warnings.push(m)), undefined);
  assert.deepEqual(warnings, ['--tls-cert, --tls-no-cn-verify given without --tls: the connection is plain TCP']);
});

test('with --tls: criu defaults stay empty (the native core fills them in), paths are absolute, the peer name is --address', () => {
  const options = tlsOptionsFrom({ tls: true, tlsCert: 'certs/me.pem', tlsKey: '/k.pem' }, '10.0.0.1', () => assert.fail('no warning'));
  assert.deepEqual(options, {
    cacert: '',
    cacrl: '',
    cert: path.resolve('certs/me.pem'),
    key: '/k.pem',
    noCnVerify: false,
    peerName: '10.0.0.1',
  });
  assert.equal(tlsOptionsFrom({ tls: true, tlsNoCnVerify: true }, undefined, () => undefined)?.peerName, '');
});

test('lazyd --page-server --tls with a missing certificate: one line naming the file and the flag, exit 1', () => {
  const run = spawnSync(process.execPath, [path.join(repoRoot(), 'bin', 'lazyd.js'), '--page-server', '-D', '/nonexistent-lazyd-dir',
    '--port', '0', '--tls', '--tls-cacert', '/nonexistent-ca.pem'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(run.status, 1, run.stderr);
  assert.match(run.stderr, /TLS: cannot read the CA certificate \/nonexistent-ca\.pem \(--tls-cacert\): No such file or directory/);
});
