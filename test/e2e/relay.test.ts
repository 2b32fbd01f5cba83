// End-to-end: relay staging (README "Relay staging"). Real CRIU (4.1.1 and 4.2.1) dumps a self-verifying workload
// with `criu dump --lazy-pages --address 127.0.0.1 --port P`; `lazyd staging relay -D DIR --from 127.0.0.1:P`
// (the real command line) has lazyd's page server (in this process, with its control socket) pull every lazy page
// of the frozen tasks into its memory and then CLOSE the dump's session, so the dump exits and the original is
// gone; `criu lazy-pages --page-server` and `lazyd lazy-pages --page-server`, with `criu restore --lazy-pages`,
// restore copies of DIR from lazyd, any number of times, each workload verifying its own memory. The failures:
// the memory cap (refused before the pull: the dump fails and the original runs on), the dump's server killed
// mid-pull (one clear line, the checkpoint incomplete and never served as complete). A TCP relay between lazyd
// and the dump (test/harness/relay.ts) slows the pull down or stops it at a known point.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import {
  checkpointWorkload,
  CRIU_VERSIONS,
  E2E_TIMEOUTS as timeouts,
  findCriu,
  HEADER_SIZE,
  lazyRestore,
  logOffset,
  PAGE_SIZE,
  PAGES_PER_MIB,
  RELAYED_RE,
  requireHost,
  startLazyRestore,
  startRelay,
  makeTestPki,
  startRelayCommand,
  stagingCommand,
  tlsArgs,
  testProgress,
  waitForPasses,
  withRunDir,
  type Checkpoint,
  type CriuVersion,
  type RelayTarget,
} from '../harness/index.js';
import { PageServerService } from '../../src/page-server/service.js';
import type { StagingOptions } from '../../src/staging/stager.js';
import { startStagingControl, type ListedCheckpoint } from '../../src/staging/control.js';
import { relayPlan } from '../../src/staging/relay.js';
import type { NativeTlsOptions } from '../../src/native.js';
import { memoryLogger, type LogLine } from '../harness/memory-logger.js';

const TEST_TIMEOUT_MS = 150_000;
/** The pull through the slow relay: 16 MiB take 8 s, so a restore started at once surely runs before it ends. */
const SLOW_PULL_BYTES_PER_SECOND = 2 * 1024 * 1024;
/** With the pull slowed, little bulk in flight: a demand fetch waits behind at most this much. */
const SMALL_INFLIGHT = 64 * 1024;

/** lazyd's page server with staging and its control socket, in this process: the relay daemon. */
async function startRelayDaemon(runDir: string, staging: Partial<StagingOptions> = {}, tls?: NativeTlsOptions) {
  const dir = path.join(runDir, 'lazyd');
  fs.mkdirSync(dir, { recursive: true });
  const { logger, lines } = memoryLogger();
  const service = await PageServerService.start({ imagesDir: dir, address: '127.0.0.1', port: 0, logger, staging: { dir, ...staging }, tls });
  const controlSocket = path.join(dir, 'control.sock');
  const control = await startStagingControl(controlSocket, service, logger);
  const target: RelayTarget = { controlSocket, dir };
  const stop = async () => {
    await control.close();
    service.stop(0);
    await service.stopped;
  };
  return { service, lines, target, address: '127.0.0.1', port: service.port, stop };
}

type RelayDaemon = Awaited<ReturnType<typeof startRelayDaemon>>;

/** `criu dump --lazy-pages --address 127.0.0.1` of a fresh workload, serving (the tasks frozen). */
async function lazyDump(t: TestContext, version: CriuVersion, runDir: string, onCleanup: (fn: () => unknown) => void, mib = 16, extraArgs?: string[]): Promise<Checkpoint> {
  return checkpointWorkload({
    criu: findCriu(version),
    runDir,
    workload: { mib },
    timeouts,
    progress: testProgress(t),
    onCleanup,
    lazyDump: { address: '127.0.0.1', extraArgs },
  });
}

async function list(daemon: RelayDaemon): Promise<ListedCheckpoint[]> {
  const { code, output } = await stagingCommand(daemon.target, ['list', '--json']);
  assert.equal(code, 0, output);
  return JSON.parse(output) as ListedCheckpoint[];
}

