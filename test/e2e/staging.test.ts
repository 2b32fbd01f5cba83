// End-to-end: diskless staging. Real CRIU (4.1.1 and 4.2.1) dumps a self-verifying workload with
// `criu dump --page-server --address 127.0.0.1 --port P -D DIR` into lazyd (the page server runs in this
// process, with staging into DIR); then `criu lazy-pages --page-server` or `lazyd lazy-pages --page-server`, with
// `criu restore --lazy-pages`, restore it from a copy of DIR, fetching the lazy pages from lazyd's memory,
// verified by the workload itself. Failures are made with a TCP relay between the peers (test/harness/relay.ts):
// a live dump whose connection is reset mid-upload or right after lazyd's CLOSE status, and a restore whose lazy
// daemon is killed mid-transfer.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import {
  buildWorkload,
  checkpointOf,
  CRIU_VERSIONS,
  dumpPageCounts,
  E2E_TIMEOUTS as timeouts,
  findCriu,
  HEADER_SIZE,
  instanceDirs,
  killWorkload,
  lastPassSum,
  lazydBin,
  lazyRestore,
  logOffset,
  nowNs,
  requireHost,
  PAGE_SIZE,
  PAGES_PER_MIB,
  runCriu,
  startLazyRestore,
  startRelay,
  startWorkload,
  testProgress,
  waitForAllPasses,
  waitForPasses,
  withRunDir,
  type Checkpoint,
  type Criu,
  type CriuVersion,
  type DaemonKind,
  type Workload,
} from '../harness/index.js';
import { PageServerService } from '../../src/page-server/service.js';
import type { StagingOptions } from '../../src/staging/stager.js';
import { startStagingControl } from '../../src/staging/control.js';
import { readPagemap, PE_LAZY, PE_PRESENT } from '../../src/images/index.js';
import { readFixture, sessionFacts } from '../fixtures/fixtures.js';
import { memoryLogger, type LogLine } from '../harness/memory-logger.js';

const TEST_TIMEOUT_MS = 120_000;

/** lazyd's page server with staging into stagingDir, in this process; with controlSocket, its control socket too. */
async function startStaging(stagingDir: string, staging: Partial<StagingOptions> = {}, controlSocket?: string) {
  const { logger, lines } = memoryLogger();
  const service = await PageServerService.start({
    imagesDir: stagingDir,
    address: '127.0.0.1',
    port: 0,
    logger,
    staging: { dir: stagingDir, ...staging },
  });
  const control = controlSocket ? await startStagingControl(controlSocket, service, logger) : undefined;
  const stop = async () => {
    await control?.close();
    service.stop(0);
    await service.stopped;
  };
  return { service, lines, address: '127.0.0.1', port: service.port, stop };
}

interface StagedDump {
  checkpoint: Checkpoint;
  workload: Workload;
}

/** Starts a workload and waits for a clean pass. */
async function startAndWarm(runDir: string, name: string, mib: number, onCleanup: (fn: () => unknown) => void) {
  const binary = await buildWorkload();
  const workloadDir = path.join(runDir, name);
  const workload = await startWorkload(binary, workloadDir, { mib }, timeouts.readyMs);
  onCleanup(() => killWorkload(workload));
  await waitForAllPasses(workloadDir, 0, 1, timeouts.passesMs, { pid: workload.pid });
  return { workload, workloadDir };
}

function dumpArgs(pid: number, imagesDir: string, port: number): string[] {
  return ['-t', String(pid), '-D', imagesDir, '-v4', '-o', 'dump.log', '--page-server', '--address', '127.0.0.1', '--port', String(port)];
}

/** Dumps a running workload with `criu dump --page-server` into lazyd (port); the dump kills it. */
async function dumpInto(criu: Criu, runDir: string, workload: Workload, workloadDir: string, stagingDir: string, port: number, mib: number): Promise<StagedDump> {
  const sums = instanceDirs(workloadDir, 0).map((dir) => lastPassSum(dir));
  const dumpStartNs = nowNs();
  const dump = await runCriu(criu, 'dump', dumpArgs(workload.pid, stagingDir, port), timeouts.dumpMs, { imagesDir: stagingDir });
  await workload.unshare.wait(10_000); // the dump killed the tree
  const checkpoint = checkpointOf({ criu, runDir, workloadDir, imagesDir: stagingDir, workload: { mib }, sums, dumpStartNs, dumpMs: dump.ms });
  return { checkpoint, workload };
}

