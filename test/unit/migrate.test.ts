// Unit tests of `lazyd migrate`'s pure parts: the CRIU compatibility rule, HOST:PORT, the control channel's
// framing (over a real loopback connection), and the page gate's view of a real CRIU lazy session (the recorded
// `criu dump --lazy-pages` ↔ `criu lazy-pages` streams of test/fixtures, fed in random pieces).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { Channel, type Message } from '../../src/migrate/channel.js';
import { compareVersions, headerSize, imageCompatibility } from '../../src/migrate/criu-host.js';
import { ReplyCounter, RequestScanner } from '../../src/migrate/gate.js';
import { parseHostPort } from '../../src/commands/migrate.js';
import { FIXTURE_VERSIONS, readFixture, sessionFacts } from '../fixtures/fixtures.js';

test('images of a newer CRIU are refused on an older one, with the fix in the line', () => {
  const refused = imageCompatibility('4.2.1', '4.1.1');
  assert.match(refused ?? '', /^the source's CRIU 4\.2\.1 writes images the destination's CRIU 4\.1\.1 cannot restore .* install CRIU 4\.2 or later on the destination/);
  assert.equal(imageCompatibility('4.1.1', '4.2.1'), undefined);
  assert.equal(imageCompatibility('4.2.1', '4.2.0'), undefined, 'patch releases write the same images');
  assert.equal(imageCompatibility('4.1.1', '4.1.1'), undefined);
  assert.ok(imageCompatibility('5.0', '4.2.1'));
  assert.ok(compareVersions('4.10', '4.9') > 0);
  assert.equal(headerSize('4.1.1'), 24);
  assert.equal(headerSize('4.2.1'), 32);
});

test('--to and --listen: HOST:PORT and [IPv6]:PORT, anything else one line', () => {
  assert.deepEqual(parseHostPort('10.0.0.2:9877', '--to'), { host: '10.0.0.2', port: 9877 });
  assert.deepEqual(parseHostPort('[fd00::2]:9877', '--to'), { host: 'fd00::2', port: 9877 });
  assert.deepEqual(parseHostPort('dst.example:1', '--to'), { host: 'dst.example', port: 1 });
  for (const bad of ['dst', 'dst:', ':9877', 'fd00::2:9877', 'dst:70000']) {
    assert.throws(() => parseHostPort(bad, '--to'), /^Error: --to ".*": expected HOST:PORT \(IPv6: \[ADDR\]:PORT\)$/, bad);
  }
});

async function channelPair(sink?: (name: string) => string): Promise<{ a: Channel; b: Channel; close: () => void }> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const b = new Channel(await accepted, sink);
  const a = new Channel(client);
  server.close();
  return { a, b, close: () => (a.destroy(), b.destroy()) };
}

