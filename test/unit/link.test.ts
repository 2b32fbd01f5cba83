// The lazyd link (docs/protocol.md §7) on lazyd's page server, without root: CRIU's recorded upload stream
// (4.1.1 and 4.2.1) is staged; the server writes lazyd-link.json (mode 0600) beside the images; a HELLO with its
// token is granted and bound to the checkpoint (with feature checksum asked, each reply ends with its pages'
// CRC32C), one with another token or outside the checkpoint is refused, a stock GET gets CRIU's reply byte for
// byte — or, with requireLinkToken, nothing — and each refusal is counted.
// And the capability file's reader: absent → null, malformed → one line naming the file and the fix.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PageServerService } from '../../src/page-server/service.js';
import { inventoryDigest, LINK_FILE_NAME, linkMatchesImages, parseLinkCapability, readLinkCapability } from '../../src/link/capability-file.js';
import { fixturePath, sessionFacts } from '../fixtures/fixtures.js';
import { memoryLogger } from '../harness/memory-logger.js';
import { crc32c, encodeGet, encodeHello, HELLO_MAGIC, LINK_FEATURE_BIND, LINK_FEATURE_CHECKSUM, type WireFormat } from '../harness/wire.js';

const VERSIONS = ['4.1.1', '4.2.1'] as const;
const PAGE = 4096;
const EACCES = 13;
const hello = (token: Buffer, version = 1) => encodeHello(token, { version });
const get = (headerSize: WireFormat, pid: number, vaddr: bigint) => encodeGet(headerSize, pid, vaddr);

function exchange(port: number, request: Buffer): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const socket = net.connect(port, '127.0.0.1', () => socket.end(request));
    socket.on('data', (d) => chunks.push(d));
    socket.on('error', () => undefined); // a refused session may end in a reset
    socket.on('close', () => resolve(Buffer.concat(chunks)));
  });
}

function upload(port: number, stream: Buffer, expectReplies: number): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let got = 0;
    const socket = net.connect(port, '127.0.0.1', () => socket.write(stream));
    socket.on('data', (d) => {
      chunks.push(d);
      got += d.length;
      if (got >= expectReplies) socket.end();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => resolve(Buffer.concat(chunks)));
  });
}

async function until(what: string, fn: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function stagedServer(version: string, requireLinkToken: boolean) {
  const { readPagemap, PE_LAZY } = await import('../../src/images/index.js');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-link-'));
  const { logger, lines } = memoryLogger();
  const service = await PageServerService.start({ imagesDir: dir, address: '127.0.0.1', port: 0, logger, requireLinkToken, staging: { dir } });
  const stream = fs.readFileSync(fixturePath(version, 'upload', 'client-to-server.bin'));
  const expected = fs.readFileSync(fixturePath(version, 'upload', 'server-to-client.bin'));
  assert.deepEqual(await upload(service.port, stream, expected.length), expected, 'the upload replies are criu page-server\'s');
  await until('staged', () => service.stagedCheckpoints().length === 1);
  const pagemap = await readPagemap(path.join(dir, 'pagemap-1.img'), { checkPages: false });
  const lazy = pagemap.entries.find((e) => e.flags & PE_LAZY)!;
  const pid = sessionFacts(version, 'upload').workload.ns_pid;
  const stop = async () => {
    service.stop(0);
    await service.stopped;
    fs.rmSync(dir, { recursive: true, force: true });
  };
  return { service, lines, dir, pid, vaddr: lazy.vaddr, stop };
}

for (const version of VERSIONS) {
  const headerSize: WireFormat = version === '4.1.1' ? 24 : 32;

  test(`CRIU ${version} upload: lazyd-link.json written 0600; HELLO binds to the checkpoint; stock GETs unchanged`, async () => {
    const s = await stagedServer(version, false);
    try {
      const file = path.join(s.dir, LINK_FILE_NAME);
      assert.equal(fs.statSync(file).mode & 0o777, 0o600);
      const cap = await readLinkCapability(s.dir);
      assert.ok(cap);
      assert.equal(cap.version, 1);
      assert.deepEqual(cap.features, ['bind', 'checksum', 'priority', 'resume']);
      assert.equal(cap.checkpoint, s.service.stagedCheckpoints()[0].id);
      const token = Buffer.from(cap.token, 'hex');

      // Stock: CRIU's reply, no extension byte.
      const stock = await exchange(s.service.port, get(headerSize, s.pid, s.vaddr));
      assert.equal(stock.length, headerSize + PAGE);
      assert.equal(stock.readUInt32LE(0), 0x40006, 'ADD_F|PE_PRESENT');

      // HELLO with the token: granted, bound, then the same page as the stock GET.
      const linked = await exchange(s.service.port, Buffer.concat([hello(token), get(headerSize, s.pid, s.vaddr)]));
      assert.equal(linked.length, 32 + headerSize + PAGE);
      assert.equal(linked.readUInt32LE(0), HELLO_MAGIC);
      assert.equal(linked.readInt32LE(16), 0, 'granted');
      assert.equal(linked.readBigUInt64LE(8), 1n, 'feature bind granted');
      assert.equal(Number(linked.readBigUInt64LE(24)), cap.checkpoint, 'bound to the checkpoint');
      assert.deepEqual(linked.subarray(32), stock, 'the page as a stock client gets it');
      assert.equal(s.service.accessRefused(), 0);

      // Feature checksum asked too: granted, and the reply ends with the page's CRC32C (docs/protocol.md §7.4).
      assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283, 'CRC32C check value');
      const both = LINK_FEATURE_BIND | LINK_FEATURE_CHECKSUM;
      const summed = await exchange(s.service.port, Buffer.concat([encodeHello(token, { features: both }), get(headerSize, s.pid, s.vaddr)]));
      assert.equal(summed.length, 32 + headerSize + PAGE + 4, 'one reply with a 4-byte trailer');
      assert.equal(summed.readBigUInt64LE(8), both, 'checksum granted');
      assert.deepEqual(summed.subarray(32, 32 + headerSize + PAGE), stock, 'the same reply');
      assert.equal(summed.readUInt32LE(32 + headerSize + PAGE), crc32c(stock.subarray(headerSize)), 'the page\'s CRC32C');

      // Refused: a token no checkpoint has; a GET outside the bound checkpoint; a link version from elsewhere.
      const wrong = await exchange(s.service.port, Buffer.concat([hello(Buffer.alloc(16, 7)), get(headerSize, s.pid, s.vaddr)]));
      assert.equal(wrong.length, 32, 'the refusing reply and nothing else');
      assert.equal(wrong.readInt32LE(16), -EACCES);
      await until('1 refusal counted', () => s.service.accessRefused() === 1);
      const outside = await exchange(s.service.port, Buffer.concat([hello(token), get(headerSize, s.pid + 1, s.vaddr)]));
      // No page for the other pid; the grant itself gets out only if the GET was read after it was sent.
      assert.ok(outside.length === 0 || (outside.length === 32 && outside.readInt32LE(16) === 0), `${outside.length} bytes`);
      await until('2 refusals counted', () => s.service.accessRefused() === 2);
      await until('the refusal logged with why', () => s.lines.some((l) => /one token, one checkpoint/.test(l.msg)));
      const version9 = await exchange(s.service.port, hello(token, 9));
      assert.equal(version9.readInt32LE(16), -93, '-EPROTONOSUPPORT');
      await until('3 refusals counted', () => s.service.accessRefused() === 3);
    } finally {
      await s.stop();
    }
  });

  test(`CRIU ${version} upload, requireLinkToken: a stock GET is refused and counted, a HELLO'd one served`, async () => {
    const s = await stagedServer(version, true);
    try {
      const stock = await exchange(s.service.port, get(headerSize, s.pid, s.vaddr));
      assert.equal(stock.length, 0, 'nothing for a client without HELLO');
      await until('the refusal counted', () => s.service.accessRefused() === 1);
      // The counter is native; the log line follows on the event loop.
      await until('the log line naming the flag', () => s.lines.some((l) => /--require-link-token/.test(l.msg)));
      const cap = (await readLinkCapability(s.dir))!;
      const linked = await exchange(s.service.port, Buffer.concat([hello(Buffer.from(cap.token, 'hex')), get(headerSize, s.pid, s.vaddr)]));
      assert.equal(linked.length, 32 + headerSize + PAGE);
      assert.equal(s.service.accessRefused(), 1);
    } finally {
      await s.stop();
    }
  });
}

