// End-to-end: who may reach lazyd's page server (README "Security"), with real CRIU 4.1.1 and 4.2.1 and the
// self-verifying workload, on two "hosts" (network namespaces, test/harness/netns.ts): the source 10.77.0.1 runs
// `lazyd --page-server` with staging, allowed to upload from itself (10.77.0.1) and to be fetched from by the
// destination (10.77.0.2) only; 10.77.0.3, a third address on the destination's link, is in no list.
//   - the plain listener off loopback warns at start, and the staging dir the test made 0755 is set to 0700;
//   - `criu dump --page-server` from the source is staged; its images are 0600 (--persist writes the pages too);
//   - the same dump from the destination (fetch-only) is refused at OPEN2: the dump fails and the workload,
//     resumed by CRIU, goes on verifying its memory;
//   - a GET from the source (upload-only) is refused; a client from 10.77.0.3 is reset before a byte is read,
//     three times, and logged once;
//   - a real lazy restore on the destination (lazyd lazy-pages with 4.1.1, criu lazy-pages with 4.2.1) passes:
//     every lazy page installed, the restored workload verifies its own memory.
// And, in this process: a released checkpoint's memfd is closed when its last bound session ends (not before),
// its images are removed, and `lazyd staging list` shows ids, pids and sizes, never page bytes.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import pino from 'pino';
import {
  buildWorkload,
  checkpointWorkload,
  CRIU_VERSIONS,
  E2E_TIMEOUTS as timeouts,
  findCriu,
  killWorkload,
  lazydBin,
  lazyRestore,
  logOffset,
  requireHost,
  runCriu,
  startPageServer,
  startWorkload,
  testProgress,
  waitForAllPasses,
  waitForPasses,
  withRunDir,
  type DaemonKind,
} from '../harness/index.js';
import { createTwoHosts, DESTINATION_ADDRESS, SOURCE_ADDRESS } from '../harness/netns.js';
import { getRequest } from '../harness/hostile.js';
import { rawSessionIn } from '../harness/netns-client.js';
import { PageServerService } from '../../src/page-server/service.js';
import { startStagingControl } from '../../src/staging/control.js';
import { readFixture, sessionFacts } from '../fixtures/fixtures.js';

const TEST_TIMEOUT_MS = 150_000;
const THIRD_ADDRESS = '10.77.0.3';
const MIB = 8;

/** The daemon's log from a byte offset. */
function logSince(file: string, offset = 0): string {
  return fs.readFileSync(file).subarray(offset).toString('utf8');
}

