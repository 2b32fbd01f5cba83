// Secure by default (README "Security"), without CRIU: the allow-list values and their errors, where the daemon
// listens (loopback without --tls unless --address; the warning for a plain listener off loopback; every address
// with --tls; the criu drop-in as criu), and the private staging directory. The listeners are real `lazyd`
// processes; where they listen is read from the kernel (/proc/net/tcp, /proc/net/tcp6), not from their words.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { repoRoot } from '../../src/paths.js';
import { addressListProblem } from '../../src/config/address-list.js';
import { accessOptionsFrom, isLoopback, listenPlan, OPEN_ACCESS } from '../../src/page-server/access.js';
import { ensurePrivateDir } from '../../src/staging/private-dir.js';
import { parseListenTable } from '../../src/staging/listen-watch.js';
import { makeTestPki, tlsArgs } from '../harness/pki.js';
import { fixturePath } from '../fixtures/fixtures.js';

const LAZYD = path.join(repoRoot(), 'bin', 'lazyd.js');

test('allow-lists: CIDR lists checked as flags, the names lists need --tls, each permission gets --allow-from too', () => {
  assert.equal(addressListProblem('10.0.0.0/8, 2001:db8::/32,192.0.2.7,::1'), undefined);
  assert.match(addressListProblem('10.0.0.0/33')!, /"10\.0\.0\.0\/33" has a prefix length beyond 0\.\.32$/);
  assert.match(addressListProblem('2001:db8::/129')!, /beyond 0\.\.128$/);
  assert.match(addressListProblem('example.com')!, /"example\.com" is not one$/);
  assert.match(addressListProblem(' , ')!, /it is empty$/);
  const access = accessOptionsFrom({ allowFrom: '10.0.0.0/8', allowFetchFrom: '192.0.2.0/24', allowUploadFrom: '127.0.0.1', tlsAllowFetchName: 'a.example' }, true);
  assert.deepEqual(access, { fetchFrom: ['10.0.0.0/8', '192.0.2.0/24'], uploadFrom: ['10.0.0.0/8', '127.0.0.1'], fetchNames: ['a.example'], uploadNames: [] });
  assert.throws(() => accessOptionsFrom({ tlsAllowName: 'a.example' }, false), {
    message: "--tls-allow-name checks the peer's TLS certificate: it needs --tls (or use --allow-from to limit peers by address)",
  });
  assert.deepEqual(accessOptionsFrom({}, false), OPEN_ACCESS);
});

test('listening: loopback by default without --tls, every address with it, a warning for a plain listener off loopback', () => {
  for (const address of ['127.0.0.1', '127.3.4.5', '::1', '::ffff:127.0.0.1']) assert.ok(isLoopback(address), address);
  for (const address of ['0.0.0.0', '::', '10.0.0.1', '::ffff:10.0.0.1', '2001:db8::1']) assert.ok(!isLoopback(address), address);
  assert.deepEqual(listenPlan(undefined, 9876, false, OPEN_ACCESS), { address: '127.0.0.1' });
  assert.deepEqual(listenPlan(undefined, 9876, true, OPEN_ACCESS), { address: '' });
  assert.deepEqual(listenPlan('::1', 9876, false, OPEN_ACCESS), { address: '::1' });
  assert.deepEqual(listenPlan('10.0.0.1', 9876, true, OPEN_ACCESS), { address: '10.0.0.1' });
  const open = listenPlan('10.0.0.1', 9876, false, OPEN_ACCESS);
  assert.match(open.warning!, /^listening on 10\.0\.0\.1:9876 without --tls: .* readable by any peer that can connect to this port; run with --tls .*--allow-from CIDR/);
  const listed = listenPlan('2001:db8::1', 9876, false, { ...OPEN_ACCESS, fetchFrom: ['2001:db8::/32'] });
  assert.match(listed.warning!, /^listening on \[2001:db8::1\]:9876 without --tls: .* crosses the network in clear/);
});

