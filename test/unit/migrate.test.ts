// Unit tests of `lazyd migrate`'s pure parts: the CRIU compatibility rule, HOST:PORT, and the control channel's
// framing (over a real loopback connection). The source's pages (relay staging, src/migrate/relay-source.ts) are
// tested with real CRIU in test/e2e/migrate.test.ts and natively in native/tests/relay_test.cc.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { Channel, type Message } from '../../src/migrate/channel.js';
import { compareVersions, headerSize, imageCompatibility } from '../../src/migrate/criu-host.js';
import { parseHostPort } from '../../src/commands/migrate.js';

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