async function waitForLine(file: string, pattern: RegExp, ms = 20_000): Promise<string> {
  const deadline = performance.now() + ms;
  for (;;) {
    const line = logSince(file).split('\n').find((l) => pattern.test(l));
    if (line) return line;
    if (performance.now() > deadline) assert.fail(`no line matching ${pattern} in ${file}:\n${logSince(file).slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const mode = (file: string) => fs.statSync(file).mode & 0o7777;

for (const version of CRIU_VERSIONS) {
  const daemon: DaemonKind = version === '4.1.1' ? 'lazyd' : 'criu';
  test(`CRIU ${version}: allow-lists across two hosts: upload from the source, a refused upload from the fetch-only destination (its tasks resumed), a refused fetch from the upload-only source, a third host reset unread, and a real lazy restore on the destination (${daemon} lazy-pages)`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    const hosts = createTwoHosts({ id: `acc${process.pid % 10000}${version === '4.1.1' ? 'a' : 'b'}` });
    try {
      hosts.addAddress('destination', THIRD_ADDRESS);
      await withRunDir(`${version}-access`, async (runDir, onCleanup) => {
        const stagingDir = path.join(runDir, 'src');
        fs.mkdirSync(stagingDir, { recursive: true, mode: 0o755 });
        fs.chmodSync(stagingDir, 0o755);
        const lazyd = await startPageServer({
          kind: 'lazyd',
          imagesDir: stagingDir,
          address: SOURCE_ADDRESS,
          port: 20000 + Math.floor(Math.random() * 40000),
          netns: hosts.source,
          extraArgs: ['--persist', '--allow-upload-from', `${SOURCE_ADDRESS}/32`, '--allow-fetch-from', DESTINATION_ADDRESS],
        });
        onCleanup(() => lazyd.kill());
        // At start: the warning for a plain listener off loopback, and the staging dir made private.
        assert.match(
          await waitForLine(lazyd.logFile, /without --tls/),
          /listening on 10\.77\.0\.1:\d+ without --tls: checkpoint memory .*crosses the network in clear.*run with --tls/,
        );
        assert.match(await waitForLine(lazyd.logFile, /Staging directory/), /was mode 0755: other users could enter it .*set it to 0700/);
        assert.equal(mode(stagingDir), 0o700);

        // The upload from the source host (allowed to upload).
        const checkpoint = await checkpointWorkload({
          criu,
          runDir,
          workload: { mib: MIB },
          timeouts,
          progress: testProgress(t),
          onCleanup,
          netns: hosts.source,
          upload: { address: SOURCE_ADDRESS, port: lazyd.port },
          requireLazy: false,
        });
        const staged = fs.readdirSync(stagingDir).filter((f) => /^(pagemap|pages)-.*\.img$/.test(f) && fs.statSync(path.join(stagingDir, f)).uid === 0);
        const written = staged.filter((f) => /^pages-(\d+)\.img$/.test(f) && Number(/\d+/.exec(f)![0]) >= 0x10001);
        assert.ok(written.length >= 1, `lazyd's pages images: ${staged.join(', ')}`);
        for (const file of [...written, 'pagemap-1.img']) assert.equal(mode(path.join(stagingDir, file)), 0o600, `${file} is 0600`);
        const offset = fs.statSync(lazyd.logFile).size;

        // The same dump from the destination, which may fetch but not upload: refused, the dump fails, CRIU
        // resumes the workload, which goes on verifying its memory.
        const binary = await buildWorkload();
        const otherDir = path.join(runDir, 'w-dst');
        const other = await startWorkload(binary, otherDir, { mib: 4 }, timeouts.readyMs, hosts.destination);
        onCleanup(() => killWorkload(other));
        await waitForAllPasses(otherDir, 0, 1, timeouts.passesMs, { pid: other.pid });
        const otherImages = path.join(runDir, 'dst-dump');
        fs.mkdirSync(otherImages);
        await assert.rejects(
          runCriu(criu, 'dump', ['-t', String(other.pid), '-D', otherImages, '-v4', '-o', 'dump.log', '--page-server', '--address', SOURCE_ADDRESS, '--port', String(lazyd.port)], timeouts.dumpMs, {
            imagesDir: otherImages,
            netns: hosts.destination,
          }),
        );
        assert.match(
          await waitForLine(lazyd.logFile, /upload refused/),
          /Page-server session failed: upload refused: 10\.77\.0\.2 may not upload here: no --allow-from or --allow-upload-from block covers it; session dropped/,
        );
        assert.ok(other.unshare.running, 'the refused dump left the workload running');
        await waitForPasses(otherDir, 2, timeouts.passesMs, { fromOffset: logOffset(otherDir), pid: other.pid });

        // A fetch from the source, which may upload but not fetch; a client from a third host, reset unread.
        const get = getRequest(version === '4.1.1' ? 24 : 32, 1, 0x7f0000000000n, 1n);
        const fromSource = await rawSessionIn(hosts.source, { host: SOURCE_ADDRESS, port: lazyd.port, request: get });
        assert.ok(fromSource.closedByServer && fromSource.received.length === 0, 'the upload-only host is served nothing');
        assert.match(await waitForLine(lazyd.logFile, /fetch refused/), /fetch refused: 10\.77\.0\.1 may not fetch here: no --allow-from or --allow-fetch-from block covers it/);
        for (let i = 0; i < 3; i++) {
          const third = await rawSessionIn(hosts.destination, { host: SOURCE_ADDRESS, port: lazyd.port, from: THIRD_ADDRESS, request: get });
          assert.ok(third.closedByServer && third.received.length === 0, 'the third host is served nothing');
        }
        await waitForLine(lazyd.logFile, /connection from 10\.77\.0\.3 refused/);
        const refusals = logSince(lazyd.logFile, offset).split('\n').filter((l) => l.includes('connection from 10.77.0.3 refused'));
        assert.equal(refusals.length, 1, `one line for three refused connections: ${refusals.join('\n')}`);
        assert.doesNotMatch(logSince(lazyd.logFile, offset), /Accepted page-server session.*10\.77\.0\.3/, 'never accepted as a session');

        // The real restore from the destination (allowed to fetch).
        const restored = await lazyRestore({
          checkpoint,
          server: { address: SOURCE_ADDRESS, port: lazyd.port },
          daemon,
          netns: hosts.destination,
          progress: testProgress(t),
          onCleanup,
          timeouts,
        });
        t.diagnostic(`restored on the destination: ${restored.lazyPages.copied}/${restored.lazyPages.total} lazy pages; passes ${restored.passes[0].length}`);
        assert.equal(restored.lazyPages.copied, restored.lazyPages.total, 'every lazy page installed');
        assert.ok(restored.passes[0].every((p) => p.ok === checkpoint.dataPages && p.bad === 0), 'the restored workload verified its memory');
        assert.ok(lazyd.proc.running, 'the page server is up');
      });
    } finally {
      hosts.destroy();
    }
  });
}

