// Relay staging's control plane (src/staging/relay.ts, listen-watch.ts, control.ts, commands/staging.ts): the
// LISTEN watch over the kernel's socket tables, the pages to pull read from real `criu dump --lazy-pages` images
// (the recorded 4.1.1 and 4.2.1 sessions), the relay request line, and how a relay's events end a waiting request.
// The pulls themselves, against real CRIU, are test/e2e/relay.test.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { listensFor, parseListenTable, readTables, waitForListen } from '../../src/staging/listen-watch.js';
import { loadNative } from '../../src/native.js';
import { Relayer, relayPlan, type NativeRelayOptions } from '../../src/staging/relay.js';
import type { RelayStarted } from '../../src/native.js';
import { removeRelayLink } from '../../src/staging/relay-link.js';
import { LINK_FILE_NAME, readLinkCapability } from '../../src/link/capability-file.js';
import { listCheckpoints, parseRelayRequest, runCommand, type StagingControlTarget } from '../../src/staging/control.js';
import { relayCommandLine } from '../../src/commands/staging.js';
import { Stager, type StagingEvent } from '../../src/staging/stager.js';
import { parseHostPort, STAGING_COMMAND } from '../../src/config/flags.js';
import { resolveValues } from '../../src/config/resolve.js';
import { createLogger } from '../../src/log.js';
import { fixturePath, sessionFacts, FIXTURE_VERSIONS } from '../fixtures/fixtures.js';
import { encodePagemap, loadCheckpoint, PE_LAZY, readPagemap } from '../../src/images/index.js';

const { logger } = createLogger({ verbosity: 0, workDir: os.tmpdir(), format: 'json', autoFormat: 'tty' });

// Lines as the kernel prints them (one LISTEN on 127.0.0.1:3306, one ESTABLISHED, one LISTEN on *:9876).
const TCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:A1B2 0100007F:0CEA 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1
   2: 00000000:2694 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
`;
const TCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:2695 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000100007F:2696 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0000000000000000 100 0 0 10 0
   2: 00000000000000000000000000000000:2697 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6 1 0000000000000000 100 0 0 10 0
`;

test('the LISTEN sockets of /proc/net/tcp and tcp6, and which of them a connect to host:port reaches', () => {
  assert.deepEqual(parseListenTable(TCP), [
    { address: '127.0.0.1', port: 3306 },
    { address: '0.0.0.0', port: 9876 },
  ]);
  const six = parseListenTable(TCP6);
  assert.deepEqual(six, [
    { address: '::1', port: 9877 },
    { address: '::ffff:127.0.0.1', port: 9878 },
    { address: '::', port: 9879 },
  ]);
  const all = [...parseListenTable(TCP), ...six];
  assert.equal(listensFor(all, '127.0.0.1', 3306), true);
  assert.equal(listensFor(all, '127.0.0.2', 3306), false, 'bound to another address');
  assert.equal(listensFor(all, '127.0.0.1', 9876), true, 'bound to 0.0.0.0 (criu through runc)');
  assert.equal(listensFor(all, '::1', 9877), true);
  assert.equal(listensFor(all, '127.0.0.1', 9878), true, 'a v4-mapped address');
  assert.equal(listensFor(all, '10.0.0.1', 9879), true, 'bound to ::');
  assert.equal(listensFor(all, '127.0.0.1', 41234), false, 'an ESTABLISHED socket is not a LISTEN one');
});

test('sock_diag and the /proc tables name the same LISTEN sockets (IPv4, IPv6, every address), and no other state', async () => {
  const servers = await Promise.all(
    ['127.0.0.1', '::1', '::'].map(
      (host) =>
        new Promise<net.Server>((resolve) => {
          const server = net.createServer();
          server.listen(0, host, () => resolve(server));
        }),
    ),
  );
  // An ESTABLISHED socket on a listening port is not a LISTEN one.
  const first = (servers[0]!.address() as net.AddressInfo).port;
  const client = net.connect(first, '127.0.0.1');
  await new Promise((resolve) => client.once('connect', resolve));
  try {
    for (const server of servers) {
      const port = (server.address() as net.AddressInfo).port;
      const byDiag = loadNative().tcpListening(port);
      const byProc = readTables().filter((s) => s.port === port);
      assert.equal(byDiag.length, 1, `one LISTEN socket on ${port}: ${JSON.stringify(byDiag)}`);
      assert.deepEqual(byDiag, byProc);
    }
    assert.deepEqual(loadNative().tcpListening(client.localPort!), [], 'a client port listens nowhere');
  } finally {
    client.destroy();
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  }
});

