// The native page server against real CRIU client streams (recorded in test/fixtures) and against bad input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PageServerService, type NativeSessionEvent } from '../../src/page-server/service.js';
import { dataArea, fixturePath, sessionFacts, uploadPagesImage, type SessionName } from '../fixtures/fixtures.js';
import { memoryLogger } from '../harness/memory-logger.js';

const VERSIONS = ['4.1.1', '4.2.1'] as const;
const PAGE = 4096;

function testdata(version: string, session: SessionName, ...parts: string[]): string {
  return fixturePath(version, session, ...parts);
}

// The recorded 4.1.1 plain dump, which most tests below serve: its pid, its data area, the pagemap entry that
// holds the data area (lazy, and it ends 2 pages after the area), an eager page, and an address no entry covers.
const PLAIN = sessionFacts('4.1.1', 'plain-dump');
const PID = PLAIN.workload.ns_pid;
const { start: DATA_START, pages: DATA_PAGES } = dataArea('4.1.1');
const DATA_ENTRY = PLAIN.pagemap.entries[PLAIN.workload.data_area.entry_index]!;
const ENTRY_START = BigInt(DATA_ENTRY.vaddr);
const ENTRY_PAGES = DATA_ENTRY.nr_pages;
const EAGER_PAGE = BigInt(PLAIN.pagemap.entries.find((e) => e.flags === 4)!.vaddr);
const UNCOVERED = (() => {
  const ends = PLAIN.pagemap.entries.map((e) => BigInt(e.vaddr) + BigInt(e.nr_pages * PAGE));
  return ends.find((end) => !PLAIN.pagemap.entries.some((e) => BigInt(e.vaddr) <= end && end < BigInt(e.vaddr) + BigInt(e.nr_pages * PAGE)))!;
})();

/** A logger that keeps records, so tests can assert on what the server said. */
async function startServer(version: string, extra: Partial<Parameters<typeof PageServerService.start>[0]> = {}) {
  const { logger, lines: records } = memoryLogger();
  const service = await PageServerService.start({
    imagesDir: testdata(version, 'plain-dump', 'images'),
    address: '127.0.0.1',
    port: 0,
    logger,
    ...extra,
  });
  return { service, records };
}

/** Sends bytes, half-closes, and collects everything until the server closes. */
function exchange(port: number, request: Buffer, { halfClose = true } = {}): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const socket = net.connect(port, '127.0.0.1', () => {
      if (halfClose) socket.end(request);
      else socket.write(request);
    });
    socket.on('data', (d) => chunks.push(d));
    socket.on('error', reject);
    socket.on('close', () => resolve(Buffer.concat(chunks)));
  });
}

function get24(pid: number, vaddr: bigint, nrPages: number): Buffer {
  const b = Buffer.alloc(24);
  b.writeUInt32LE(7, 0);
  b.writeUInt32LE(nrPages, 4);
  b.writeBigUInt64LE(vaddr, 8);
  b.writeBigUInt64LE(BigInt(pid), 16);
  return b;
}

function close24(): Buffer {
  const b = Buffer.alloc(24);
  b.writeUInt32LE(0x1023, 0);
  return b;
}

/** Splits a recorded lazy reply stream into [header, payload] pairs plus the closing status. */
function splitReplies(stream: Buffer, headerSize: number) {
  const replies: Array<{ header: Buffer; vaddr: bigint; nrPages: number; payload: Buffer }> = [];
  let off = 0;
  while (stream.length - off > 4) {
    const header = stream.subarray(off, off + headerSize);
    const nrPages = headerSize === 24 ? header.readUInt32LE(4) : Number(header.readBigUInt64LE(8));
    const vaddr = header.readBigUInt64LE(headerSize === 24 ? 8 : 16);
    off += headerSize;
    replies.push({ header, vaddr, nrPages, payload: stream.subarray(off, off + nrPages * PAGE) });
    off += nrPages * PAGE;
  }
  return { replies, status: stream.subarray(off) };
}

