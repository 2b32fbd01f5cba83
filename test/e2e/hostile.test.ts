// Hostile and malformed sessions against a real `lazyd --page-server` process serving real CRIU images (the
// recorded 4.1.1 plain dump of test/fixtures). In every case a well-behaved client — the recorded `criu lazy-pages` stream,
// replayed — runs at the same time as the hostile peer, and the case then checks: the daemon is still running
// and answering, the good client got exactly the bytes of a quiet run (its data area checked against the
// workload's formula too), the daemon's RSS stayed bounded, its fd count came back to the baseline, and its log
// names the cause in one line.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, startPageServer, type PageServer } from '../harness/page-server.js';
import { connectRogueClient } from '../harness/clients.js';
import { pollFor } from '../harness/process.js';
import {
  daemonUsage,
  dataAreaServed,
  dataAreaSha256,
  fdsBackTo,
  idleConnections,
  makeAccessAttacks,
  makeAttacks,
  rawSession,
  replayRecorded,
  slowReader,
  splitReplies,
  type Attack,
  type DaemonUsage,
  type Target,
} from '../harness/hostile.js';
import { dataArea, fixturePath, readFixture, sessionFacts } from '../fixtures/fixtures.js';

const VERSION = '4.1.1';
const PLAIN = sessionFacts(VERSION, 'plain-dump');
const AREA = dataArea(VERSION);
/** What the attacks check served bytes against: the data area, to the end of its lazy pagemap entry. */
const DATA_ENTRY = PLAIN.pagemap.entries[PLAIN.workload.data_area.entry_index]!;
const SERVED = dataAreaServed(BigInt(PLAIN.workload.ns_pid), AREA, BigInt(DATA_ENTRY.vaddr) + BigInt(DATA_ENTRY.nr_pages * 4096));
const ATTACKS = makeAttacks(SERVED);
const STALL_S = 2;
/** Long enough for the idle case to connect 1000 sockets and judge 20 more before the first ones are dropped. */
const IDLE_S = 8;
const MAX_SESSIONS = 1010;
/** The daemon's RSS may grow this much over the whole suite (Node's heap settles; nothing scales with input). */
const RSS_BOUND_KIB = 48 * 1024;
/** How long a wait for something the daemon does may take before the case fails (a loaded machine is slow). */
const WAIT_MS = 20_000;

let dir: string;
let server: PageServer;
let target: Target;
let clientStream: Buffer;
let quietAnswer: Buffer;
let baseline: DaemonUsage;

// The allow-list server (README "Security"): a second daemon on the same images, listening on every address
// (dual stack: IPv4 peers arrive as ::ffff:a.b.c.d) without TLS, which it warns about. On loopback each 127.x
// address is a peer of its own: 127.0.0.1 and ::1 may fetch, 127.0.0.2 may upload, 127.0.0.3 nothing.
const HOSTS = { fetchOnly: '127.0.0.1', uploadOnly: '127.0.0.2', refused: '127.0.0.3' };
const ACCESS_ATTACKS = makeAccessAttacks(SERVED, HOSTS);
let guarded: PageServer;
let guardedTarget: Target;
let guardedMetrics: number;
let guardedBaseline: DaemonUsage;

/** The log from a byte offset (logSize()): a byte offset, not a character one. */
function logSince(offset: number): string {
  return fs.readFileSync(server.logFile).subarray(offset).toString('utf8');
}
function logSize(): number {
  return fs.statSync(server.logFile).size;
}

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-hostile-'));
  fs.cpSync(fixturePath(VERSION, 'plain-dump', 'images'), dir, { recursive: true });
  clientStream = readFixture(VERSION, 'remote-lazy', 'client-to-server.bin');
  server = await startPageServer({
    kind: 'lazyd',
    imagesDir: dir,
    extraArgs: [
      '--max-sessions', String(MAX_SESSIONS),
      '--stall-timeout', String(STALL_S),
      '--idle-timeout', String(IDLE_S),
      '--max-inflight', '8',
    ],
  });
  target = { host: server.address, port: server.port };
  // The quiet run: what the good client must get every time. Its data area is checked against the formula.
  quietAnswer = await replayRecorded(target, clientStream);
  const { replies, rest } = splitReplies(quietAnswer, 24);
  assert.ok(replies.length >= 5, `the recorded stream got ${replies.length} replies`);
  assert.deepEqual(rest, Buffer.alloc(4), 'CLOSE status 0');
  assert.equal(dataAreaSha256(replies, AREA), AREA.sha256);
  await fdsBackTo(server.pid, daemonUsage(server.pid).fds, 2000);
  baseline = daemonUsage(server.pid);

  const guardedDir = path.join(dir, 'guarded');
  fs.cpSync(fixturePath(VERSION, 'plain-dump', 'images'), guardedDir, { recursive: true });
  guardedMetrics = await freePort();
  guarded = await startPageServer({
    kind: 'lazyd',
    imagesDir: guardedDir,
    address: '::',
    extraArgs: [
      '--allow-fetch-from', `${HOSTS.fetchOnly}/32,::1`,
      '--allow-upload-from', HOSTS.uploadOnly,
      '--metrics-address', `127.0.0.1:${guardedMetrics}`,
    ],
  });
  guardedTarget = { host: '127.0.0.1', port: guarded.port };
  assert.ok((await replayRecorded(guardedTarget, clientStream)).equals(quietAnswer), 'the guarded server serves an allowed host');
  await fdsBackTo(guarded.pid, daemonUsage(guarded.pid).fds, 2000);
  guardedBaseline = daemonUsage(guarded.pid);
});

