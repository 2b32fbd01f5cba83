// End-to-end: the lazyd link (docs/protocol.md §7, README "The lazyd link"), with real CRIU 4.1.1 and 4.2.1.
// `criu dump --page-server` uploads a self-verifying workload into lazyd's staging page server (in this process),
// which writes lazyd-link.json (mode 0600, a random per-checkpoint token) beside the images. Through a recording
// TCP relay (test/harness/relay.ts):
//   - `lazyd lazy-pages` restores from a copy of the images: its session opens with HELLO, the server grants it
//     (bound to the checkpoint), and the workload verifies;
//   - `criu lazy-pages` restores from the same checkpoint: not one extension byte either way (its first bytes are
//     a CRIU GET, the replies CRIU's), and the workload verifies;
//   - `lazyd lazy-pages` from images without lazyd-link.json sends no HELLO;
//   - `lazyd lazy-pages` from stock `criu dump --lazy-pages` (whose images hold no lazyd-link.json): not one
//     extension byte either way, the dump ends with its CLOSE (exit 0), and the workload verifies.
// Then the binding: a HELLO with a token no checkpoint has is refused; a token-bound GET for a pid outside the
// checkpoint is refused; with requireLinkToken (--require-link-token) a stock GET is refused, a HELLO'd one served;
// each refusal counted in lazyd_page_server_access_refused_total.
// And feature checksum (§7.4), through a relay that flips one bit in a reply's page: flipped once, the page is
// fetched again, the workload verifies, lazyd_page_checksum_mismatches_total is 1 and the log has one line
// naming it; flipped every time, the restore fails by the failure policy (--on-failure kill) with one line naming
// the pid and the address, and the workload never logs a wrong byte: it is killed while it waits for the page;
// with --no-link-checksum the HELLO asks for bind only and no reply carries a trailer.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import {
  checkpointWorkload,
  CRIU_VERSIONS,
  E2E_TIMEOUTS as timeouts,
  findCriu,
  lazyRestore,
  logOffset,
  pollFor,
  processAlive,
  readLog,
  requireHost,
  startLazyRestore,
  startRelay,
  testProgress,
  withRunDir,
  type CriuVersion,
  type Proc,
} from '../harness/index.js';
import { readPagemap, PE_LAZY } from '../../src/images/index.js';
import { checksumScrape, CHECKSUM_METRIC, dataArea } from '../harness/link-checks.js';
import { LINK_FILE_NAME, readLinkCapability } from '../../src/link/capability-file.js';
import { startStaging, stagedDump, waitFor } from '../harness/link-staging.js';
import { decodeHeader, encodeGet, encodeHello, HELLO_MAGIC, LINK_FEATURE_BIND, LINK_FEATURE_CHECKSUM, LINK_FEATURE_PRIORITY, LINK_FEATURE_RESUME } from '../harness/wire.js';

const TEST_TIMEOUT_MS = 180_000;
const EACCES = 13;
const hello = (token: Buffer) => encodeHello(token);
const get = (version: CriuVersion, pid: number, vaddr: bigint) => encodeGet(version === '4.1.1' ? 24 : 32, pid, vaddr);

/** Sends bytes, half-closes, and returns all the server sent until it closed. */
function exchange(port: number, bytes: Buffer): Promise<Buffer> {
  return new Promise<Buffer>((resolve) => {
    const chunks: Buffer[] = [];
    const socket = net.connect(port, '127.0.0.1', () => socket.end(bytes));
    socket.on('data', (d) => chunks.push(d));
    socket.on('close', () => resolve(Buffer.concat(chunks)));
    socket.on('error', () => resolve(Buffer.concat(chunks)));
  });
}

/** The first lazy page of the staged pid's pagemap. */
async function firstLazyPage(stagingDir: string): Promise<{ pid: number; vaddr: bigint }> {
  const file = fs.readdirSync(stagingDir).find((f) => /^pagemap-\d+\.img$/.test(f))!;
  const pagemap = await readPagemap(path.join(stagingDir, file), { checkPages: false });
  const entry = pagemap.entries.find((e) => e.flags & PE_LAZY)!;
  return { pid: Number(/\d+/.exec(file)![0]), vaddr: BigInt(entry.vaddr) };
}