function dataPages(replies: ReturnType<typeof splitReplies>['replies'], version: string): Map<bigint, Buffer> {
  const { start, end } = dataArea(version);
  const pages = new Map<bigint, Buffer>();
  for (const reply of replies) {
    for (let i = 0; i < reply.nrPages; i++) {
      const address = reply.vaddr + BigInt(i * PAGE);
      if (address >= start && address < end) pages.set(address, reply.payload.subarray(i * PAGE, (i + 1) * PAGE));
    }
  }
  return pages;
}

for (const version of VERSIONS) {
  const headerSize = version === '4.1.1' ? 24 : 32;

  test(`CRIU ${version}: a recorded criu lazy-pages client stream gets byte-identical reply headers`, async () => {
    const { service } = await startServer(version);
    try {
      const request = fs.readFileSync(testdata(version, 'remote-lazy', 'client-to-server.bin'));
      const recorded = fs.readFileSync(testdata(version, 'remote-lazy', 'server-to-client.bin'));
      const answer = await exchange(service.port, request);
      assert.equal(answer.length, recorded.length);
      const ours = splitReplies(answer, headerSize);
      const theirs = splitReplies(recorded, headerSize);
      assert.equal(ours.replies.length, theirs.replies.length);
      ours.replies.forEach((reply, i) => assert.deepEqual(reply.header, theirs.replies[i].header, `reply ${i} header`));
      assert.deepEqual(ours.status, Buffer.from([0, 0, 0, 0]), 'CLOSE status 0');
      // The pages of the workload's data area are the same in every run (the rest, stacks and heap, differ
      // between the recorded runs).
      const ourData = dataPages(ours.replies, version);
      const theirData = dataPages(theirs.replies, version);
      assert.equal(ourData.size, dataArea(version).pages);
      for (const [address, page] of theirData) assert.ok(page.equals(ourData.get(address)!), `page 0x${address.toString(16)}`);
    } finally {
      service.stop(0);
      await service.stopped;
    }
  });
}

test('CRIU 4.1.1 stream with --criu-abi 4.2 is refused, not misread', async () => {
  const { service, records } = await startServer('4.1.1', { format: 32 });
  try {
    const answer = await exchange(service.port, get24(PID, DATA_START, 1));
    assert.equal(answer.length, 0, 'nothing is served');
  } finally {
    service.stop(0);
    await service.stopped;
  }
  assert.ok(records.some((r) => r.level === 50 && /Page-server session failed/.test(r.msg)));
});

interface BadCase {
  name: string;
  request: Buffer;
  error: RegExp;
}

const badCases: BadCase[] = [
  { name: 'unknown command', request: Buffer.from(get24(PID, DATA_START, 1).fill(0x99, 0, 2)), error: /unknown command|malformed first header/ },
  { name: 'unknown pid', request: Buffer.concat([get24(PID, DATA_START, 1), get24(PID + 6, DATA_START, 1)]), error: /no task with this pid/ },
  { name: 'a page it does not hold', request: Buffer.concat([get24(PID, DATA_START, 1), get24(PID, UNCOVERED, 1)]), error: /no pagemap entry covers/ },
  { name: 'an eager page', request: Buffer.concat([get24(PID, DATA_START, 1), get24(PID, EAGER_PAGE, 1)]), error: /not lazy/ },
  { name: 'nr_pages 0', request: Buffer.concat([get24(PID, DATA_START, 1), get24(PID, DATA_START, 0)]), error: /nr_pages is 0/ },
  { name: 'nr_pages beyond the cap', request: Buffer.concat([get24(PID, DATA_START, 1), get24(PID, DATA_START, 70000)]), error: /more than the limit/ },
  { name: 'an unaligned address', request: Buffer.concat([get24(PID, DATA_START, 1), get24(PID, DATA_START + 8n, 1)]), error: /not page-aligned/ },
  { name: 'a truncated header', request: Buffer.concat([get24(PID, DATA_START, 1), get24(PID, DATA_START, 1).subarray(0, 10)]), error: /truncated header/ },
  { name: 'an upload command', request: Buffer.from('0400000000000000000000000000000001010000000000000000000000000000', 'hex').subarray(0, 24), error: /upload command OPEN2/ },
];