/** The reply bytes to a GET of one page of pid at vaddr (the header layout of `version`); empty when refused. */
function lazyGet(port: number, version: CriuVersion, pid: number, vaddr: bigint): Promise<Buffer> {
  const get = Buffer.alloc(HEADER_SIZE[version]);
  get.writeUInt32LE(7, 0); // PS_IOV_GET
  if (get.length === 24) {
    get.writeUInt32LE(1, 4);
    get.writeBigUInt64LE(vaddr, 8);
    get.writeBigUInt64LE(BigInt(pid), 16);
  } else {
    get.writeBigUInt64LE(1n, 8);
    get.writeBigUInt64LE(vaddr, 16);
    get.writeBigUInt64LE(BigInt(pid), 24);
  }
  return new Promise<Buffer>((resolve) => {
    const chunks: Buffer[] = [];
    const socket = net.connect(port, '127.0.0.1', () => socket.end(get));
    socket.on('data', (d) => chunks.push(d));
    socket.on('close', () => resolve(Buffer.concat(chunks)));
    socket.on('error', () => resolve(Buffer.concat(chunks)));
  });
}

/** Waits for fn(), with a deadline that only a failure reaches (a loaded machine is slow, not wrong). */
async function waitFor<T>(what: string, fn: () => T | undefined | Promise<T | undefined>, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await fn();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function errors(lines: LogLine[]): string[] {
  return lines.filter((l) => l.level >= 50).map((l) => l.msg);
}

for (const version of CRIU_VERSIONS) {
  test(`CRIU ${version}: TLS on both legs: criu dump --lazy-pages --tls relayed with --relay-tls, restored by criu lazy-pages --tls from lazyd --tls`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    await withRunDir(`${version}-relay-tls`, async (runDir, onCleanup) => {
      const pki = await makeTestPki(path.join(runDir, 'pki'));
      // lazyd shows pki.a's certificate to the dump and to restores; the dump and the restore show pki.b's.
      const lazyd = await startRelayDaemon(runDir, { restores: 1 }, { cacert: pki.ca, cacrl: pki.crl, cert: pki.a.cert, key: pki.a.key, noCnVerify: false, peerName: '127.0.0.1' });
      onCleanup(() => lazyd.stop());
      const checkpoint = await lazyDump(t, version, runDir, onCleanup, 16, tlsArgs(pki, { as: pki.b }));
      const dump = checkpoint.dumpServer!;
      const relay = await startRelayCommand(lazyd.target, checkpoint.imagesDir, dump, ['--relay-tls']);
      const { line } = await relay.done();
      t.diagnostic(line);
      assert.equal(Number(RELAYED_RE.exec(line)![3]), checkpoint.lazyPages);
      assert.equal((await dump.finish()).code, 0);
      const restored = await lazyRestore({ checkpoint, server: lazyd, daemon: 'criu', name: 'dst', daemonArgs: tlsArgs(pki, { as: pki.b }), progress: testProgress(t), onCleanup, timeouts });
      assert.equal(restored.lazyPages.copied, restored.lazyPages.total, 'every lazy page installed');
      assert.ok(restored.passes[0].every((p) => p.ok === checkpoint.dataPages && p.bad === 0), 'the restored workload verifies clean');
      assert.deepEqual(errors(lazyd.lines), []);
    });
  });

  test(`CRIU ${version}: relay from criu dump --lazy-pages: the original is gone once lazyd holds every page; two restores from lazyd's memory (criu lazy-pages, then lazyd lazy-pages), each verified`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    await withRunDir(`${version}-relay`, async (runDir, onCleanup) => {
      const lazyd = await startRelayDaemon(runDir, { restores: 2 });
      onCleanup(() => lazyd.stop());
      const checkpoint = await lazyDump(t, version, runDir, onCleanup);
      const dump = checkpoint.dumpServer!;
      const relay = await startRelayCommand(lazyd.target, checkpoint.imagesDir, dump);
      const { line } = await relay.done();
      t.diagnostic(line);
      const m = RELAYED_RE.exec(line)!;
      assert.equal(Number(m[3]), checkpoint.lazyPages, 'every PE_LAZY page of the dump is held');
      // The dump had its CLOSE: it exits 0, and the originals with it.
      const exit = await dump.finish();
      assert.equal(exit.code, 0);
      assert.match(fs.readFileSync(path.join(checkpoint.imagesDir, 'dump.log'), 'utf8'), /Dumping finished successfully/);
      const [listed] = await list(lazyd);
      assert.deepEqual([listed?.relay?.state, listed?.relay?.pagesHeld, listed?.relay?.pagesTotal], ['complete', checkpoint.lazyPages, checkpoint.lazyPages]);

      // Fan-out: the checkpoint is served from lazyd's memory alone (the original and its dump are gone).
      for (const [name, daemon] of [['dst-criu', 'criu'], ['dst-lazyd', 'lazyd']] as const) {
        const restored = await lazyRestore({ checkpoint, server: lazyd, daemon, name, progress: testProgress(t), onCleanup, timeouts });
        t.diagnostic(`${name}: lazy pages ${restored.lazyPages.copied}/${restored.lazyPages.total}, passes ${restored.passes[0].length}`);
        assert.equal(restored.lazyPages.copied, restored.lazyPages.total, 'every lazy page installed');
        assert.ok(restored.lazyPages.total >= checkpoint.dataPages);
        assert.ok(restored.passes[0].every((p) => p.ok === checkpoint.dataPages && p.bad === 0), 'the restored workload verifies clean');
      }
      await waitFor('the release after 2 restores', () => lazyd.lines.find((l) => l.msg.startsWith(`Staged checkpoint #${listed!.id} released: after 2 completed restores`)));
      assert.deepEqual(await list(lazyd), [], 'released: no longer listed');
      assert.deepEqual(errors(lazyd.lines), []);
    });
  });

  test(`CRIU ${version}: a restore that starts while the pull is still running gets its faulting pages through the dump, ahead of the bulk`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    await withRunDir(`${version}-relay-early`, async (runDir, onCleanup) => {
      const lazyd = await startRelayDaemon(runDir, { restores: 1 });
      onCleanup(() => lazyd.stop());
      const checkpoint = await lazyDump(t, version, runDir, onCleanup);
      const dump = checkpoint.dumpServer!;
      const slow = await startRelay(dump, { throttle: { direction: 'to-client', bytesPerSecond: SLOW_PULL_BYTES_PER_SECOND } });
      onCleanup(() => slow.close());
      const relay = await startRelayCommand(lazyd.target, checkpoint.imagesDir, slow, ['--relay-inflight-bytes', String(SMALL_INFLIGHT)]);
      // The pull runs: the restore starts at once and faults on pages lazyd does not hold yet.
      const restore = await startLazyRestore({ checkpoint, server: lazyd, daemon: 'lazyd', name: 'dst', progress: testProgress(t), onCleanup, timeouts });
      const [during] = await list(lazyd);
      t.diagnostic(`the restore resumed with ${during?.relay?.pagesHeld}/${during?.relay?.pagesTotal} pages held by lazyd`);
      assert.equal(during?.relay?.state, 'pulling', 'the restore runs before the pull has finished');
      // Its first clean pass reads every data page; it ends while the pull is still running.
      const firstPass = await waitForPasses(checkpoint.workloadDir, 1, timeouts.passesMs, { fromOffset: restore.offsets[0], pid: restore.restoredPid });
      assert.ok(firstPass.every((p) => p.ok === checkpoint.dataPages && p.bad === 0));
      const [afterPass] = await list(lazyd);
      t.diagnostic(`first clean pass with ${afterPass?.relay?.pagesHeld}/${afterPass?.relay?.pagesTotal} pages held`);
      const { line } = await relay.done();
      t.diagnostic(line);
      const done = lazyd.lines.find((l) => /^Relay checkpoint #\d+ complete/.test(l.msg))!;
      t.diagnostic(`lazyd: ${done.msg} (demand requests ${String(done.demandRequests)}, bulk ${String(done.bulkRequests)})`);
      assert.ok(Number(done.demandRequests) > 0, 'pages a restore waited for were fetched from the dump ahead of the bulk pull');
      // Over the lazyd link (the relay's lazyd-link.json came with the copy): the pages fetched ahead of the bulk
      // carried checksums too, and every one passed.
      assert.match(fs.readFileSync(path.join(restore.dstDir, 'lazy-pages.log'), 'utf8'), /lazyd link/);
      await restore.lazyPages.waitOk(timeouts.allPagesMs);
      assert.doesNotMatch(fs.readFileSync(path.join(restore.dstDir, 'lazy-pages.log'), 'utf8'), /failed their checksum/);
      await dump.finish();
      await restore.kill();
      assert.deepEqual(errors(lazyd.lines), []);
    });
  });

  test(`CRIU ${version}: the dump's server killed mid-pull: one clear line, the checkpoint incomplete, a GET for a page never pulled refused`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    await withRunDir(`${version}-relay-killed`, async (runDir, onCleanup) => {
      const lazyd = await startRelayDaemon(runDir);
      onCleanup(() => lazyd.stop());
      const checkpoint = await lazyDump(t, version, runDir, onCleanup);
      const dump = checkpoint.dumpServer!;
      const slow = await startRelay(dump, { throttle: { direction: 'to-client', bytesPerSecond: SLOW_PULL_BYTES_PER_SECOND } });
      onCleanup(() => slow.close());
      const relay = await startRelayCommand(lazyd.target, checkpoint.imagesDir, slow, ['--relay-inflight-bytes', String(SMALL_INFLIGHT)]);
      // Stop the pull at a known point (requests swallowed, the answers in flight through), then kill the dump.
      await waitFor('some pages pulled', () => (slow.forwarded['to-client'] > 1024 * 1024 ? true : undefined));
      await slow.hold();
      const beforeKill = logOffset(checkpoint.workloadDir);
      dump.proc.kill('SIGKILL');
      await dump.proc.exited;
      const { exit, output } = await relay.ended();
      t.diagnostic(`lazyd staging relay: ${output.trim()}`);
      assert.notEqual(exit.code, 0, 'the relay command fails');
      const complaint = output.trim().split('\n');
      assert.equal(complaint.length, 1, 'one line');
      assert.match(complaint[0]!, /^lazyd staging: checkpoint #\d+: relay from the dump at 127\.0\.0\.1:\d+ failed after \d+ of \d+ pages: .+; the checkpoint is incomplete and never served as complete$/);
      const [listed] = await list(lazyd);
      assert.equal(listed?.relay?.state, 'failed');
      assert.ok(listed!.relay!.pagesHeld < listed!.relay!.pagesTotal, 'incomplete');
      // The last lazy page of the dump was never pulled (the bulk pull goes in order): refused, not zeros.
      const plan = await relayPlan(checkpoint.imagesDir);
      const task = plan.tasks.at(-1)!;
      const range = task.ranges.at(-1)!;
      const lastPage = range.vaddr + BigInt((range.nrPages - 1) * PAGE_SIZE);
      assert.equal((await lazyGet(lazyd.port, version, task.pid, lastPage)).length, 0, 'a GET for a page never pulled is refused');
      // The original: its tracer gone, the kernel detached it and it runs on, its memory intact.
      const passes = await waitForPasses(checkpoint.workloadDir, 2, timeouts.passesMs, { fromOffset: beforeKill });
      assert.ok(passes.every((p) => p.ok === checkpoint.dataPages && p.bad === 0), 'the original verifies clean');
      const failed = lazyd.lines.filter((l) => l.level >= 50);
      assert.ok(failed.some((l) => /^Relay checkpoint #\d+ failed: /.test(l.msg)), JSON.stringify(failed.map((l) => l.msg)));
    });
  });

  test(`CRIU ${version}: a relay over the memory cap is refused before the pull; the dump fails and the original runs on, verifying`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    await withRunDir(`${version}-relay-cap`, async (runDir, onCleanup) => {
      const lazyd = await startRelayDaemon(runDir, { maxBytes: 4 * 1024 * 1024 });
      onCleanup(() => lazyd.stop());
      const checkpoint = await lazyDump(t, version, runDir, onCleanup);
      const dump = checkpoint.dumpServer!;
      const before = logOffset(checkpoint.workloadDir);
      await assert.rejects(startRelayCommand(lazyd.target, checkpoint.imagesDir, dump), (error: Error) => {
        const line = error.message.split('\n').find((l) => l.includes('lazyd staging: '))?.trim() ?? error.message;
        t.diagnostic(line);
        assert.match(
          line,
          /lazyd staging: cannot relay the dump at 127\.0\.0\.1:\d+: the relayed checkpoint needs 16 MiB of staging memory, but only 4 MiB of the 4 MiB cap are free \(--staging-max-bytes\): raise the cap or release a staged checkpoint; its connection was reset, so criu dump fails and resumes the tasks$/,
        );
        return true;
      });
      // The dump had a reset: it fails and resumes the tasks, which verify their memory on.
      const exit = await dump.proc.wait(timeouts.dumpMs);
      assert.notEqual(exit.code, 0, 'the dump failed');
      assert.match(fs.readFileSync(path.join(checkpoint.imagesDir, 'dump.log'), 'utf8'), /Lazy pages transfer FAILED/);
      const passes = await waitForPasses(checkpoint.workloadDir, 2, timeouts.passesMs, { fromOffset: before });
      assert.ok(passes.every((p) => p.ok === 16 * PAGES_PER_MIB && p.bad === 0), 'the resumed original verifies clean');
      assert.deepEqual(await list(lazyd), [], 'nothing staged, nothing relayed');
      assert.equal(lazyd.service.stats().stagingBytes, 0, 'the refused relay holds no memory');
    });
  });
}