for (const version of CRIU_VERSIONS) {
  test(`CRIU ${version}: lazyd-link.json from staging; lazyd lazy-pages opens with HELLO, criu lazy-pages and a restore without the file see CRIU's bytes only`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-link`, async (runDir, onCleanup) => {
      const stagingDir = path.join(runDir, 'src');
      fs.mkdirSync(stagingDir, { recursive: true });
      const lazyd = await startStaging(stagingDir);
      onCleanup(async () => {
        lazyd.service.stop(0);
        await lazyd.service.stopped;
      });
      const checkpoint = await stagedDump(criu, runDir, stagingDir, lazyd, onCleanup);
      const file = path.join(stagingDir, LINK_FILE_NAME);
      assert.equal(fs.statSync(file).mode & 0o777, 0o600, 'lazyd-link.json is mode 0600');
      const capability = await readLinkCapability(stagingDir);
      assert.ok(capability, 'the staging page server wrote lazyd-link.json');
      assert.match(capability.token, /^[0-9a-f]{32}$/);
      assert.deepEqual(capability.features, ['bind', 'checksum', 'priority', 'resume']);
      await waitFor('the staged checkpoint', () => lazyd.service.stagedCheckpoints().length === 1);

      const relay = await startRelay(lazyd, { record: 4096 });
      onCleanup(() => relay.close());
      const verify = (name: string, restored: Awaited<ReturnType<typeof lazyRestore>>) => {
        assert.equal(restored.lazyPages.copied, restored.lazyPages.total, `${name}: every lazy page installed`);
        assert.equal(restored.passes[0][0].ok, checkpoint.dataPages, `${name}: the workload verified its pages`);
      };

      // lazyd lazy-pages with the file: HELLO first, granted; then its second, priority connection (§7.5).
      verify('lazyd', await lazyRestore({ checkpoint, server: relay, daemon: 'lazyd', name: 'dst-lazyd', progress: testProgress(t), onCleanup, timeouts }));
      let sessions = relay.recorded();
      assert.equal(sessions.length, 2, 'the main connection and the priority one');
      const [linked, priority] = sessions;
      const main = LINK_FEATURE_BIND | LINK_FEATURE_CHECKSUM | LINK_FEATURE_RESUME;
      for (const [name, session, features] of [['main', linked, main], ['priority', priority, main | LINK_FEATURE_PRIORITY]] as const) {
        assert.equal(session['to-server'].readUInt32LE(0), HELLO_MAGIC, `${name}: lazyd lazy-pages opened with HELLO`);
        assert.equal(session['to-server'].subarray(16, 32).toString('hex'), capability.token, `${name}: with the file's token`);
        assert.equal(session['to-client'].readUInt32LE(0), HELLO_MAGIC, `${name}: the server answered the HELLO`);
        assert.equal(session['to-client'].readInt32LE(16), 0, `${name}: HELLO granted`);
        assert.equal(session['to-server'].readBigUInt64LE(8), features, `${name}: the features asked`);
        assert.equal(session['to-client'].readBigUInt64LE(8), features, `${name}: all granted`);
        assert.equal(session['to-client'].readBigUInt64LE(24), BigInt(capability.checkpoint), `${name}: bound to the checkpoint`);
      }
      assert.equal(linked['to-server'].readUInt32LE(32), 7, 'then CRIU GETs');
      // The demand faults went on the priority connection: GETs of at most the fault-around window (16 pages).
      const headerSize = version === '4.1.1' ? 24 : 32;
      assert.ok(priority['to-server'].length >= 32 + headerSize, 'the priority connection carried GETs');
      for (let at = 32; at + headerSize <= priority['to-server'].length; at += headerSize) {
        const h = decodeHeader(headerSize, priority['to-server'], at);
        if (h.cmd !== 7) break; // the CLOSE
        assert.ok(h.nrPages <= 16n, `a priority GET of ${h.nrPages} pages: a fault or its fault-around, never the drain`);
      }

      // criu lazy-pages: nothing new either way.
      verify('criu', await lazyRestore({ checkpoint, server: relay, daemon: 'criu', name: 'dst-criu', progress: testProgress(t), onCleanup, timeouts }));
      // lazyd lazy-pages from images without the file (copied, then removed before the daemon reads it).
      verify('lazyd, no file', await lazyRestore({
        checkpoint, server: relay, daemon: 'lazyd', name: 'dst-nofile', progress: testProgress(t), onCleanup, timeouts,
        onDaemonReady: (_proc, dstDir) => fs.rmSync(path.join(dstDir, LINK_FILE_NAME)),
      }));
      sessions = relay.recorded();
      assert.equal(sessions.length, 4);
      for (const [name, session] of [['criu lazy-pages', sessions[2]], ['lazyd lazy-pages without the file', sessions[3]]] as const) {
        assert.equal(session['to-server'].readUInt32LE(0), 7, `${name}: its first request is a CRIU GET`);
        assert.equal(session['to-server'].indexOf(Buffer.from([0x48, 0x4b, 0x5a, 0x4c])), -1, `${name}: no HELLO byte sent`);
        assert.notEqual(session['to-client'].readUInt32LE(0), HELLO_MAGIC, `${name}: no HELLO reply`);
        assert.equal(session['to-client'].readUInt32LE(0), 0x40006, `${name}: its first reply is ADD_F|PE_PRESENT`);
      }
      assert.equal(lazyd.service.accessRefused(), 0, 'nothing refused');
      // Three restores, each counted once: the priority connection's CLOSE is not a restore's end (checked again
      // below, once more sessions have come and gone).
      await waitFor('three completed restores', () => lazyd.service.stagedCheckpoints()[0]?.restores === 3);

      // The binding: a token no checkpoint has; then a token-bound GET outside the checkpoint.
      const { pid, vaddr } = await firstLazyPage(stagingDir);
      const wrong = await exchange(lazyd.port, Buffer.concat([hello(Buffer.alloc(16, 0x42)), get(version, pid, vaddr)]));
      assert.equal(wrong.length, 32, 'only the refusing HELLO reply');
      assert.equal(wrong.readInt32LE(16), -EACCES, 'unknown token: -EACCES');
      const token = Buffer.from(capability.token, 'hex');
      const outside = await exchange(lazyd.port, Buffer.concat([hello(token), get(version, pid + 100_000, vaddr)]));
      // No page for the other pid; the grant itself gets out only if the GET was read after it was sent.
      assert.ok(outside.length === 0 || (outside.length === 32 && outside.readInt32LE(16) === 0), `${outside.length} bytes`);
      const inside = await exchange(lazyd.port, Buffer.concat([hello(token), get(version, pid, vaddr)]));
      assert.equal(inside.length, 32 + (version === '4.1.1' ? 24 : 32) + 4096, 'a GET inside the checkpoint is served');
      await waitFor('the refusals counted', () => lazyd.service.accessRefused() === 2);
      assert.equal(lazyd.service.stagedCheckpoints()[0].restores, 3, 'still three completed restores');
    });
  });

  test(`CRIU ${version}: --require-link-token: a stock GET is refused and counted, lazyd lazy-pages with lazyd-link.json restores`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-link-required`, async (runDir, onCleanup) => {
      const stagingDir = path.join(runDir, 'src');
      fs.mkdirSync(stagingDir, { recursive: true });
      const lazyd = await startStaging(stagingDir, true);
      onCleanup(async () => {
        lazyd.service.stop(0);
        await lazyd.service.stopped;
      });
      const checkpoint = await stagedDump(criu, runDir, stagingDir, lazyd, onCleanup);
      await waitFor('the staged checkpoint', () => lazyd.service.stagedCheckpoints().length === 1);
      const { pid, vaddr } = await firstLazyPage(stagingDir);
      const stock = await exchange(lazyd.port, get(version, pid, vaddr));
      assert.equal(stock.length, 0, 'a stock GET gets nothing');
      await waitFor('the refusal counted', () => lazyd.service.accessRefused() === 1);
      // The counter moves on the engine thread; the log line arrives through the event loop after it.
      await waitFor('the log names the flag', () => lazyd.lines.some((l) => l.msg.includes('--require-link-token')));

      const restored = await lazyRestore({ checkpoint, server: lazyd, daemon: 'lazyd', name: 'dst-lazyd', progress: testProgress(t), onCleanup, timeouts });
      assert.equal(restored.lazyPages.copied, restored.lazyPages.total, 'every lazy page installed');
      assert.equal(restored.passes[0][0].ok, checkpoint.dataPages, 'the workload verified its pages');
      assert.equal(lazyd.service.accessRefused(), 1, 'the HELLO session was not refused');
    });
  });

  test(`CRIU ${version}: stock criu dump --lazy-pages -> lazyd lazy-pages: no lazyd-link.json, no extension byte either way`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-link-stock-src`, async (runDir, onCleanup) => {
      const checkpoint = await checkpointWorkload({ criu, runDir, workload: { mib: 16 }, progress: testProgress(t), onCleanup, timeouts, lazyDump: { address: '127.0.0.1' } });
      const dump = checkpoint.dumpServer!;
      onCleanup(() => dump.kill());
      assert.ok(!fs.existsSync(path.join(checkpoint.imagesDir, LINK_FILE_NAME)), 'criu dump writes no lazyd-link.json');
      const relay = await startRelay(dump, { record: 4096 });
      onCleanup(() => relay.close());
      const restored = await lazyRestore({ checkpoint, server: relay, daemon: 'lazyd', name: 'dst-lazyd', progress: testProgress(t), onCleanup, timeouts });
      assert.equal(restored.lazyPages.copied, restored.lazyPages.total, 'every lazy page installed');
      assert.equal(restored.passes[0][0].ok, checkpoint.dataPages, 'the workload verified its pages');
      const exit = await dump.finish(timeouts.dumpMs);
      assert.equal(exit.code, 0, 'criu dump counted the lazy transfer as done');
      const sessions = relay.recorded();
      assert.equal(sessions.length, 1);
      const [session] = sessions;
      assert.equal(session['to-server'].readUInt32LE(0), 7, 'its first request is a CRIU GET');
      assert.equal(session['to-server'].indexOf(Buffer.from([0x48, 0x4b, 0x5a, 0x4c])), -1, 'no HELLO byte sent');
      assert.equal(session['to-client'].readUInt32LE(0), 0x40006, 'its first reply is ADD_F|PE_PRESENT');
    });
  });
}