test('bad requests end only their own session, with one clear error line; the server keeps serving', async () => {
  const { service, records } = await startServer('4.1.1');
  try {
    for (const bad of badCases) {
      const before = records.length;
      const answer = await exchange(service.port, bad.request);
      // The session's end reaches the log through the server thread's event queue, which may trail the socket's
      // close by a moment.
      await until(`${bad.name}: the error line`, () => records.slice(before).some((r) => r.level >= 50));
      const errors = records.slice(before).filter((r) => r.level >= 50);
      assert.equal(errors.length, 1, `${bad.name}: one error line, got ${JSON.stringify(errors)}`);
      assert.match(errors[0].msg, bad.error, bad.name);
      // Whatever came before the bad request was answered completely, and nothing after it.
      assert.ok(answer.length === 0 || answer.length === 24 + PAGE, `${bad.name}: ${answer.length} bytes`);
    }
    // Still serving: a clean session after all that.
    const answer = await exchange(service.port, Buffer.concat([get24(PID, DATA_START, 2), close24()]));
    assert.equal(answer.length, 24 + 2 * PAGE + 4);
    assert.equal(service.stats().sessionsFailed, badCases.length);
  } finally {
    service.stop(0);
    await service.stopped;
  }
});

test('requests are clamped to the end of the pagemap entry, as CRIU clamps them', async () => {
  const { service } = await startServer('4.1.1');
  try {
    // The data area's entry has ENTRY_PAGES pages; ask for 10 starting 3 pages before its end.
    const start = ENTRY_START + BigInt((ENTRY_PAGES - 3) * PAGE);
    const answer = await exchange(service.port, Buffer.concat([get24(PID, start, 10), close24()]));
    assert.equal(answer.readUInt32LE(4), 3);
    assert.equal(answer.length, 24 + 3 * PAGE + 4);
  } finally {
    service.stop(0);
    await service.stopped;
  }
});

test('sessions run at the same time; a peer that stops reading is dropped after --stall-timeout', async () => {
  const { service, records } = await startServer('4.1.1', { stallTimeoutMs: 1000 });
  try {
    // The staller asks for ~64 MiB and never reads.
    const staller = net.connect(service.port, '127.0.0.1');
    await new Promise((resolve) => staller.on('connect', resolve));
    staller.pause();
    const many = Buffer.concat(Array.from({ length: 64 }, () => get24(PID, ENTRY_START, ENTRY_PAGES)));
    staller.write(many);
    // Meanwhile a well-behaved session is served in full.
    const answer = await exchange(service.port, Buffer.concat([get24(PID, DATA_START, DATA_PAGES), close24()]));
    assert.equal(answer.length, 24 + DATA_PAGES * PAGE + 4);
    const dropped = await until('the stalled session dropped', () => records.some((r) => /read only \d+ bytes in 1 s/.test(r.msg))).then(
      () => true,
      () => false,
    );
    staller.destroy();
    assert.ok(dropped, 'the stalled session was dropped');
  } finally {
    service.stop(0);
    await service.stopped;
  }
});

test('port in use: one line naming the cause and the fix', async () => {
  const { service } = await startServer('4.1.1');
  try {
    await assert.rejects(
      startServer('4.1.1', { port: service.port }),
      /cannot listen on 127\.0\.0\.1:\d+: the port is in use — stop the other server or pick another --port/,
    );
  } finally {
    service.stop(0);
    await service.stopped;
  }
});

test('stop() drains: replies already queued are finished, then the server ends cleanly', async () => {
  const { service } = await startServer('4.1.1');
  const socket = net.connect(service.port, '127.0.0.1');
  await new Promise((resolve) => socket.on('connect', resolve));
  const chunks: Buffer[] = [];
  socket.on('data', (d) => chunks.push(d));
  const closed = new Promise((resolve) => socket.on('close', resolve));
  socket.write(Buffer.concat(Array.from({ length: 8 }, () => get24(PID, ENTRY_START, ENTRY_PAGES))));
  // Stop once the server has read the requests (its first reply bytes arrived), not after a fixed sleep: on a
  // loaded machine 100 ms was not always enough, and requests still unread in the kernel's buffer are not
  // "queued" — closing over them resets the connection.
  await new Promise((resolve) => socket.once('data', resolve));
  service.stop(5000);
  assert.equal(await service.stopped, true);
  await closed;
  assert.equal(Buffer.concat(chunks).length, 8 * (24 + ENTRY_PAGES * PAGE));
});