test('control channel: messages and files arrive whole and in order', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-channel-'));
  try {
    const { a, b, close } = await channelPair((name) => path.join(dir, name));
    const got: Message[] = [];
    const done = new Promise<void>((resolve) => b.on('message', (m: Message) => (got.push(m), m.t === 'bye' && resolve())));
    const source = path.join(dir, 'src.bin');
    const bytes = Buffer.alloc(3 * 1024 * 1024 + 7, 0);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 31) & 0xff;
    fs.writeFileSync(source, bytes);
    fs.writeFileSync(path.join(dir, 'empty.bin'), '');
    a.send({ t: 'abort', reason: 'first' });
    await a.sendFile('pages-1.img', source);
    await a.sendFile('empty.img', path.join(dir, 'empty.bin'));
    a.send({ t: 'bye' });
    await done;
    assert.deepEqual(got.map((m) => m.t), ['abort', 'file', 'file', 'bye']);
    assert.ok(fs.readFileSync(path.join(dir, 'pages-1.img')).equals(bytes));
    assert.equal(fs.statSync(path.join(dir, 'empty.img')).size, 0);
    close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('control channel: garbage, an unexpected file or a refused name end it with one line', async () => {
  const cases: [string, Buffer, RegExp][] = [
    ['garbage', Buffer.from('GET / HTTP/1.1\r\n\r\n'), /not a lazyd migration message: "GET \/ HTTP\/1\.1\\r"/],
    ['no newline', Buffer.alloc(70 * 1024, 0x41), /a line of over 64 KiB: not a lazyd migration peer/],
    ['bad name', Buffer.from(JSON.stringify({ t: 'file', name: '../../etc/passwd', size: 3 }) + '\n'), /refusing the file name/],
    ['bad size', Buffer.from(JSON.stringify({ t: 'file', name: 'x.img', size: -1 }) + '\n'), /announced a file of -1 bytes/],
  ];
  for (const [what, bytes, expected] of cases) {
    const { a, b, close } = await channelPair((name) => {
      if (name.includes('/')) throw new Error(`refusing the file name ${JSON.stringify(name)}`);
      return path.join(os.tmpdir(), `lazyd-unused-${process.pid}`);
    });
    const error = new Promise<Error>((resolve) => b.once('error', resolve));
    a.socket.write(bytes);
    assert.match((await error).message, expected, what);
    close();
  }
});

for (const { version, headerBytes } of FIXTURE_VERSIONS) {
  test(`page gate, CRIU ${version}: the recorded lazy session's requests and replies, in random pieces`, () => {
    const stream = sessionFacts(version, 'remote-lazy').stream!;
    const c2s = readFixture(version, 'remote-lazy', 'client-to-server.bin');
    const s2c = readFixture(version, 'remote-lazy', 'server-to-client.bin');
    for (let round = 0; round < 20; round++) {
      const requests = new RequestScanner(headerBytes);
      const replies = new ReplyCounter(headerBytes, 4096);
      let passed = 0;
      for (let at = 0; at < c2s.length; ) {
        const n = 1 + Math.floor(Math.random() * 60);
        passed += requests.feed(c2s.subarray(at, at + n)).length;
        at += n;
      }
      assert.equal(requests.gets, stream.gets, 'every GET seen');
      assert.ok(requests.close, 'the CLOSE is held');
      assert.equal(passed, c2s.length - headerBytes, 'everything but the CLOSE passes');
      replies.due = requests.gets;
      for (let at = 0; at < s2c.length; ) {
        const n = 1 + Math.floor(Math.random() * 9000);
        replies.feed(s2c.subarray(at, at + n));
        at += n;
      }
      assert.equal(replies.replies, stream.gets, 'one reply per GET');
      assert.equal(replies.pages, stream.pages_with_data, 'every page counted once');
      assert.equal(replies.due, 0);
    }
  });
}

/** A listener where the dump's loopback port would be: records how each connection to it ended. */
async function dumpPortWatcher(): Promise<{ port: number; ends: Promise<string>; close: () => void }> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const ends = new Promise<string>((resolve) =>
    server.once('connection', (socket) => {
      socket.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
      socket.on('end', () => resolve('EOF'));
      socket.resume();
    }),
  );
  return { port: (server.address() as net.AddressInfo).port, ends, close: () => server.close() };
}

test('page gate: a failure before the CLOSE resets the dump port (never a clean EOF), also with no client yet', async () => {
  const { PageGate } = await import('../../src/migrate/gate.js');
  const dump = await dumpPortWatcher();
  const gate = new PageGate({ listenAddress: '127.0.0.1', listenPort: 0, peerAddress: '127.0.0.1', dumpPort: dump.port, headerSize: 32, pageSize: 4096 });
  await gate.listen();
  const ended = new Promise((resolve) => gate.once('end', resolve));
  gate.abort('the test gives up');
  assert.deepEqual(await ended, { ok: false, reason: 'the test gives up' });
  assert.equal(await dump.ends, 'ECONNRESET');
  dump.close();
});

test('page gate, TLS: a client whose certificate does not verify is refused and the dump reset', async () => {
  const { PageGate } = await import('../../src/migrate/gate.js');
  const { makeMigrationPki } = await import('../harness/agent.js');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-gate-pki-'));
  try {
    const pki = await makeMigrationPki(dir);
    const dump = await dumpPortWatcher();
    const read = (file: string) => fs.readFileSync(file);
    const gate = new PageGate({
      listenAddress: '127.0.0.1',
      listenPort: 0,
      peerAddress: '127.0.0.1',
      dumpPort: dump.port,
      headerSize: 32,
      pageSize: 4096,
      tls: { ca: read(pki.ca), cert: read(pki.source.cert), key: read(pki.source.key) },
    });
    const port = await gate.listen();
    const ended = new Promise<{ ok: boolean; reason?: string }>((resolve) => gate.once('end', resolve));
    const tls = await import('node:tls');
    const client = tls.connect({ host: '127.0.0.1', port, ca: read(pki.ca), cert: read(pki.untrusted.cert), key: read(pki.untrusted.key) });
    client.on('error', () => undefined);
    const outcome = await ended;
    assert.equal(outcome.ok, false);
    assert.match(outcome.reason ?? '', /presented a certificate that does not verify|failed its TLS handshake/);
    assert.equal(await dump.ends, 'ECONNRESET');
    client.destroy();
    dump.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
