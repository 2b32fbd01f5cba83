// End-to-end: diskless staging. Real CRIU (4.1.1 and 4.2.1) dumps a self-verifying workload with
// `criu dump --page-server --address 127.0.0.1 --port P -D DIR` into lazyd (the page server runs in this
// process, with staging into DIR); then `criu lazy-pages --page-server` + `criu restore --lazy-pages` restore it
// from a copy of DIR, fetching the lazy pages from lazyd's memory, verified by the workload itself.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import pino from 'pino';
import {
  buildWorkload,
  checkHost,
  CRIU_VERSIONS,
  findCriu,
  instanceDirs,
  killWorkload,
  lastPassSum,
  lazyRestore,
  logOffset,
  nowNs,
  PAGES_PER_MIB,
  runCriu,
  startWorkload,
  waitForAllPasses,
  waitForPasses,
  withRunDir,
  type Checkpoint,
  type Criu,
  type Workload,
} from '../../src/harness/index.js';
import { PageServerService } from '../../src/page-server/service.js';
import type { StagingOptions } from '../../src/staging/stager.js';
import { readPagemap, PE_LAZY, PE_PRESENT } from '../../src/images/index.js';
import { repoRoot } from '../../src/paths.js';

const TEST_TIMEOUT_MS = 120_000;
const timeouts = { dumpMs: 30_000, readyMs: 15_000, restoreMs: 30_000, allPagesMs: 45_000, passesMs: 20_000 };

function requireHost(): void {
  checkHost(CRIU_VERSIONS);
}

function memoryLogger() {
  const lines: Array<{ level: number; msg: string }> = [];
  const logger = pino({ level: 'debug', base: undefined }, {
    write(line: string) {
      lines.push(JSON.parse(line));
    },
  } as pino.DestinationStream);
  return { logger, lines };
}

async function startStaging(stagingDir: string, staging: Partial<StagingOptions> = {}) {
  const { logger, lines } = memoryLogger();
  const service = await PageServerService.start({
    imagesDir: stagingDir,
    address: '127.0.0.1',
    port: 0,
    logger,
    staging: { dir: stagingDir, ...staging },
  });
  return { service, lines, address: '127.0.0.1', port: service.port };
}

interface StagedDump {
  checkpoint: Checkpoint;
  workload: Workload;
}

/** Starts a workload, waits for a clean pass, and dumps it with `criu dump --page-server` into lazyd. */
async function startAndWarm(criu: Criu, runDir: string, name: string, mib: number, onCleanup: (fn: () => unknown) => void) {
  const binary = await buildWorkload();
  const workloadDir = path.join(runDir, name);
  const workload = await startWorkload(binary, workloadDir, { mib }, timeouts.readyMs);
  onCleanup(() => killWorkload(workload));
  await waitForAllPasses(workloadDir, 0, 1, timeouts.passesMs, { pid: workload.pid });
  void criu;
  return { workload, workloadDir };
}

function dumpArgs(pid: number, imagesDir: string, port: number): string[] {
  return ['-t', String(pid), '-D', imagesDir, '-v4', '-o', 'dump.log', '--page-server', '--address', '127.0.0.1', '--port', String(port)];
}

async function stagedDump(criu: Criu, runDir: string, stagingDir: string, port: number, onCleanup: (fn: () => unknown) => void, mib = 16): Promise<StagedDump> {
  const { workload, workloadDir } = await startAndWarm(criu, runDir, 'w', mib, onCleanup);
  const sums = instanceDirs(workloadDir, 0).map((dir) => lastPassSum(dir));
  const dumpStartNs = nowNs();
  const dump = await runCriu(criu, 'dump', dumpArgs(workload.pid, stagingDir, port), timeouts.dumpMs, { imagesDir: stagingDir });
  await workload.unshare.wait(10_000); // the dump killed the tree
  const checkpoint: Checkpoint = {
    criu,
    runDir,
    workloadDir,
    imagesDir: stagingDir,
    workload: { mib },
    dataPages: mib * PAGES_PER_MIB,
    lazyPages: 0,
    attempts: 1,
    sums,
    dumpStartNs,
    dumpMs: dump.ms,
  };
  return { checkpoint, workload };
}