test('stats().requestsInFlight counts GETs read and not answered in full, and drops to 0 as replies go out or sessions end', async () => {
  const { service } = await startServer('4.1.1');
  try {
    const socket = net.connect(service.port, '127.0.0.1');
    await new Promise((resolve) => socket.on('connect', resolve));
    socket.on('error', () => undefined);
    socket.pause(); // read nothing: 8 replies of the whole entry (over 1 MiB each) do not fit the socket buffers
    const replyBytes = 8 * (24 + ENTRY_PAGES * PAGE);
    socket.write(Buffer.concat(Array.from({ length: 8 }, () => get24(PID, ENTRY_START, ENTRY_PAGES))));
    await until('requests in flight', () => service.stats().requestsInFlight >= 1);
    assert.ok(service.stats().requestsInFlight <= 8, `at most the 8 GETs sent (${service.stats().requestsInFlight})`);
    let got = 0;
    const all = new Promise<void>((resolve) =>
      socket.on('data', (d) => {
        got += d.length;
        if (got >= replyBytes) resolve();
      }),
    );
    socket.resume();
    await all;
    await until('no request in flight once every reply was read', () => service.stats().requestsInFlight === 0);

    const second = net.connect(service.port, '127.0.0.1');
    second.on('error', () => undefined);
    await new Promise((resolve) => second.on('connect', resolve));
    second.pause();
    second.write(Buffer.concat(Array.from({ length: 8 }, () => get24(PID, ENTRY_START, ENTRY_PAGES))));
    await until('requests in flight again', () => service.stats().requestsInFlight >= 1);
    second.resetAndDestroy();
    await until('no request in flight once the session ended', () => service.stats().requestsInFlight === 0);
    socket.destroy();
  } finally {
    service.stop(0);
    await service.stopped;
  }
});

export type { NativeSessionEvent };

// ---- Staging: criu dump --page-server uploads into lazyd's memory (recorded CRIU upload streams) ----

async function upload(port: number, stream: Buffer, expectReplies: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let got = 0;
    const socket = net.connect(port, '127.0.0.1', () => socket.write(stream));
    socket.on('data', (d) => {
      chunks.push(d);
      got += d.length;
      if (got >= expectReplies) socket.end(); // CRIU closes after the CLOSE status
    });
    socket.on('error', () => undefined); // a refused upload: the server hangs up mid-stream
    void reject;
    socket.on('close', () => resolve(Buffer.concat(chunks)));
  });
}