for (const version of CRIU_VERSIONS) {
  test(`CRIU ${version}: feature checksum: a bit flipped once is fetched again and counted; flipped every time, the restore fails and nothing wrong is installed`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    const format = version === '4.1.1' ? 24 : 32;
    await withRunDir(`${version}-link-checksum`, async (runDir, onCleanup) => {
      const stagingDir = path.join(runDir, 'src');
      fs.mkdirSync(stagingDir, { recursive: true });
      const lazyd = await startStaging(stagingDir);
      onCleanup(async () => {
        lazyd.service.stop(0);
        await lazyd.service.stopped;
      });
      const checkpoint = await stagedDump(criu, runDir, stagingDir, lazyd, onCleanup);
      await waitFor('the staged checkpoint', () => lazyd.service.stagedCheckpoints().length === 1);

      // The page flipped is the first one a reply carries of the workload's data area (the dump's largest lazy
      // entry): the restored workload reads and checks it, and criu restore itself never touches it.
      const data = await dataArea(stagingDir);

      // (a) Once: the page arrives with a bit flipped; its re-fetch passes.
      const once = await startRelay(lazyd, { flip: { format, range: data } });
      onCleanup(() => once.close());
      const scrape = checksumScrape();
      const restored = await lazyRestore({
        checkpoint, server: once, daemon: 'lazyd', name: 'dst-once', progress: testProgress(t), onCleanup, timeouts,
        daemonArgs: scrape.daemonArgs, onDaemonReady: scrape.onDaemonReady,
      });
      const mismatches = await scrape.mismatches();
      assert.equal(once.flipped.length, 1, 'one bit flipped');
      assert.equal(restored.lazyPages.copied, restored.lazyPages.total, 'every lazy page installed');
      assert.equal(restored.passes[0][0].ok, checkpoint.dataPages, 'the workload verified its pages');
      assert.equal(mismatches, 1, `${CHECKSUM_METRIC} after the restore`);
      const onceLog = fs.readFileSync(path.join(restored.dstDir, 'lazy-pages.log'), 'utf8');
      const { pid, vaddr } = once.flipped[0];
      const warned = onceLog.split('\n').filter((l) => l.includes('failed their checksum'));
      assert.equal(warned.length, 1, `one line about the mismatch:\n${warned.join('\n')}`);
      assert.match(warned[0], new RegExp(`pid ${pid} from 0x${vaddr.toString(16)} failed their checksum .*fetching them again`));

      // (b) Always: the page fails again when fetched again; the daemon ends the restore (--on-failure kill).
      const always = await startRelay(lazyd, { flip: { format, range: data, always: true } });
      onCleanup(() => always.close());
      // The daemon may fail before criu restore has finished with the resumed tasks (the page can be one of the
      // drain's): killed under it, criu restore then fails too.
      const offset = logOffset(checkpoint.workloadDir);
      let daemon: Proc | undefined;
      let dstDir = '';
      let restoredPid: number | undefined;
      let restoreError: Error | undefined;
      try {
        const started = await startLazyRestore({
          checkpoint, server: always, daemon: 'lazyd', name: 'dst-always', progress: testProgress(t), onCleanup, timeouts,
          onDaemonReady: (proc, dir) => {
            daemon = proc;
            dstDir = dir;
          },
        });
        restoredPid = started.restoredPid;
      } catch (error) {
        restoreError = error as Error;
      }
      assert.ok(daemon, restoreError?.message);
      const exit = await daemon.exited;
      assert.notEqual(exit.code, 0, 'lazyd lazy-pages failed');
      if (restoreError) assert.match(restoreError.message, /criu [\d.]+ restore failed/, 'only as a consequence');
      // The page flipped in its reply and in that reply's re-fetch; when a fault found it in flight in a drain
      // request, it was asked for once more on the priority connection, whose reply (and re-fetch) carry it too.
      const flippedAt = always.flipped.map((f) => f.vaddr);
      assert.ok(flippedAt.length >= 2 && flippedAt.length <= 4, `flipped in 2 to 4 replies, not ${flippedAt.length}`);
      assert.deepEqual(flippedAt, flippedAt.map(() => flippedAt[0]), 'the same page flipped in every reply and re-fetch');
      const bad = always.flipped[0];
      const alwaysLog = fs.readFileSync(path.join(dstDir, 'lazy-pages.log'), 'utf8');
      const failed = alwaysLog.split('\n').filter((l) => l.includes('lazy-pages failed'));
      assert.equal(failed.length, 1, alwaysLog);
      assert.match(failed[0], new RegExp(`pid ${bad.pid} from 0x${bad.vaddr.toString(16)} failed their checksum .* again when fetched a second time`));
      assert.match(failed[0], /killed the restored tasks/, 'the failure policy (--on-failure kill) applied');
      if (restoredPid !== undefined) {
        const pid = restoredPid;
        await pollFor('the restored workload killed', 20_000, () => (processAlive(pid) ? undefined : true));
      }
      const scan = readLog(checkpoint.workloadDir, offset);
      assert.deepEqual(scan.bad, [], 'the workload never read a wrong byte');
      assert.deepEqual(scan.errors, [], 'nor logged an error');

      // (c) --no-link-checksum: the HELLO asks for bind only, the replies carry no trailer, the workload verifies.
      const plain = await startRelay(lazyd, { record: 4 << 20 });
      onCleanup(() => plain.close());
      const unsummed = await lazyRestore({
        checkpoint, server: plain, daemon: 'lazyd', name: 'dst-plain', progress: testProgress(t), onCleanup, timeouts, daemonArgs: ['--no-link-checksum'],
      });
      assert.equal(unsummed.passes[0][0].ok, checkpoint.dataPages, '--no-link-checksum: the workload verified its pages');
      const [session] = plain.recorded();
      assert.equal(session['to-server'].readBigUInt64LE(8), LINK_FEATURE_BIND | LINK_FEATURE_RESUME, 'the HELLO asks for no checksum');
      assert.equal(session['to-client'].readBigUInt64LE(8), LINK_FEATURE_BIND | LINK_FEATURE_RESUME, 'bind and resume granted');
      const first = decodeHeader(format, session['to-client'], 32);
      assert.equal(session['to-client'].readUInt32LE(32 + format + Number(first.nrPages) * 4096), 0x40006, 'the next reply right after the pages: no trailer');
    });
  });
}