after(async () => {
  if (guarded) {
    const exit = await guarded.finish(15_000).catch((error) => error as Error);
    if (exit instanceof Error) guarded.kill();
  }
  if (server) {
    const exit = await server.finish(15_000).catch((error) => error as Error);
    if (exit instanceof Error) server.kill();
  }
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

async function goodClient(): Promise<void> {
  const answer = await replayRecorded(target, clientStream);
  assert.ok(answer.equals(quietAnswer), `the good client got ${answer.length} bytes, not the quiet run's ${quietAnswer.length} bytes`);
}

/** What every case must leave behind: the daemon up and serving, fds at the baseline, RSS bounded. */
async function checkDaemon(what: string): Promise<void> {
  assert.ok(server.proc.running, `the daemon died (${what})`);
  await goodClient();
  await fdsBackTo(server.pid, baseline.fds, WAIT_MS);
  const now = daemonUsage(server.pid);
  assert.ok(
    now.rssKiB - baseline.rssKiB <= RSS_BOUND_KIB,
    `${what}: the daemon's RSS grew from ${baseline.rssKiB} to ${now.rssKiB} KiB (bound ${RSS_BOUND_KIB} KiB)`,
  );
}

async function waitForLog(offset: number, pattern: RegExp, timeoutMs: number): Promise<string> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const text = logSince(offset);
    const line = text.split('\n').find((l) => pattern.test(l));
    if (line) return line;
    if (performance.now() > deadline) assert.fail(`no log line matching ${pattern} within ${timeoutMs} ms; log since the case:\n${text.slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function attackCase(attack: Attack) {
  test(`hostile: ${attack.name}`, async () => {
    const offset = logSize();
    await Promise.all([goodClient(), attack.run(target)]);
    const line = await waitForLog(offset, attack.expectLog, WAIT_MS);
    assert.ok(line.length < 600, `one clear line, not ${line.length} characters`);
    await checkDaemon(attack.name);
  });
}

for (const attack of ATTACKS) attackCase(attack);

/**
 * What the daemon's log says of the connection from 127.0.0.1:port: a session, refused, or nothing yet. The last
 * line naming the port counts (an earlier connection, closed by now, may have had the same port).
 */
function judgement(log: string, port: number): 'accepted' | 'refused' | undefined {
  const peer = `"peer":"127.0.0.1:${port}"`;
  let verdict: 'accepted' | 'refused' | undefined;
  for (const line of log.split('\n')) {
    if (!line.includes(peer)) continue;
    if (line.includes('Accepted page-server session')) verdict = 'accepted';
    else if (line.includes('connection refused:')) verdict = 'refused';
  }
  return verdict;
}

test(`hostile: 1000 idle connections; the good client still works; --max-sessions ${MAX_SESSIONS} refuses more; --idle-timeout drops them`, async () => {
  const offset = logSize();
  const idle = await idleConnections(target, 1000);
  const closedByServer = idle.map((socket) => new Promise<void>((resolve) => socket.once('close', () => resolve())));
  for (const socket of idle) socket.on('error', () => undefined);
  const extra: Awaited<ReturnType<typeof connectRogueClient>>[] = [];
  try {
    // A connect completes in the kernel's backlog: the daemon holds a connection once it has accepted it.
    await pollFor('the daemon to hold the idle connections', WAIT_MS, () => (daemonUsage(server.pid).fds >= baseline.fds + 1000 ? true : undefined), 50);
    assert.ok(daemonUsage(server.pid).fds >= baseline.fds + 1000, 'the idle connections are held');
    await goodClient();
    // 1000 idle + at most a few sessions in flight: 20 more connections exceed the limit. Each is judged by the
    // daemon's own record of it (a session, or refused with its address), not by how soon it happens to close.
    const extraOffset = logSize();
    // Each one's port is read as soon as it is connected: once the daemon has closed it, the socket has none.
    const ports: number[] = [];
    for (let i = 0; i < 20; i++) {
      extra.push(await connectRogueClient(target.host, target.port, 'silent', 24));
      ports.push(extra[i].socket.localPort!);
    }
    const verdicts = await pollFor('the daemon to accept or refuse each of the 20', WAIT_MS, () => {
      const log = logSince(extraOffset);
      const all = ports.map((port) => judgement(log, port));
      return all.every((v) => v !== undefined) ? all : undefined;
    }, 50).catch((error: Error) => {
      const log = logSince(extraOffset);
      const missing = ports.filter((port) => judgement(log, port) === undefined);
      const lines = log.split('\n');
      throw new Error(
        `${error.message}: no verdict for ports ${missing.join(', ')} of ${ports.join(', ')}; ${lines.length} log lines since, ` +
          `${lines.filter((l) => l.includes('Accepted page-server session')).length} accepted, ` +
          `${lines.filter((l) => l.includes('connection refused:')).length} refused; first lines:\n${lines.slice(0, 5).join('\n')}`,
      );
    });
    const refusedOnes = extra.filter((_, i) => verdicts[i] === 'refused');
    // A refused connection is closed by the daemon.
    await Promise.race([
      Promise.all(refusedOnes.map((client) => client.closedByServer)),
      new Promise((_, reject) => setTimeout(() => reject(new Error('a refused connection was never closed by the daemon')), WAIT_MS)),
    ]);
    const refused = refusedOnes.filter((client) => client.closed && client.received === 0).length;
    assert.ok(refused >= 10, `only ${refused} of 20 connections over the limit were refused`);
    await waitForLog(offset, /connection refused: 10\d\d sessions already open \(--max-sessions\)/, WAIT_MS);
    // The idle timeout closes every one of them.
    const started = performance.now();
    await Promise.race([
      Promise.all(closedByServer),
      new Promise((_, reject) => setTimeout(() => reject(new Error(`idle connections still open ${IDLE_S + 5} s later`)), (IDLE_S + 5) * 1000)),
    ]);
    assert.ok(performance.now() - started < (IDLE_S + 5) * 1000);
    await waitForLog(offset, new RegExp(`idle for ${IDLE_S} s: the peer sent no request and no reply was pending; session dropped \\(--idle-timeout\\)`), WAIT_MS);
  } finally {
    for (const socket of idle) socket.destroy();
    for (const client of extra) client.destroy();
  }
  await checkDaemon('1000 idle connections');
});

test('hostile: a peer reading one byte per second is dropped after --stall-timeout; others unharmed', async () => {
  const offset = logSize();
  const stop = new AbortController();
  const started = performance.now();
  const slow = slowReader(SERVED, target, (STALL_S + 20) * 1000, stop.signal);
  await goodClient();
  await goodClient();
  await waitForLog(offset, new RegExp(`the peer read only \\d+ bytes in ${STALL_S} s while a reply was pending; session dropped \\(--stall-timeout\\)`), (STALL_S + 15) * 1000);
  const droppedAfterMs = performance.now() - started;
  await goodClient();
  // Dropped on the server's side while the peer still "reads": its session and fd are gone.
  await fdsBackTo(server.pid, baseline.fds, WAIT_MS);
  stop.abort();
  const { bytesRead } = await slow;
  assert.ok(bytesRead >= 1, 'the slow peer read its bytes');
  assert.ok(droppedAfterMs < (STALL_S + 15) * 1000);
  await checkDaemon('slow reader');
});

test('hostile: an upload that sends ADD_F and then goes silent is dropped after --idle-timeout (its staging memory freed)', async () => {
  const offset = logSize();
  const { encodeHeader } = await import('../harness/clients.js');
  const dstId = (998n << 8n) | 1n;
  const request = Buffer.concat([
    encodeHeader(24, 4, 0, 0n, dstId),
    encodeHeader(24, (6 << 16) | 6, 256, 0x7f0000000000n, dstId),
    Buffer.alloc(8192, 1),
  ]);
  const [, silent] = await Promise.all([goodClient(), rawSession(target, request, { keepOpen: true, timeoutMs: (IDLE_S + 8) * 1000 })]);
  assert.ok(silent.closedByServer, 'the silent upload was never dropped');
  await waitForLog(offset, new RegExp(`Upload failed: idle for ${IDLE_S} s: the peer sent nothing more`), WAIT_MS);
  await checkDaemon('silent upload');
});

test('hostile: every attack at once, 5 rounds, with good clients throughout', async (t) => {
  for (let round = 0; round < 5; round++) {
    await Promise.all([goodClient(), goodClient(), ...ATTACKS.map((attack) => attack.run(target))]);
  }
  await checkDaemon('all attacks at once');
  const now = daemonUsage(server.pid);
  t.diagnostic(`daemon after the suite: RSS ${baseline.rssKiB} -> ${now.rssKiB} KiB, fds ${baseline.fds} -> ${now.fds}`);
});

/** One metric's value from the guarded server's /metrics. */
async function guardedMetric(name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${guardedMetrics}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  assert.ok(line, `no ${name} in /metrics`);
  return Number(line.split(' ')[1]);
}

function guardedLog(offset = 0): string {
  return fs.readFileSync(guarded.logFile).subarray(offset).toString('utf8');
}

test('hostile (allow-lists): a plain listener on every address warns once at start that the memory is readable by any peer', () => {
  const warnings = guardedLog().split('\n').filter((l) => l.includes('without --tls'));
  assert.equal(warnings.length, 1, warnings.join('\n'));
  assert.match(
    warnings[0],
    /listening on \[::\]:\d+ without --tls: checkpoint memory .* crosses the network in clear, readable by anyone on the path and by any peer that --allow-from & co admit; run with --tls/,
  );
});

for (const attack of ACCESS_ATTACKS) {
  test(`hostile (allow-lists): ${attack.name}`, async () => {
    const offset = fs.statSync(guarded.logFile).size;
    const refusedBefore = await guardedMetric('lazyd_page_server_access_refused_total');
    await Promise.all([replayRecorded(guardedTarget, clientStream), attack.run(guardedTarget)]);
    const deadline = performance.now() + WAIT_MS;
    let line: string | undefined;
    while (!(line = guardedLog(offset).split('\n').find((l) => attack.expectLog.test(l)))) {
      if (performance.now() > deadline) assert.fail(`no log line matching ${attack.expectLog}; log since:\n${guardedLog(offset).slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(line.length < 600, `one clear line, not ${line.length} characters`);
    await pollFor('the refusal counted', WAIT_MS, async () => ((await guardedMetric('lazyd_page_server_access_refused_total')) === refusedBefore + 1 ? true : undefined), 50);
    assert.equal(await guardedMetric('lazyd_staging_bytes'), 0, 'nothing of a refused upload is held');
    assert.ok((await replayRecorded(guardedTarget, clientStream)).equals(quietAnswer), 'the allowed host is still served the quiet bytes');
    await fdsBackTo(guarded.pid, guardedBaseline.fds, WAIT_MS);
  });
}

test('hostile (allow-lists): 300 connections from a refused host: each reset unread, counted, logged once; an allowed IPv6 peer (::1) served meanwhile', async () => {
  const offset = fs.statSync(guarded.logFile).size;
  const refusedBefore = await guardedMetric('lazyd_page_server_access_refused_total');
  const sessionsBefore = await guardedMetric('lazyd_page_server_sessions_total');
  const receivedBefore = await guardedMetric('lazyd_page_server_received_bytes_total');
  const flood = async () => {
    for (let i = 0; i < 30; i++) {
      const result = await rawSession(guardedTarget, Buffer.concat([clientStream, Buffer.alloc(4096, 1)]), { from: HOSTS.refused });
      assert.ok(result.closedByServer && result.received.length === 0, 'a refused connection is closed unanswered');
    }
  };
  const [answer] = await Promise.all([replayRecorded({ host: '::1', port: guarded.port }, clientStream), ...Array.from({ length: 10 }, flood)]);
  assert.ok(answer.equals(quietAnswer), 'the IPv6 peer ::1 (in --allow-fetch-from) got the quiet bytes');
  await pollFor('300 refusals counted', WAIT_MS, async () => ((await guardedMetric('lazyd_page_server_access_refused_total')) === refusedBefore + 300 ? true : undefined), 50);
  // Refused before a byte was read: no session, not one byte received from the 300 (the ::1 client's are).
  assert.equal(await guardedMetric('lazyd_page_server_sessions_total'), sessionsBefore + 1);
  assert.equal(await guardedMetric('lazyd_page_server_received_bytes_total'), receivedBefore + clientStream.length);
  // Logged at most once a minute per host: this host's line was logged by its first case already.
  const lines = guardedLog(offset).split('\n').filter((l) => l.includes(`connection from ${HOSTS.refused} refused`));
  assert.ok(lines.length <= 1, `${lines.length} lines for one refused host within a minute`);
  assert.ok(guarded.proc.running, 'the guarded daemon is up');
  await fdsBackTo(guarded.pid, guardedBaseline.fds, WAIT_MS);
  const now = daemonUsage(guarded.pid);
  assert.ok(now.rssKiB - guardedBaseline.rssKiB <= RSS_BOUND_KIB, `RSS grew from ${guardedBaseline.rssKiB} to ${now.rssKiB} KiB`);
});