type Staging = Awaited<ReturnType<typeof startStaging>>;

/**
 * A staged dump whose every task has lazy pages. criu's is_stack() quirk (see checkpointWorkload in the harness)
 * applies to uploads too: with a thread's stack pointer page-aligned at the dump, criu marks no page of that task
 * lazy (about one dump in a hundred of this two-thread workload; seen here once). Such a checkpoint cannot test a
 * lazy restore: it is released and `dump(attempt)` runs again, at most 3 times, each later attempt with a fresh
 * workload.
 */
async function withLazyPages(lazyd: Staging, stagingDir: string, dump: (attempt: number) => Promise<StagedDump>): Promise<StagedDump> {
  for (let attempt = 1; ; attempt++) {
    const dumped = await dump(attempt);
    const counts = await dumpPageCounts(stagingDir);
    const eager = counts.filter((c) => c.lazyPages === 0).map((c) => c.file);
    if (counts.length > 0 && eager.length === 0) return dumped;
    if (attempt >= 3) throw new Error(`criu dump into lazyd: ${eager.join(', ') || 'no pagemap'} without a lazy page, 3 times in a row`);
    await waitFor('the staged checkpoint', () => lazyd.service.stagedCheckpoints().length === 1);
    await lazyd.service.releaseAndWait(lazyd.service.stagedCheckpoints()[0].id, 'no lazy page in the dump (criu is_stack() quirk)');
    for (const name of stagedImages(stagingDir)) fs.rmSync(path.join(stagingDir, name));
    fs.rmSync(dumped.checkpoint.workloadDir, { recursive: true, force: true });
  }
}

/** Starts a workload, waits for a clean pass, and dumps it with `criu dump --page-server` into lazyd. */
async function stagedDump(criu: Criu, runDir: string, stagingDir: string, lazyd: Staging, onCleanup: (fn: () => unknown) => void, mib = 16): Promise<StagedDump> {
  return withLazyPages(lazyd, stagingDir, async () => {
    const { workload, workloadDir } = await startAndWarm(runDir, 'w', mib, onCleanup);
    return dumpInto(criu, runDir, workload, workloadDir, stagingDir, lazyd.port, mib);
  });
}

/** The reply bytes to a GET of the page at vaddr of `pid` (CRIU's header layout of `version`); empty when refused. */
function lazyGet(port: number, version: CriuVersion, pid: number, vaddr: bigint): Promise<Buffer> {
  const get = Buffer.alloc(version === '4.1.1' ? 24 : 32);
  get.writeUInt32LE(7, 0); // PS_IOV_GET
  if (get.length === 24) {
    get.writeUInt32LE(1, 4); // nr_pages
    get.writeBigUInt64LE(vaddr, 8);
    get.writeBigUInt64LE(BigInt(pid), 16);
  } else {
    get.writeBigUInt64LE(1n, 8); // nr_pages
    get.writeBigUInt64LE(vaddr, 16);
    get.writeBigUInt64LE(BigInt(pid), 24); // dst_id
  }
  return new Promise<Buffer>((resolve) => {
    const chunks: Buffer[] = [];
    const socket = net.connect(port, '127.0.0.1', () => socket.end(get));
    socket.on('data', (d) => chunks.push(d));
    socket.on('close', () => resolve(Buffer.concat(chunks)));
    socket.on('error', () => resolve(Buffer.concat(chunks)));
  });
}

interface ListedCheckpoint {
  id: number;
  pids: number[];
  restores: number;
}

/** `lazyd staging list --json` over the daemon's control socket (the real command line). */
async function stagingList(controlSocket: string): Promise<ListedCheckpoint[]> {
  const { stdout } = await promisify(execFile)(process.execPath, [lazydBin(), 'staging', 'list', '--json', '--control-socket', controlSocket]);
  return JSON.parse(stdout) as ListedCheckpoint[];
}