async function waitFor(what: string, fn: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function diag(t: TestContext) {
  return (message: string) => t.diagnostic(message);
}

for (const version of CRIU_VERSIONS) {
  test(`CRIU ${version}: dump --page-server into lazyd, two lazy restores from the staged checkpoint`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-staging`, async (runDir, onCleanup) => {
      const stagingDir = path.join(runDir, 'src');
      fs.mkdirSync(stagingDir, { recursive: true });
      const lazyd = await startStaging(stagingDir, { restores: 2 });
      onCleanup(() => lazyd.service.stop(0));
      const { checkpoint, workload } = await stagedDump(criu, runDir, stagingDir, lazyd.port, onCleanup);
      t.diagnostic(`dump into lazyd took ${checkpoint.dumpMs.toFixed(0)} ms; original pid ${workload.pid} gone`);

      // The dump's directory is complete when the dump exits: lazyd's pagemap (PE_LAZY only) and pages images.
      const pagemap = await readPagemap(path.join(stagingDir, 'pagemap-1.img'), { checkPages: false });
      assert.ok(pagemap.pagesId >= 0x10001, `pages_id ${pagemap.pagesId} is in lazyd's range`);
      const lazy = pagemap.entries.filter((e) => e.flags & PE_LAZY);
      assert.ok(lazy.length > 0, 'the staged pagemap has lazy entries');
      assert.ok(lazy.every((e) => !(e.flags & PE_PRESENT)), 'lazy entries carry no data on disk');
      assert.equal(lazyd.service.stagedCheckpoints().length, 1);
      const id = lazyd.service.stagedCheckpoints()[0].id;

      for (const name of ['dst-1', 'dst-2']) {
        const restored = await lazyRestore({ checkpoint, server: lazyd, name, progress: diag(t), onCleanup, timeouts });
        t.diagnostic(`${name}: lazy pages ${restored.lazyPages.copied}/${restored.lazyPages.total}, passes ${restored.passes[0].length}`);
        assert.equal(restored.lazyPages.copied, restored.lazyPages.total, 'every lazy page installed');
        assert.ok(restored.lazyPages.total >= checkpoint.dataPages);
        assert.equal(restored.passes[0][0].ok, checkpoint.dataPages);
      }
      // --staging-restores 2: released after the second completed restore.
      await waitFor('the release after 2 restores', () => lazyd.service.stagedCheckpoints().length === 0);
      assert.ok(lazyd.lines.some((l) => l.msg.includes(`checkpoint #${id} released: after 2 completed restores`)));
      assert.ok(!lazyd.lines.some((l) => l.level >= 50), `no error: ${JSON.stringify(lazyd.lines.filter((l) => l.level >= 50))}`);
      await waitFor('staging memory freed', () => (lazyd.service.stats().stagingBytes ?? 1) === 0);
      lazyd.service.stop(1000);
      assert.equal(await lazyd.service.stopped, true);
    });
  });

  test(`CRIU ${version}: two restores of one staged checkpoint at the same time, each in its own pid and mount namespace`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const criu = findCriu(version);
    await withRunDir(`${version}-staging-twice`, async (runDir, onCleanup) => {
      const stagingDir = path.join(runDir, 'src');
      fs.mkdirSync(stagingDir, { recursive: true });
      const lazyd = await startStaging(stagingDir, { restores: 2 });
      onCleanup(() => lazyd.service.stop(0));
      const { checkpoint } = await stagedDump(criu, runDir, stagingDir, lazyd.port, onCleanup);
      const id = lazyd.service.stagedCheckpoints()[0].id;
      // Both restored trees would write into the dump's workload dir. Each restore runs in a mount namespace of
      // its own with a copy of that dir (as the dump left it: criu checks the open files' sizes) bind-mounted
      // over it, so each workload logs into its own copy and is verified from it.
      const copies = ['w-1', 'w-2'].map((name) => {
        const dir = path.join(runDir, name);
        fs.cpSync(checkpoint.workloadDir, dir, { recursive: true });
        return dir;
      });
      const originalLog = logOffset(checkpoint.workloadDir);
      const restores = await Promise.all(
        ['dst-1', 'dst-2'].map((name, i) =>
          lazyRestore({
            checkpoint,
            server: lazyd,
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
          t.diagnostic(`dst-${i + 1}: pid ${restored.restoredPid}, lazy pages ${restored.lazyPages.copied}/${restored.lazyPages.total}, passes ${restored.passes[0].length}`);
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
      assert.ok(lazyd.lines.some((l) => l.msg.includes(`checkpoint #${id} released: after 2 completed restores`)));
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
      onCleanup(() => lazyd.service.stop(0));
      const { workload, workloadDir } = await startAndWarm(criu, runDir, 'w', 16, onCleanup);
      const before = logOffset(workloadDir);
      await assert.rejects(runCriu(criu, 'dump', dumpArgs(workload.pid, stagingDir, lazyd.port), timeouts.dumpMs, { imagesDir: stagingDir }));
      const refusal = lazyd.lines.find((l) => l.msg.includes('staging memory cap'));
      assert.ok(refusal, 'lazyd logged the cap refusal');
      t.diagnostic(refusal.msg);
      assert.ok(workload.unshare.running, 'the original workload is still there');
      const passes = await waitForPasses(workloadDir, 2, timeouts.passesMs, { fromOffset: before, pid: workload.pid });
      assert.ok(passes.every((p) => p.ok === 16 * PAGES_PER_MIB), 'the resumed original verifies clean');
      assert.equal(lazyd.service.stagedCheckpoints().length, 0);
      assert.deepEqual(fs.readdirSync(stagingDir).filter((f) => /^(pagemap|pages)-/.test(f)), [], 'no staged image left');
      assert.equal(lazyd.service.stats().stagingBytes, 0, 'the refused upload holds no memory');
    });
  });

  test(`CRIU ${version}: a dump that disconnects mid-upload leaves nothing served`, { timeout: TEST_TIMEOUT_MS }, async () => {
    await withRunDir(`${version}-staging-cut`, async (runDir, onCleanup) => {
      const stagingDir = path.join(runDir, 'src');
      fs.mkdirSync(stagingDir, { recursive: true });
      const lazyd = await startStaging(stagingDir);
      onCleanup(() => lazyd.service.stop(0));
      // CRIU's own upload stream (recorded from criu dump --page-server), cut off in the middle of the pages.
      const stream = fs.readFileSync(path.resolve(repoRoot(), `../shared/testdata/criu-${version}/upload/client-to-server.bin`));
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
      assert.deepEqual(fs.readdirSync(stagingDir).filter((f) => /^(pagemap|pages)-/.test(f)), []);
      // A GET for the upload's pid (1) finds nothing: the session is refused, nothing half-served.
      const get = Buffer.alloc(version === '4.1.1' ? 24 : 32);
      get.writeUInt32LE(7, 0);
      if (get.length === 24) {
        get.writeUInt32LE(1, 4);
        get.writeBigUInt64LE(0x10000n, 8);
        get.writeBigUInt64LE(1n, 16);
      } else {
        get.writeBigUInt64LE(1n, 8);
        get.writeBigUInt64LE(0x7f0000000000n, 16);
        get.writeBigUInt64LE(1n, 24);
      }
      const reply = await new Promise<Buffer>((resolve) => {
        const chunks: Buffer[] = [];
        const socket = net.connect(lazyd.port, '127.0.0.1', () => socket.end(get));
        socket.on('data', (d) => chunks.push(d));
        socket.on('close', () => resolve(Buffer.concat(chunks)));
        socket.on('error', () => resolve(Buffer.concat(chunks)));
      });
      assert.equal(reply.length, 0, 'no page served for the cut upload');
      // And the full stream, uploaded cleanly, is staged.
      await new Promise<void>((resolve, reject) => {
        const socket = net.connect(lazyd.port, '127.0.0.1', () => socket.write(stream));
        let got = 0;
        socket.on('data', (d) => {
          got += d.length;
          if (got >= fs.readFileSync(path.resolve(repoRoot(), `../shared/testdata/criu-${version}/upload/server-to-client.bin`)).length) socket.end();
        });
        socket.on('close', () => resolve());
        socket.on('error', reject);
      });
      await waitFor('the staged upload', () => lazyd.service.stagedCheckpoints().length === 1);
      assert.ok(fs.existsSync(path.join(stagingDir, 'pagemap-1.img')));
      lazyd.service.stop(1000);
      await lazyd.service.stopped;
    });
  });
}