function memfdsOfThisProcess(): number {
  let count = 0;
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try {
      if (fs.readlinkSync(`/proc/self/fd/${fd}`).includes('memfd:lazyd-staged-pages')) count++;
    } catch {
      // closed meanwhile
    }
  }
  return count;
}

test('at rest and after use: a released checkpoint keeps its memfd only while a bound session lasts, its images are removed, and staging list shows no page bytes', { timeout: 60_000 }, async () => {
  await withRunDir('access-at-rest', async (runDir, onCleanup) => {
    const version = '4.1.1';
    const stagingDir = path.join(runDir, 'src');
    fs.mkdirSync(stagingDir, { recursive: true });
    const lines: { msg: string }[] = [];
    const logger = pino({ level: 'debug', base: undefined }, { write: (line: string) => lines.push(JSON.parse(line)) } as pino.DestinationStream);
    const service = await PageServerService.start({ imagesDir: stagingDir, address: '127.0.0.1', port: 0, logger, staging: { dir: stagingDir } });
    const socketPath = path.join(runDir, 'control.sock');
    const control = await startStagingControl(socketPath, service, logger);
    onCleanup(async () => {
      await control.close();
      service.stop(0);
      await service.stopped;
    });
    const memfdsBefore = memfdsOfThisProcess();
    // CRIU's own upload stream, recorded (test/fixtures), replayed whole.
    const stream = readFixture(version, 'upload', 'client-to-server.bin');
    const replies = readFixture(version, 'upload', 'server-to-client.bin');
    await new Promise<void>((resolve, reject) => {
      const socket = net.connect(service.port, '127.0.0.1', () => socket.write(stream));
      let got = 0;
      socket.on('data', (d) => {
        got += d.length;
        if (got >= replies.length) socket.end();
      });
      socket.on('close', () => resolve());
      socket.on('error', reject);
    });
    for (let i = 0; service.stagedCheckpoints().length === 0; i++) {
      assert.ok(i < 1000, 'the upload was never staged');
      await new Promise((r) => setTimeout(r, 20));
    }
    const [checkpoint] = service.stagedCheckpoints();
    assert.ok(checkpoint.files.length >= 2);
    for (const file of checkpoint.files) assert.equal(mode(file), 0o600, `${file} is 0600`);
    assert.equal(memfdsOfThisProcess(), memfdsBefore + 1, 'the staged pages are in one memfd');

    // `lazyd staging list`: ids, pids, sizes, counts and times; no page bytes (nothing of the memfd's).
    const run = (...args: string[]) => promisify(execFile)(process.execPath, [lazydBin(), 'staging', 'list', ...args, '--control-socket', socketPath]);
    const listed = JSON.parse((await run('--json')).stdout) as Record<string, unknown>[];
    assert.equal(listed.length, 1);
    assert.deepEqual(Object.keys(listed[0]).sort(), ['bytes', 'id', 'pids', 'restores', 'stagedAt']);
    const text = (await run()).stdout;
    assert.match(text, /^#\d+ +pids \d+ +[\d.]+ [KMG]iB +0 restores +staged \S+\n$/);
    const facts = sessionFacts(version, 'upload');
    assert.ok(facts, 'the recording has its facts');
    for (const output of [text, JSON.stringify(listed)]) {
      assert.ok(output.length < 400, `list output is a summary (${output.length} bytes)`);
      assert.match(output, /^[\x20-\x7e\n]*$/, 'printable text only');
    }

    // A restore bound to it (a GET answered, the connection kept open), then the release.
    const pid = facts.workload.ns_pid;
    const lazyEntry = facts.pagemap.entries[facts.workload.data_area.entry_index]!;
    const bound = net.connect(service.port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      bound.once('connect', () => bound.write(getRequest(24, 1, BigInt(lazyEntry.vaddr), BigInt(pid))));
      bound.once('data', () => resolve());
      bound.once('error', reject);
    });
    await service.releaseAndWait(checkpoint.id, 'released by the test');
    for (const file of checkpoint.files) assert.ok(!fs.existsSync(file), `${file} removed (no --persist)`);
    assert.equal(memfdsOfThisProcess(), memfdsBefore + 1, 'the bound session keeps the memory until it ends');
    assert.ok(service.stats().stagingBytes > 0);
    bound.destroy();
    for (let i = 0; memfdsOfThisProcess() !== memfdsBefore || service.stats().stagingBytes !== 0; i++) {
      assert.ok(i < 1000, `the memfd is still open after the last session ended (${service.stats().stagingBytes} bytes charged)`);
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(lines.some((l) => /released: released by the test; .*removed the \d+ images lazyd wrote for it/.test(l.msg)));
  });
});