function stagedImages(dir: string): string[] {
  return fs.readdirSync(dir).filter((f) => /^(pagemap|pages)-/.test(f));
}

/** Waits for fn(), with a deadline that only a failure reaches (a loaded machine is slow, not wrong). */
async function waitFor(what: string, fn: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Waits for a log line that matches, and returns it. */
async function pollLine(lines: LogLine[], match: (line: LogLine) => boolean, ms = 20_000): Promise<LogLine> {
  let found: LogLine | undefined;
  await waitFor('a log line', () => (found = lines.find(match)) !== undefined, ms);
  return found!;
}



/** Where the relay cuts a live upload: a quarter of the 16 MiB workload's pages are through. */
const CUT_UPLOAD_BYTES = 4 * 1024 * 1024;
/** How fast the relay passes lazy pages to a restore that is to be killed: 16 MiB would take 4 s. */
const THROTTLED_BYTES_PER_SECOND = 4 * 1024 * 1024;

for (const version of CRIU_VERSIONS) {
  test(`CRIU ${version}: dump --page-server into lazyd, two lazy restores one after the other with lazyd lazy-pages (--staging-restores 2)`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-staging`, async (runDir, onCleanup) => {
      const stagingDir = path.join(runDir, 'src');
      fs.mkdirSync(stagingDir, { recursive: true });
      const lazyd = await startStaging(stagingDir, { restores: 2 });
      onCleanup(() => lazyd.stop());
      const { checkpoint, workload } = await stagedDump(criu, runDir, stagingDir, lazyd, onCleanup);
      t.diagnostic(`dump into lazyd took ${checkpoint.dumpMs.toFixed(0)} ms; original pid ${workload.pid} gone`);

      // The dump's directory is complete when the dump exits: lazyd's pagemap (PE_LAZY only) and pages images.
      const pagemap = await readPagemap(path.join(stagingDir, 'pagemap-1.img'), { checkPages: false });
      assert.ok(pagemap.pagesId >= 0x10001, `pages_id ${pagemap.pagesId} is in lazyd's range`);
      const lazy = pagemap.entries.filter((e) => e.flags & PE_LAZY);
      assert.ok(lazy.length > 0, 'the staged pagemap has lazy entries');
      assert.ok(lazy.every((e) => !(e.flags & PE_PRESENT)), 'lazy entries carry no data on disk');
      await waitFor('the staged checkpoint', () => lazyd.service.stagedCheckpoints().length === 1);
      const id = lazyd.service.stagedCheckpoints()[0].id;

      for (const name of ['dst-1', 'dst-2']) {
        const restored = await lazyRestore({ checkpoint, server: lazyd, daemon: 'lazyd', name, progress: testProgress(t), onCleanup, timeouts });
        t.diagnostic(`${name}: ${restored.lazydTotals?.line}; passes ${restored.passes[0].length}`);
        assert.equal(restored.lazyPages.copied, restored.lazyPages.total, 'every lazy page installed');
        assert.ok(restored.lazyPages.total >= checkpoint.dataPages);
        assert.ok(restored.lazydTotals, 'lazyd lazy-pages printed its summary line');
        assert.equal(restored.lazydTotals.installed, restored.lazydTotals.total, restored.lazydTotals.line);
        assert.equal(restored.passes[0][0].ok, checkpoint.dataPages);
      }
      // --staging-restores 2: released after the second completed restore.
      await waitFor('the release after 2 restores', () => lazyd.service.stagedCheckpoints().length === 0);
      await waitFor('the release logged', () => lazyd.lines.some((l) => l.msg.includes(`checkpoint #${id} released: after 2 completed restores`)));
      assert.ok(!lazyd.lines.some((l) => l.level >= 50), `no error: ${JSON.stringify(lazyd.lines.filter((l) => l.level >= 50))}`);
      await waitFor('staging memory freed', () => (lazyd.service.stats().stagingBytes ?? 1) === 0);
      lazyd.service.stop(1000);
      assert.equal(await lazyd.service.stopped, true);
    });
  });

  test(`CRIU ${version}: two restores of one staged checkpoint at the same time (criu and lazyd lazy-pages), each in its own pid and mount namespace`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-staging-twice`, async (runDir, onCleanup) => {
      const stagingDir = path.join(runDir, 'src');
      fs.mkdirSync(stagingDir, { recursive: true });
      const lazyd = await startStaging(stagingDir, { restores: 2 });
      onCleanup(() => lazyd.stop());
      const { checkpoint } = await stagedDump(criu, runDir, stagingDir, lazyd, onCleanup);
      await waitFor('the staged checkpoint', () => lazyd.service.stagedCheckpoints().length === 1);
      const id = lazyd.service.stagedCheckpoints()[0].id;
      // Both restored trees would write into the dump's workload dir. Each restore runs in a mount namespace of
      // its own with a copy of that dir (as the dump left it: criu checks the open files' sizes) bind-mounted
      // over it, so each workload logs into its own copy and is verified from it.
      const copies = ['w-1', 'w-2'].map((name) => {
        const dir = path.join(runDir, name);
        fs.cpSync(checkpoint.workloadDir, dir, { recursive: true });
        return dir;
      });
      const daemons: DaemonKind[] = ['criu', 'lazyd'];
      const originalLog = logOffset(checkpoint.workloadDir);
      const restores = await Promise.all(
        ['dst-1', 'dst-2'].map((name, i) =>
          lazyRestore({
            checkpoint,
            server: lazyd,
            daemon: daemons[i],
            name,
            privateWorkloadDir: copies[i],
            keepRunning: true,
            progress: (m) => t.diagnostic(`${name}: ${m}`),
            onCleanup,
            timeouts,
          }),
        ),
      );
      try {
        assert.notEqual(restores[0].restoredPid, restores[1].restoredPid);
        restores.forEach((restored, i) => {
          t.diagnostic(`dst-${i + 1} (${restored.daemon} lazy-pages): pid ${restored.restoredPid}, lazy pages ${restored.lazyPages.copied}/${restored.lazyPages.total}, passes ${restored.passes[0].length}`);
          assert.equal(restored.lazyPages.copied, restored.lazyPages.total, 'every lazy page installed');
          assert.ok(restored.lazyPages.total >= checkpoint.dataPages);
          assert.ok(restored.passes[0].length >= 2);
          assert.ok(restored.passes[0].every((p) => p.ok === checkpoint.dataPages && p.bad === 0));
        });
        // Both restored workloads are alive at once, each still logging clean passes into its own copy.
        const sessions = lazyd.lines.filter((l) => /^(Accepted page-server session|Page-server session finished)/.test(l.msg));
        const secondStart = sessions.filter((l) => l.msg.startsWith('Accepted')).at(-1);
        const firstEnd = sessions.find((l) => l.msg.startsWith('Page-server'));
        t.diagnostic(`lazy sessions overlapped in lazyd: ${firstEnd !== undefined && secondStart !== undefined && sessions.indexOf(secondStart) < sessions.indexOf(firstEnd)}`);
        const offsets = copies.map((dir) => logOffset(dir));
        for (const dir of copies) await waitForPasses(dir, 1, timeouts.passesMs, { fromOffset: offsets[copies.indexOf(dir)] });
        assert.equal(logOffset(checkpoint.workloadDir), originalLog, 'nothing written into the dump-time workload dir');
      } finally {
        await Promise.all(restores.map((r) => r.kill()));
      }
      await waitFor('the release after 2 restores', () => lazyd.service.stagedCheckpoints().length === 0);
      await waitFor('the release logged', () => lazyd.lines.some((l) => l.msg.includes(`checkpoint #${id} released: after 2 completed restores`)));
      assert.ok(!lazyd.lines.some((l) => l.level >= 50), `no error: ${JSON.stringify(lazyd.lines.filter((l) => l.level >= 50))}`);
    });
  });

  test(`CRIU ${version}: an upload over the memory cap is refused; the dump fails and the workload runs on`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-staging-cap`, async (runDir, onCleanup) => {
      const stagingDir = path.join(runDir, 'src');
      fs.mkdirSync(stagingDir, { recursive: true });
      const lazyd = await startStaging(stagingDir, { maxBytes: 4 * 1024 * 1024 });
      onCleanup(() => lazyd.stop());
      const { workload, workloadDir } = await startAndWarm(runDir, 'w', 16, onCleanup);
      const before = logOffset(workloadDir);
      await assert.rejects(runCriu(criu, 'dump', dumpArgs(workload.pid, stagingDir, lazyd.port), timeouts.dumpMs, { imagesDir: stagingDir }));
      // The refusal ends the session, and its line comes through the server thread's event queue: it may trail
      // the dump's exit.
      const refusal = await pollLine(lazyd.lines, (l) => l.msg.includes('staging memory cap'));
      assert.ok(refusal, 'lazyd logged the cap refusal');
      t.diagnostic(refusal.msg);
      assert.ok(workload.unshare.running, 'the original workload is still there');
      const passes = await waitForPasses(workloadDir, 2, timeouts.passesMs, { fromOffset: before, pid: workload.pid });
      assert.ok(passes.every((p) => p.ok === 16 * PAGES_PER_MIB), 'the resumed original verifies clean');
      assert.equal(lazyd.service.stagedCheckpoints().length, 0);
      assert.deepEqual(stagedImages(stagingDir), [], 'no staged image left');
      assert.equal(lazyd.service.stats().stagingBytes, 0, 'the refused upload holds no memory');
    });
  });

  test(`CRIU ${version}: a replayed dump stream cut mid-upload leaves nothing served`, { timeout: TEST_TIMEOUT_MS }, async () => {
    await withRunDir(`${version}-staging-cut`, async (runDir, onCleanup) => {
      const stagingDir = path.join(runDir, 'src');
      fs.mkdirSync(stagingDir, { recursive: true });
      const lazyd = await startStaging(stagingDir);
      onCleanup(() => lazyd.stop());
      // CRIU's own upload stream (recorded from criu dump --page-server, test/fixtures), cut off in the middle of
      // the pages.
      const stream = readFixture(version, 'upload', 'client-to-server.bin');
      const replies = readFixture(version, 'upload', 'server-to-client.bin');
      const recorded = sessionFacts(version, 'upload');
      await new Promise<void>((resolve, reject) => {
        const socket = net.connect(lazyd.port, '127.0.0.1', () => {
          socket.write(stream.subarray(0, Math.floor(stream.length / 2)), () => {
            setTimeout(() => socket.destroy(), 200);
          });
        });
        socket.on('close', () => resolve());
        socket.on('error', reject);
      });
      await waitFor('the failed upload', () => lazyd.lines.some((l) => l.msg.startsWith('Upload failed')));
      assert.equal(lazyd.service.stagedCheckpoints().length, 0);
      assert.equal(lazyd.service.stats().stagingBytes, 0);
      assert.deepEqual(stagedImages(stagingDir), []);
      // A GET for a lazy page of the upload (the dumped pid, the first page of the entry holding its data area:
      // see the recording's session.json) finds nothing: the session is refused, nothing half-served.
      const pid = recorded.workload.ns_pid;
      const lazyPage = BigInt(recorded.pagemap.entries[recorded.workload.data_area.entry_index]!.vaddr);
      assert.equal((await lazyGet(lazyd.port, version, pid, lazyPage)).length, 0, 'no page served for the cut upload');
      // And the full stream, uploaded cleanly, is staged and serves that page.
      await new Promise<void>((resolve, reject) => {
        const socket = net.connect(lazyd.port, '127.0.0.1', () => socket.write(stream));
        let got = 0;
        socket.on('data', (d) => {
          got += d.length;
          if (got >= replies.length) socket.end();
        });
        socket.on('close', () => resolve());
        socket.on('error', reject);
      });
      await waitFor('the staged upload', () => lazyd.service.stagedCheckpoints().length === 1);
      assert.ok(fs.existsSync(path.join(stagingDir, 'pagemap-1.img')));
      assert.equal((await lazyGet(lazyd.port, version, pid, lazyPage)).length, HEADER_SIZE[version] + PAGE_SIZE, 'the staged page is served');
      lazyd.service.stop(1000);
      await lazyd.service.stopped;
    });
  });

  // A live `criu dump --page-server` whose connection is reset (RST both ways) a quarter into the upload, by a
  // relay between criu and lazyd: the dump must fail and CRIU resume the original, which keeps verifying; lazyd
  // must log one line, stage nothing (control socket list, a lazy GET, the directory) and go on serving: the
  // retried dump of the same workload is staged and restored, verified.
  test(`CRIU ${version}: a live dump whose connection is reset mid-upload fails, the original runs on, nothing is staged; the retried dump restores`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-staging-live-cut`, async (runDir, onCleanup) => {
      const stagingDir = path.join(runDir, 'src');
      fs.mkdirSync(stagingDir, { recursive: true });
      const control = path.join(runDir, 'lazyd.sock');
      const lazyd = await startStaging(stagingDir, { restores: 1 }, control);
      onCleanup(() => lazyd.stop());
      const relay = await startRelay(lazyd, { cut: { direction: 'to-server', bytes: CUT_UPLOAD_BYTES } });
      onCleanup(() => relay.close());
      const { workload, workloadDir } = await startAndWarm(runDir, 'w', 16, onCleanup);
      const { nsPid } = workload.ready;
      const dataArea = BigInt(workload.ready.base);
      const before = logOffset(workloadDir);

      await assert.rejects(
        runCriu(criu, 'dump', dumpArgs(workload.pid, stagingDir, relay.port), timeouts.dumpMs, { imagesDir: stagingDir }),
        /criu [\d.]+ dump failed/,
      );
      await relay.cut;
      assert.equal(relay.forwarded['to-server'], CUT_UPLOAD_BYTES, 'the relay cut the upload where told');
      t.diagnostic(`criu dump failed after ${CUT_UPLOAD_BYTES} bytes of upload`);
      // The original resumed, and its memory is intact.
      assert.ok(workload.unshare.running, 'the original workload is still there');
      const passes = await waitForPasses(workloadDir, 2, timeouts.passesMs, { fromOffset: before, pid: workload.pid });
      assert.ok(passes.every((p) => p.ok === 16 * PAGES_PER_MIB && p.bad === 0), 'the resumed original verifies clean');

      // lazyd: one line naming the cause; nothing staged, nothing on disk, nothing served for the pid.
      await waitFor('the failed upload', () => lazyd.lines.some((l) => l.msg.startsWith('Upload failed')));
      const complaints = lazyd.lines.filter((l) => l.level >= 40);
      assert.equal(complaints.length, 1, `one warning or error line: ${JSON.stringify(complaints.map((l) => l.msg))}`);
      t.diagnostic(`lazyd: ${complaints[0].msg}`);
      assert.match(complaints[0].msg, /^Upload failed: .*(reset|disconnected).*: nothing of this upload is kept$/);
      assert.deepEqual(await stagingList(control), [], 'lazyd staging list: nothing staged');
      assert.equal((await lazyGet(lazyd.port, version, nsPid, dataArea)).length, 0, 'a GET for the cut upload is refused');
      assert.deepEqual(stagedImages(stagingDir), [], 'no pagemap or pages image left behind');
      assert.equal(lazyd.service.stats().stagingBytes, 0, 'the cut upload holds no memory');

      // The daemon serves on: the retried dump of the same workload is staged, serves the page, and restores (should
      // criu mark none of its pages lazy, a fresh workload is dumped: see withLazyPages).
      const { checkpoint, workload: dumped } = await withLazyPages(lazyd, stagingDir, async (attempt) => {
        if (attempt === 1) return dumpInto(criu, runDir, workload, workloadDir, stagingDir, lazyd.port, 16);
        const fresh = await startAndWarm(runDir, 'w', 16, onCleanup);
        return dumpInto(criu, runDir, fresh.workload, fresh.workloadDir, stagingDir, lazyd.port, 16);
      });
      // The staged event trails the dump's exit (the upload is kept when the dump hangs up after CLOSE).
      await waitFor('the staged checkpoint', () => lazyd.service.stagedCheckpoints().length === 1);
      const listed = await stagingList(control);
      assert.equal(listed.length, 1);
      assert.deepEqual(listed[0].pids, [dumped.ready.nsPid]);
      const dumpedArea = BigInt(dumped.ready.base);
      assert.equal((await lazyGet(lazyd.port, version, dumped.ready.nsPid, dumpedArea)).length, HEADER_SIZE[version] + PAGE_SIZE, 'the retried dump serves the page');
      const daemon: DaemonKind = version === '4.1.1' ? 'lazyd' : 'criu';
      const restored = await lazyRestore({ checkpoint, server: lazyd, daemon, name: 'dst', progress: testProgress(t), onCleanup, timeouts });
      assert.equal(restored.lazyPages.copied, restored.lazyPages.total, 'every lazy page installed');
      assert.ok(restored.passes[0].every((p) => p.ok === checkpoint.dataPages && p.bad === 0));
      await waitFor('the release after the restore', () => lazyd.service.stagedCheckpoints().length === 0);
    });
  });

  // The connection breaks right after lazyd's CLOSE status reached the dump: the relay passes the 5 reply bytes
  // (OPEN2's and CLOSE's) and then resets both sides. CRIU's dump has its status, succeeds and ends the original,
  // so lazyd must keep the checkpoint (dropping it, as for a cut before the status, would lose the process) and
  // say so in one warning; the checkpoint restores, verified.
  test(`CRIU ${version}: a connection reset right after lazyd's CLOSE status: the dump succeeded, lazyd keeps the checkpoint, it restores`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-staging-late-cut`, async (runDir, onCleanup) => {
      const stagingDir = path.join(runDir, 'src');
      fs.mkdirSync(stagingDir, { recursive: true });
      const lazyd = await startStaging(stagingDir, { restores: 1 });
      onCleanup(() => lazyd.stop());
      const replyBytes = 1 + 4; // OPEN2's has_parent, CLOSE's status (one task, one pagemap)
      const relay = await startRelay(lazyd, { cut: { direction: 'to-client', bytes: replyBytes } });
      onCleanup(() => relay.close());
      // The lines of the dump that counts (see withLazyPages: a dump without lazy pages is done again).
      let since = 0;
      const { checkpoint, workload } = await withLazyPages(lazyd, stagingDir, async () => {
        since = lazyd.lines.length;
        const { workload, workloadDir } = await startAndWarm(runDir, 'w', 16, onCleanup);
        return dumpInto(criu, runDir, workload, workloadDir, stagingDir, relay.port, 16);
      });
      await relay.cut;
      assert.ok(!workload.unshare.running, 'the successful dump ended the original');

      await waitFor('the staged checkpoint', () => lazyd.service.stagedCheckpoints().length === 1);
      const [staged] = lazyd.service.stagedCheckpoints();
      const complaints = lazyd.lines.slice(since).filter((l) => l.level >= 40);
      assert.equal(complaints.length, 1, `one warning: ${JSON.stringify(complaints.map((l) => l.msg))}`);
      t.diagnostic(`lazyd: ${complaints[0].msg}`);
      assert.match(complaints[0].msg, /^Upload finished, but the dump's connection broke after lazyd had sent its CLOSE status \(Connection reset by peer\): .*so the upload is kept: staged as checkpoint #\d+; .*lazyd staging release \d+\)$/);
      assert.ok(complaints[0].msg.includes(`checkpoint #${staged.id}`));
      assert.ok(fs.existsSync(path.join(stagingDir, 'pagemap-1.img')), 'the images stay');

      const restored = await lazyRestore({ checkpoint, server: lazyd, daemon: 'lazyd', name: 'dst', progress: testProgress(t), onCleanup, timeouts });
      assert.equal(restored.lazyPages.copied, restored.lazyPages.total, 'every lazy page installed');
      assert.ok(restored.lazyPages.total >= checkpoint.dataPages);
      assert.ok(restored.passes[0].every((p) => p.ok === checkpoint.dataPages && p.bad === 0));
    });
  });

  // A restore whose destination daemon is SIGKILLed while lazy pages are still on their way (the relay passes
  // them slowly, so the transfer is surely in progress): the staged checkpoint is not used up — still listed,
  // 0 restores — and a retried restore completes and verifies (and, with --staging-restores 1, counts).
  for (const daemon of ['criu', 'lazyd'] as const) {
    test(`CRIU ${version}: a restore whose ${daemon} lazy-pages dies mid-transfer does not use the staged checkpoint up; the retry restores`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
      requireHost();
      const criu = findCriu(version);
      await withRunDir(`${version}-staging-dead-${daemon}`, async (runDir, onCleanup) => {
        const stagingDir = path.join(runDir, 'src');
        fs.mkdirSync(stagingDir, { recursive: true });
        const control = path.join(runDir, 'lazyd.sock');
        const lazyd = await startStaging(stagingDir, { restores: 1 }, control);
        onCleanup(() => lazyd.stop());
        const { checkpoint } = await stagedDump(criu, runDir, stagingDir, lazyd, onCleanup);
        // The staged event trails the dump's exit (the upload is kept when the dump hangs up after CLOSE).
        await waitFor('the staged checkpoint', () => lazyd.service.stagedCheckpoints().length === 1);
        const [staged] = lazyd.service.stagedCheckpoints();
        const lazyBytes = checkpoint.dataPages * PAGE_SIZE;

        // The doomed restore: through the slow relay, into its own copy of the workload dir (its workload reads
        // zeros once its daemon is gone, and must not touch the files the retry restores).
        const relay = await startRelay(lazyd, { throttle: { direction: 'to-client', bytesPerSecond: THROTTLED_BYTES_PER_SECOND } });
        onCleanup(() => relay.close());
        const copy = path.join(runDir, 'w-doomed');
        fs.cpSync(checkpoint.workloadDir, copy, { recursive: true });
        const doomed = await startLazyRestore({ checkpoint, server: relay, daemon, name: 'dst-doomed', privateWorkloadDir: copy, progress: testProgress(t), onCleanup, timeouts });
        const sent = relay.forwarded['to-client'];
        doomed.lazyPages.kill('SIGKILL');
        await doomed.lazyPages.exited;
        t.diagnostic(`${daemon} lazy-pages killed after ${sent} of ${lazyBytes}+ bytes of lazy pages`);
        assert.ok(sent < lazyBytes, `the transfer was still in progress (${sent} bytes of ${lazyBytes})`);
        await doomed.kill();
        const ended = await pollLine(lazyd.lines, (l) => /^Page-server session/.test(l.msg) && l.checkpoint === staged.id);
        t.diagnostic(`lazyd: ${ended.msg} (${ended.bytes} bytes)`);
        assert.ok(ended.level >= 40, 'the cut restore is a warning or an error');
        assert.ok(ended.msg.endsWith(`does not count as a completed restore of staged checkpoint #${staged.id}`), ended.msg);
        assert.ok(Number(ended.bytes) < lazyBytes, 'the dead session had not fetched every page');

        // Not used up: still staged, no completed restore.
        assert.deepEqual(
          (await stagingList(control)).map((c) => [c.id, c.restores]),
          [[staged.id, 0]],
          'lazyd staging list: the checkpoint is still there, with 0 restores',
        );
        assert.ok(!lazyd.lines.some((l) => l.msg.includes('restore completed')));

        // The retry completes and verifies; it is the one restore counted (--staging-restores 1 releases it).
        const restored = await lazyRestore({ checkpoint, server: lazyd, daemon, name: 'dst-retry', progress: testProgress(t), onCleanup, timeouts });
        assert.equal(restored.lazyPages.copied, restored.lazyPages.total, 'every lazy page installed');
        assert.ok(restored.lazyPages.total >= checkpoint.dataPages);
        assert.ok(restored.passes[0].every((p) => p.ok === checkpoint.dataPages && p.bad === 0));
        await pollLine(lazyd.lines, (l) => l.msg.includes(`checkpoint #${staged.id} released: after 1 completed restores`));
        assert.equal(lazyd.lines.filter((l) => l.msg.includes('restore completed')).length, 1);
      });
    });
  }
}