test('capability file: absent is null; malformed is one line naming the file and the fix', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-link-file-'));
  try {
    assert.equal(await readLinkCapability(dir), null);
    fs.writeFileSync(path.join(dir, LINK_FILE_NAME), '{"version":1,"features":[],"token":"xyz"}');
    await assert.rejects(readLinkCapability(dir), /lazyd-link\.json: the token is not 32 hex digits; remove it/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  assert.throws(() => parseLinkCapability('not json'), /not JSON/);
  assert.throws(() => parseLinkCapability('{"token":"00000000000000000000000000000000"}'), /no version/);
  const ok = parseLinkCapability('{"version":1,"features":["bind"],"token":"0123456789abcdef0123456789abcdef","checkpoint":3}');
  assert.equal(ok.checkpoint, 3);
  assert.throws(() => parseLinkCapability('{"version":1,"features":[],"token":"0123456789abcdef0123456789abcdef","inventory":"ab"}'), /inventory is not 64 hex digits/);
});

// A relayed checkpoint's file names the dump's inventory.img: a file left in a reused -D by an earlier dump is told
// from the current one's, so lazyd lazy-pages never sends a HELLO to the stock criu dump that wrote the new images.
test('capability file: the inventory it names must be the one beside it', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-link-inventory-'));
  try {
    const cap = { version: 1, features: ['bind'], token: '0123456789abcdef0123456789abcdef', checkpoint: 1 };
    assert.equal(inventoryDigest(dir), undefined, 'no inventory.img');
    assert.equal(linkMatchesImages(cap, dir), true, 'a file that names no inventory (upload staging) is taken as it is');
    fs.copyFileSync(fixturePath('4.2.1', 'plain-dump', 'images', 'inventory.img'), path.join(dir, 'inventory.img'));
    const current = { ...cap, inventory: inventoryDigest(dir)! };
    assert.match(current.inventory, /^[0-9a-f]{64}$/);
    assert.equal(linkMatchesImages(current, dir), true, 'written for these images');
    fs.copyFileSync(fixturePath('4.1.1', 'plain-dump', 'images', 'inventory.img'), path.join(dir, 'inventory.img'));
    assert.equal(linkMatchesImages(current, dir), false, 'another dump wrote the images since');
    fs.rmSync(path.join(dir, 'inventory.img'));
    assert.equal(linkMatchesImages(current, dir), false, 'no inventory to match');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