test('the staging directory: a checkpoint dir others can enter tightened to 0700; a shared, foreign, linked or busy one refused, never chmod-ed', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-private-'));
  const dirOf = (name: string, mode: number, files: string[] = []) => {
    const dir = path.join(root, name);
    fs.mkdirSync(dir);
    for (const file of files) fs.writeFileSync(path.join(dir, file), '');
    fs.chmodSync(dir, mode);
    return dir;
  };
  const modeOf = (dir: string) => fs.statSync(dir).mode & 0o7777;
  try {
    assert.deepEqual(ensurePrivateDir(path.join(root, 'missing')), { action: 'none' });
    assert.ok(!fs.existsSync(path.join(root, 'missing')), 'a missing directory is not created');
    const mine = dirOf('mine', 0o700);
    assert.deepEqual(ensurePrivateDir(mine), { action: 'none' });
    const empty = dirOf('empty', 0o755);
    assert.deepEqual(ensurePrivateDir(empty), { action: 'tightened', fromMode: 0o755 });
    assert.equal(modeOf(empty), 0o700);
    const images = dirOf('images', 0o750, ['inventory.img', 'pstree.img', 'pages-1.img', 'stats-dump', 'irmap-cache', 'dump.log', 'restored.pid']);
    assert.deepEqual(ensurePrivateDir(images), { action: 'tightened', fromMode: 0o750 });
    assert.equal(modeOf(images), 0o700);
    const shared = dirOf('shared', 0o1777);
    assert.throws(() => ensurePrivateDir(shared), { message: new RegExp(`^--staging-dir ${shared} is mode 1777: other users can write to it \\(a shared directory\\)`) });
    assert.equal(modeOf(shared), 0o1777, 'a shared directory keeps its mode');
    const busy = dirOf('busy', 0o755, ['notes.txt', 'inventory.img']);
    assert.throws(() => ensurePrivateDir(busy), { message: /holds other files than checkpoint images, so lazyd leaves its mode alone — chmod 0700 it/ });
    assert.equal(modeOf(busy), 0o755);
    const link = path.join(root, 'link');
    fs.symlinkSync(empty, link);
    assert.throws(() => ensurePrivateDir(link), { message: new RegExp(`^--staging-dir ${link} is a symbolic link`) });
    const file = path.join(root, 'file');
    fs.writeFileSync(file, '');
    assert.throws(() => ensurePrivateDir(file), { message: `--staging-dir ${file} is not a directory` });
    const theirs = dirOf('theirs', 0o700);
    fs.chownSync(theirs, 1000, 1000);
    assert.throws(() => ensurePrivateDir(theirs), { message: new RegExp(`^--staging-dir ${theirs} belongs to uid 1000, not to lazyd's uid 0: `) });
    assert.throws(() => ensurePrivateDir(os.tmpdir()), /other users can write to it/);
    assert.equal(modeOf(os.tmpdir()), 0o1777, '/tmp untouched');
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

/** Local addresses in LISTEN state on `port`, from the kernel's tables ("127.0.0.1", "::", ...). */
function listeners(port: number): string[] {
  return ['/proc/net/tcp', '/proc/net/tcp6']
    .flatMap((file) => parseListenTable(fs.readFileSync(file, 'utf8')))
    .filter((socket) => socket.port === port)
    .map((socket) => socket.address);
}

interface Started {
  port: number;
  stdout: string;
  log: () => string;
  stop: () => Promise<void>;
}

/** Starts `lazyd <args>` (JSON log on stderr), resolves once it listens: the daemon prints its port, the drop-in logs it. */
async function start(args: string[]): Promise<Started> {
  const child = spawn(process.execPath, [LAZYD, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const deadline = Date.now() + 20_000;
  let port: number | undefined;
  while (port === undefined) {
    // The daemon prints its port once it is ready; the drop-in (which prints nothing) logs it.
    const m = args[0] === 'page-server' ? /Using (\d+) port/.exec(stderr) : /listening on \[?[0-9a-f.:]+\]?:(\d+)/.exec(stdout);
    if (m) port = Number(m[1]);
    else if (child.exitCode !== null || Date.now() > deadline) throw new Error(`lazyd ${args.join(' ')} did not listen: ${stdout}${stderr}`);
    else await new Promise((r) => setTimeout(r, 20));
  }
  return {
    port,
    stdout,
    log: () => stderr,
    stop: async () => {
      child.kill('SIGTERM');
      await exited;
    },
  };
}

test('lazyd --page-server: 127.0.0.1 without --tls, a warning off loopback, every address with --tls; the drop-in listens as criu', { timeout: 60_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-listen-'));
  try {
    const plain = await start(['--page-server', '-D', dir, '--port', '0', '--no-default-config']);
    assert.deepEqual(listeners(plain.port), ['127.0.0.1']);
    assert.match(plain.stdout, /listening on 127\.0\.0\.1:\d+/);
    await plain.stop();
    assert.doesNotMatch(plain.log(), /without --tls/);

    const wide = await start(['--page-server', '-D', dir, '--address', '0.0.0.0', '--port', '0', '--no-default-config']);
    assert.deepEqual(listeners(wide.port), ['0.0.0.0']);
    await wide.stop();
    const warnings = wide.log().split('\n').filter((l) => l.includes('without --tls'));
    assert.equal(warnings.length, 1);
    assert.equal(JSON.parse(warnings[0]).level, 'warn');
    assert.match(JSON.parse(warnings[0]).msg, /^listening on 0\.0\.0\.0:\d+ without --tls: checkpoint memory .* readable by any peer that can connect to this port; run with --tls/);

    const pki = await makeTestPki(path.join(dir, 'pki'));
    const tls = await start(['--page-server', '-D', dir, '--port', '0', '--no-default-config', ...tlsArgs(pki)]);
    assert.deepEqual(listeners(tls.port), ['::']);
    await tls.stop();
    assert.doesNotMatch(tls.log(), /without --tls/);

    // criu page-server listens on every address and says nothing of it: so does the drop-in.
    const images = fixturePath('4.2.1', 'plain-dump', 'images');
    const dropin = await start(['page-server', '--lazy-pages', '-D', images, '-W', dir, '--port', '0', '-v4']);
    assert.deepEqual(listeners(dropin.port), ['::']);
    await new Promise<void>((resolve) => {
      const socket = net.connect(dropin.port, '127.0.0.1', () => socket.end(Buffer.from([0x23, 0x10, 0, 0, ...Array(20).fill(0)])));
      socket.on('data', () => undefined); // read the CLOSE status, so the end of the stream is seen
      socket.on('close', () => resolve());
      socket.on('error', () => resolve());
    });
    await dropin.stop();
    assert.doesNotMatch(dropin.log(), /without --tls|Warn/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('lazyd --page-server: a bad block or a names list without --tls is one line and exit 1', () => {
  for (const [args, line] of [
    [['--allow-from', '10.0.0.0/33'], /^lazyd: --allow-from 10\.0\.0\.0\/33: expected a comma-separated list of IPv4 or IPv6 CIDR blocks .*has a prefix length beyond 0\.\.32$/m],
    [['--tls-allow-fetch-name', 'restore.example'], /--tls-allow-fetch-name checks the peer's TLS certificate: it needs --tls/],
  ] as const) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-bad-'));
    const run = spawnSync(process.execPath, [LAZYD, '--page-server', '-D', dir, '--port', '0', '--no-default-config', ...args], { encoding: 'utf8', timeout: 20_000 });
    fs.rmSync(dir, { recursive: true, force: true });
    assert.equal(run.status, 1, run.stdout + run.stderr);
    assert.match(run.stdout + run.stderr, line);
  }
});