test('waitForListen sees a real LISTEN socket without connecting to it, and names the fix when none comes', async () => {
  let connections = 0;
  const server = net.createServer(() => connections++);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  try {
    const ms = await waitForListen('127.0.0.1', port, 5_000);
    assert.ok(ms >= 0);
    assert.equal(connections, 0, 'the dump accepts one connection: the watch must never take it');
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
  await assert.rejects(waitForListen('127.0.0.1', port, 50), /nothing listens on 127\.0\.0\.1:\d+ after 0 s \(--listen-timeout\): start `criu dump --lazy-pages --address 127\.0\.0\.1 --port \d+` in this daemon's network namespace/);
  const aborted = new AbortController();
  aborted.abort();
  await assert.rejects(waitForListen('127.0.0.1', port, 0, aborted.signal), /stopped while waiting/);
});

for (const { version, headerBytes } of FIXTURE_VERSIONS) {
  test(`CRIU ${version}: the pages a relay pulls are the PE_LAZY entries of a real lazy dump, in its header layout`, async () => {
    const facts = sessionFacts(version, 'remote-lazy') as unknown as {
      pagemap: { entries: { vaddr: string; nr_pages: number; flags_str: string }[] };
    };
    const lazy = facts.pagemap.entries.filter((e) => e.flags_str === 'PE_LAZY');
    assert.ok(lazy.length > 0);
    const plan = await relayPlan(fixturePath(version, 'remote-lazy', 'images'));
    assert.equal(plan.format, headerBytes);
    assert.equal(plan.tasks.length, 1);
    assert.equal(plan.tasks[0]!.pid, 1);
    assert.deepEqual(
      plan.tasks[0]!.ranges,
      lazy.map((e) => ({ vaddr: BigInt(e.vaddr), nrPages: e.nr_pages })),
    );
    const pages = lazy.reduce((sum, e) => sum + e.nr_pages, 0);
    assert.equal(plan.pages, pages);
    assert.equal(plan.bytes, pages * 4096);
    // --criu-abi overrides what the images say.
    assert.equal((await relayPlan(fixturePath(version, 'remote-lazy', 'images'), headerBytes === 24 ? 32 : 24)).format, headerBytes === 24 ? 32 : 24);
  });

  test(`CRIU ${version}: a lazy dump in which CRIU marked no page lazy: every task with nothing to pull, and a note`, async () => {
    // The lazy dump's images with PE_LAZY taken off every entry and the pages written in: what CRIU writes when
    // its is_stack() takes every page for a stack page. Built from the plain dump of the same recording.
    const plain = await loadCheckpoint(fixturePath(version, 'plain-dump', 'images'), { parents: false });
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-relay-nolazy-'));
    try {
      const src = fixturePath(version, 'plain-dump', 'images');
      for (const name of fs.readdirSync(src)) fs.copyFileSync(path.join(src, name), path.join(dir, name));
      for (const task of plain.tasks) {
        const file = path.join(dir, path.basename(task.files.pagemap!));
        const pm = await readPagemap(file, { checkPages: false });
        const entries = pm.entries.map((e) => ({ ...e, flags: e.flags & ~PE_LAZY }));
        fs.writeFileSync(file, encodePagemap({ pagesId: pm.pagesId }, entries, { encoding: pm.encoding === '4.1' ? '4.1' : pm.encoding === '4.2' ? '4.2' : 'both' }));
      }
      const plan = await relayPlan(dir);
      assert.equal(plan.pages, 0);
      assert.deepEqual(plan.tasks, plain.tasks.map((t) => ({ pid: t.pid, ranges: [] })));
      assert.match(plan.note ?? '', /marked no page lazy .*nothing to pull; the images hold every page/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test(`CRIU ${version}: a relay of a plain dump, or of a directory without a dump, is one line naming the cause`, async () => {
    await assert.rejects(relayPlan(fixturePath(version, 'plain-dump', 'images')), /holds a plain dump, not one of `criu dump --lazy-pages`/);
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-relay-empty-'));
    try {
      await assert.rejects(relayPlan(empty), (error: Error) => {
        assert.match(error.message, /^the dump's images in .* cannot be read: .*inventory image not found/);
        assert.ok(!error.message.includes('\n'));
        return true;
      });
    } finally {
      fs.rmSync(empty, { recursive: true, force: true });
    }
  });
}

test('--from takes HOST:PORT with a numeric address', () => {
  assert.deepEqual(parseHostPort('127.0.0.1:9877'), { host: '127.0.0.1', port: 9877 });
  assert.deepEqual(parseHostPort('[::1]:9877'), { host: '::1', port: 9877 });
  for (const bad of ['127.0.0.1', 'localhost:9877', '127.0.0.1:0', '127.0.0.1:65536', '300.0.0.1:1', '::1:9877']) {
    assert.equal(parseHostPort(bad), undefined, bad);
  }
  assert.throws(() => resolveValues(STAGING_COMMAND, { controlSocket: '/s', from: 'localhost:1' }, {}), /--from localhost:1: expected HOST:PORT/);
});

test('the relay line from the flags, and the daemon side checking it', () => {
  const values = resolveValues(STAGING_COMMAND, { controlSocket: '/s', imagesDir: 'd', from: '127.0.0.1:9877', relayInflightBytes: 65536 }, {});
  const line = relayCommandLine(values, '/work');
  assert.match(line, /^relay \{/);
  const { request, wait } = parseRelayRequest(line.slice('relay '.length));
  assert.equal(wait, true);
  assert.deepEqual(request, {
    dir: '/work/d',
    host: '127.0.0.1',
    port: 9877,
    listenTimeoutMs: 60_000,
    tls: false,
    format: undefined,
    requestBytes: 1 << 20,
    inflightBytes: 65536,
    stallTimeoutMs: 30_000,
    connectTimeoutMs: 10_000,
  });
  const abi = relayCommandLine(resolveValues(STAGING_COMMAND, { controlSocket: '/s', from: '[::1]:1', criuAbi: '4.2', wait: false }, {}), '/');
  assert.deepEqual([parseRelayRequest(abi.slice(6)).request.format, parseRelayRequest(abi.slice(6)).request.host, parseRelayRequest(abi.slice(6)).wait], [32, '::1', false]);
  assert.throws(() => relayCommandLine(resolveValues(STAGING_COMMAND, { controlSocket: '/s' }, {})), /give the dump's address with --from HOST:PORT/);
  assert.throws(() => parseRelayRequest('{'), /expected a JSON object/);
  assert.throws(() => parseRelayRequest(JSON.stringify({ ...request, dir: 'rel' })), /"dir" must be an absolute path/);
  assert.throws(() => parseRelayRequest(JSON.stringify({ ...request, port: 0 })), /"port" must be a whole number from 1 to 65535/);
  assert.throws(() => parseRelayRequest(JSON.stringify({ ...request, format: 28 })), /"format" must be 24 or 32/);
});

const TOKEN = '0123456789abcdef0123456789abcdef';

/** The native side as the Relayer sees it: records what it is asked and numbers the checkpoints. */
function recordingNative(token = TOKEN): { started: NativeRelayOptions[]; native: { startRelay(o: NativeRelayOptions): RelayStarted } } {
  const started: NativeRelayOptions[] = [];
  return { started, native: { startRelay: (o) => (started.push(o), { checkpoint: 7, token }) } };
}

/** A copy of a recorded dump's images (the Relayer writes lazyd-link.json beside them). */
function dumpCopy(t: { after(fn: () => void): void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-relay-images-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.cpSync(fixturePath('4.2.1', 'remote-lazy', 'images'), dir, { recursive: true });
  return dir;
}

test('a relay request waits for the dump to listen, reads its images, starts the pull and answers when the pull ends', async (t) => {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  const port = (server.address() as net.AddressInfo).port;
  const { started, native } = recordingNative();
  const relays = new Relayer(native, undefined, logger);
  const target: StagingControlTarget = { stagedCheckpoints: () => [], releaseAndWait: async () => undefined, relays };
  const dir = dumpCopy(t);
  const request = { dir, host: '127.0.0.1', port, listenTimeoutMs: 5000, requestBytes: 1 << 20, inflightBytes: 1 << 22, stallTimeoutMs: 30_000, connectTimeoutMs: 10_000 };

  const answer = runCommand(`relay ${JSON.stringify(request)}`, target, logger);
  await waitUntil(() => started.length === 1);
  assert.deepEqual({ ...started[0], tasks: undefined }, {
    host: '127.0.0.1', port, connectTimeoutMs: 10_000, format: 32, tasks: undefined, requestPages: 256, inflightBytes: 1 << 22, stallTimeoutMs: 30_000,
  });
  const total = started[0]!.tasks.flatMap((task) => task.ranges).reduce((sum, r) => sum + r.nrPages, 0);
  assert.equal(relays.handle({ type: 'relay-progress', checkpoint: 7, pagesHeld: 10, pagesTotal: total, bytes: 40960 }), true);
  assert.deepEqual(listCheckpoints(target).map((c) => [c.id, c.relay?.state, c.relay?.pagesHeld]), [[7, 'pulling', 10]]);
  relays.handle({ type: 'relay-done', checkpoint: 7, pagesHeld: total, pagesTotal: total, bytes: total * 4096, ms: 12.3, message: '' });
  assert.equal(await answer, `ok relayed checkpoint #7 (pids 1): ${total} pages, ${(total * 4096 / 1048576).toFixed(1)} MiB in 12 ms; the dump has its CLOSE`);
  assert.equal(relays.handle({ type: 'session-end' }), false, 'other events go on to the stager and the log');

  // Released (--staging-restores) while the pull runs: the pull goes on, and whoever waits still gets its end.
  const released = runCommand(`relay ${JSON.stringify(request)}`, target, logger);
  await waitUntil(() => started.length === 2);
  assert.equal(relays.handle({ type: 'released', checkpoint: 7 }), false, 'on to the stager');
  relays.handle({ type: 'relay-done', checkpoint: 7, pagesHeld: total, pagesTotal: total, bytes: total * 4096, ms: 20, message: '' });
  assert.match(await released, /^ok relayed checkpoint #7 .* in 20 ms; the dump has its CLOSE$/);
  assert.deepEqual(listCheckpoints(target), [], 'forgotten once it ended');

  // A failure mid-pull: the waiting request gets one line saying what happened and what state things are in.
  const failing = runCommand(`relay ${JSON.stringify({ ...request, wait: true })}`, target, logger);
  await waitUntil(() => started.length === 3);
  relays.handle({ type: 'relay-failed', checkpoint: 7, pagesHeld: 3, pagesTotal: total, bytes: 12288, ms: 5, message: "the dump's page server closed the connection" });
  assert.equal(
    await failing,
    "error checkpoint #7: the dump's page server closed the connection; the checkpoint is incomplete and never served as complete",
  );
  assert.deepEqual(listCheckpoints(target).map((c) => [c.id, c.relay?.state]), [[7, 'failed']]);
  // A failure after every page was held (the dump's CLOSE answer missing): the checkpoint is complete.
  const unanswered = runCommand(`relay ${JSON.stringify(request)}`, target, logger);
  await waitUntil(() => started.length === 4);
  relays.handle({ type: 'relay-failed', checkpoint: 7, pagesHeld: total, pagesTotal: total, bytes: total * 4096, ms: 5, message: 'the dump did not answer CLOSE' });
  assert.equal(
    await unanswered,
    "error checkpoint #7: the dump did not answer CLOSE; every page is held and served; check the dump's exit status before restoring (not 0: the original runs on, release the checkpoint)",
  );

  // --no-wait answers once the pull runs; --relay-tls needs a daemon with TLS credentials.
  const noWait = await runCommand(`relay ${JSON.stringify({ ...request, wait: false })}`, target, logger);
  assert.equal(noWait, `ok relaying checkpoint #7 (pids 1): ${total} lazy pages from 127.0.0.1:${port}`);
  // A relay that cannot start once the dump listens resets the dump's connection (so it resumes its tasks).
  let resets = 0;
  server.on('connection', (socket) => socket.on('error', (error: NodeJS.ErrnoException) => error.code === 'ECONNRESET' && resets++));
  await assert.rejects(
    runCommand(`relay ${JSON.stringify({ ...request, tls: true })}`, target, logger),
    new Error("--relay-tls: this daemon runs without --tls, so it has no certificate to show the dump: start it with --tls and its --tls-* flags; the dump's connection was reset, so criu dump fails and resumes the tasks"),
  );
  const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-relay-empty-'));
  t.after(() => fs.rmSync(empty, { recursive: true, force: true }));
  await assert.rejects(
    runCommand(`relay ${JSON.stringify({ ...request, dir: empty })}`, target, logger),
    /^Error: the dump's images in .* cannot be read: .*; the dump's connection was reset, so criu dump fails and resumes the tasks$/,
  );
  await waitUntil(() => resets === 2);
  assert.equal(await runCommand(`relay ${JSON.stringify(request)}`, { ...target, relays: undefined }, logger), 'error relay: this daemon does not relay (it needs staging on)');
});

test("a relayed checkpoint's lazyd-link.json: written (0600) into the dump's -D before the pull is said to run, removed when the checkpoint is released", async (t) => {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  const port = (server.address() as net.AddressInfo).port;
  const dir = dumpCopy(t);
  const file = path.join(dir, LINK_FILE_NAME);
  const request = { dir, host: '127.0.0.1', port, listenTimeoutMs: 5000, requestBytes: 1 << 20, inflightBytes: 1 << 22, stallTimeoutMs: 30_000, connectTimeoutMs: 10_000, wait: false };

  const { native } = recordingNative();
  const relays = new Relayer(native, undefined, logger);
  const target: StagingControlTarget = { stagedCheckpoints: () => [], releaseAndWait: async () => undefined, relays };
  // --no-wait answers once the pull runs: the file is there by then (a script copies -D next).
  assert.match(await runCommand(`relay ${JSON.stringify(request)}`, target, logger), /^ok relaying checkpoint #7 /);
  assert.equal(fs.statSync(file).mode & 0o777, 0o600);
  assert.deepEqual(await readLinkCapability(dir), {
    version: 1,
    features: ['bind', 'checksum', 'priority', 'resume'],
    token: TOKEN,
    checkpoint: 7,
    inventory: createHash('sha256').update(fs.readFileSync(path.join(dir, 'inventory.img'))).digest('hex'),
  }, "the dump's inventory named, so a file left for the next dump into this -D is not taken for it");
  assert.equal(relays.get(7)?.linkFile, file);
  assert.deepEqual(fs.readdirSync(dir).filter((name) => name.startsWith('.')), [], 'no temporary file left');
  // Released: the token names nothing any more, so the file goes (a later copy of -D must not send a HELLO with it).
  relays.handle({ type: 'released', checkpoint: 7 });
  await waitUntil(() => !fs.existsSync(file));

  // A newer relay of the same directory wrote its own file: the older checkpoint's release leaves it.
  const newer = { version: 1, features: ['bind', 'checksum'], token: 'f'.repeat(32), checkpoint: 8 };
  fs.writeFileSync(file, JSON.stringify(newer));
  assert.equal(await removeRelayLink(file, TOKEN), false);
  assert.deepEqual(await readLinkCapability(dir), newer, "the newer relay's file is kept");
  assert.equal(await removeRelayLink(file, newer.token), true);
  assert.equal(fs.existsSync(file), false);
  fs.writeFileSync(file, JSON.stringify(newer));

  // No token drawn (getrandom failed): no file, and a stale one from an earlier dump is removed, not left naming a
  // dead token.
  const untokened = new Relayer(recordingNative('').native, undefined, logger);
  assert.match(await runCommand(`relay ${JSON.stringify(request)}`, { ...target, relays: untokened }, logger), /^ok relaying checkpoint #7 /);
  assert.equal(fs.existsSync(file), false, 'the stale file is removed');
  assert.equal(untokened.get(7)?.linkFile, undefined);
});

async function waitUntil(condition: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

test("a relayed checkpoint's --staging-ttl runs from the end of its pull, not from its 'staged' event", (t) => {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const released: number[] = [];
  const native = { writePages: async () => 0, ackUpload: () => undefined, release: (id: number) => void released.push(id) };
  const stager = new Stager({ dir: os.tmpdir(), ttlSeconds: 5 }, native, logger);
  const staged = (id: number) =>
    stager.handle({ type: 'staged', session: id, checkpoint: id, pagemaps: [{ type: 'pid', id: 1, entries: new BigUint64Array(0) }], bytesHeld: 4096, memoryUsed: 4096 } as StagingEvent);
  // An upload: the TTL runs from 'staged'.
  staged(2);
  t.mock.timers.tick(5000);
  assert.deepEqual(released, [2]);
  // A relay: staged when its pull starts; nothing released however long the pull takes...
  stager.deferTtl(3);
  staged(3);
  t.mock.timers.tick(60_000);
  assert.deepEqual(released, [2], 'a release while the pull runs would reset the dump');
  // ...then the TTL from the pull's end.
  stager.startTtl(3);
  t.mock.timers.tick(4999);
  assert.deepEqual(released, [2]);
  t.mock.timers.tick(1);
  assert.deepEqual(released, [2, 3]);
});