/** Waits for fn() with a deadline that only a failure reaches (a loaded machine is slow, not wrong). */
async function until(what: string, fn: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

for (const version of VERSIONS) {
  const headerSize = version === '4.1.1' ? 24 : 32;
  for (const persist of [false, true]) {
    test(`CRIU ${version}: staging${persist ? ' --persist' : ''}: upload, images as criu page-server's, lazy GETs from memory, pid kept apart, ttl`, async () => {
      const { readPagemap, PE_LAZY, PE_PRESENT } = await import('../../src/images/index.js');
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-staging-'));
      const { logger, lines: records } = memoryLogger();
      // No TTL here: what follows needs the checkpoint staged however long it takes; the TTL has its own server
      // below.
      const service = await PageServerService.start({
        imagesDir: dir,
        address: '127.0.0.1',
        port: 0,
        logger,
        staging: { dir, persist },
      });
      const stream = fs.readFileSync(testdata(version, 'upload', 'client-to-server.bin'));
      const expected = fs.readFileSync(testdata(version, 'upload', 'server-to-client.bin'));
      try {
        const replies = await upload(service.port, stream, expected.length);
        assert.deepEqual(replies, expected, 'the same replies as criu page-server');
        await until('staged', () => service.stagedCheckpoints().length === 1);

        const theirs = await readPagemap(testdata(version, 'upload', 'page-server-images', 'pagemap-1.img'), { checkPages: false });
        const ours = await readPagemap(path.join(dir, 'pagemap-1.img'), { checkPages: false });
        assert.equal(ours.pagesId, theirs.pagesId, "criu page-server's pages id");
        assert.equal(ours.entries.length, theirs.entries.length);
        ours.entries.forEach((e, i) => {
          const want = !persist && theirs.entries[i].flags & PE_LAZY ? theirs.entries[i].flags & ~PE_PRESENT : theirs.entries[i].flags;
          assert.equal(e.vaddr, theirs.entries[i].vaddr);
          assert.equal(e.nrPages, theirs.entries[i].nrPages);
          assert.equal(e.flags, want, `entry ${i} flags`);
        });
        const { name: pagesName, data: theirPages } = uploadPagesImage(version);
        const ourPages = fs.readFileSync(path.join(dir, pagesName));
        if (persist) assert.deepEqual(ourPages, theirPages, 'pages image identical to criu page-server');
        else assert.ok(ourPages.length < theirPages.length, 'only eager pages on disk');

        // A lazy GET is served from memory, byte-identical to criu page-server's image.
        const lazy = theirs.entries.find((e) => e.flags & PE_LAZY)!;
        const index = theirs.entries.indexOf(lazy);
        const offset = theirs.entries.slice(0, index).filter((e) => e.flags & PE_PRESENT).reduce((s, e) => s + Number(e.nrPages) * PAGE, 0);
        const pid = sessionFacts(version, 'upload').workload.ns_pid;
        const head = headerSize === 24 ? get24(pid, lazy.vaddr, 1) : (() => {
          const b = Buffer.alloc(32);
          b.writeUInt32LE(7, 0);
          b.writeBigUInt64LE(1n, 8);
          b.writeBigUInt64LE(lazy.vaddr, 16);
          b.writeBigUInt64LE(BigInt(pid), 24);
          return b;
        })();
        const close = Buffer.alloc(headerSize);
        close.writeUInt32LE(0x1023, 0);
        const answer = await exchange(service.port, Buffer.concat([head, close]));
        assert.equal(answer.length, headerSize + PAGE + 4);
        assert.deepEqual(answer.subarray(headerSize, headerSize + PAGE), theirPages.subarray(offset, offset + PAGE));

        // The same pid again while staged: refused at OPEN2 (no reply), nothing staged twice.
        const again = await upload(service.port, stream, expected.length);
        assert.equal(again.length, 0);
        await until('the refusal logged', () => records.some((r) => new RegExp(`pid ${pid} is already staged by checkpoint`).test(r.msg)));
        assert.equal(service.stagedCheckpoints().length, 1);
      } finally {
        service.stop(0);
        await service.stopped;
        fs.rmSync(dir, { recursive: true, force: true });
      }

      // --staging-ttl 1: released after a second; its memory freed.
      const ttlDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-staging-ttl-'));
      const ttlLog = memoryLogger();
      const timed = await PageServerService.start({
        imagesDir: ttlDir,
        address: '127.0.0.1',
        port: 0,
        logger: ttlLog.logger,
        staging: { dir: ttlDir, persist, ttlSeconds: 1 },
      });
      try {
        assert.deepEqual(await upload(timed.port, stream, expected.length), expected);
        await until('staged', () => ttlLog.lines.some((r) => /^Staged checkpoint #\d+: pids 1 /.test(r.msg)));
        await until('ttl release', () => timed.stagedCheckpoints().length === 0);
        await until('released by the TTL', () => ttlLog.lines.some((r) => /released: after 1 s \(--staging-ttl\)/.test(r.msg)));
        await until('memory freed', () => timed.stats().stagingBytes === 0);
      } finally {
        timed.stop(0);
        await timed.stopped;
        fs.rmSync(ttlDir, { recursive: true, force: true });
      }
    });
  }
}

test('IPv6: listens on ::1 and serves', async () => {
  const { service } = await startServer('4.1.1', { address: '::1' });
  try {
    const answer = await new Promise<Buffer>((resolve, reject) => {
      const chunks: Buffer[] = [];
      const socket = net.connect(service.port, '::1', () => socket.end(Buffer.concat([get24(PID, DATA_START, 1), close24()])));
      socket.on('data', (d) => chunks.push(d));
      socket.on('error', reject);
      socket.on('close', () => resolve(Buffer.concat(chunks)));
    });
    assert.equal(answer.length, 24 + PAGE + 4);
  } finally {
    service.stop(0);
    await service.stopped;
  }
});
