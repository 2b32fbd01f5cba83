// End-to-end: the lazyd link of a relayed checkpoint (README "Relay staging", docs/protocol.md §7), with real CRIU
// 4.1.1 and 4.2.1. The README's flow on the source host, every command a real process: an empty `lazyd
// --page-server --control-socket` daemon, `criu dump --lazy-pages --address 127.0.0.1` of a self-verifying
// workload, `lazyd staging relay -D DIR --from 127.0.0.1:P`. The daemon writes lazyd-link.json (mode 0600) into
// DIR before the command's status byte says the pull runs; the restores copy DIR as the README says (the images
// and lazyd-link.json). Through a recording TCP relay (test/harness/relay.ts) in front of the daemon:
//   - `lazyd lazy-pages` opens with HELLO carrying the file's token, bind and checksum are granted, the workload
//     verifies;
//   - `criu lazy-pages` from the same checkpoint and relay sees CRIU's bytes only (its first request a CRIU GET,
//     its first reply ADD_F|PE_PRESENT, not one HELLO byte), the workload verifies;
//   - once the checkpoint is released (--staging-restores 2) the file is gone from DIR (its token names nothing);
// and through a relay that flips one bit in a relayed page: `lazyd lazy-pages` fetches it again, counts it
// (lazyd_page_checksum_mismatches_total 1, one warning naming the pid and the address) and the workload verifies.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import {
  checkpointWorkload,
  CRIU_VERSIONS,
  E2E_TIMEOUTS as timeouts,
  findCriu,
  lazyRestore,
  pollFor,
  processAlive,
  RELAYED_RE,
  requireHost,
  startRelay,
  startRelayCommand,
  startRelayDaemon,
  testProgress,
  withRunDir,
  type Checkpoint,
  type CriuVersion,
  type RelayDaemon,
} from '../harness/index.js';
import { checksumScrape, CHECKSUM_METRIC, dataArea } from '../harness/link-checks.js';
import { LINK_FILE_NAME, readLinkCapability } from '../../src/link/capability-file.js';
import { HELLO_MAGIC, LINK_FEATURE_BIND, LINK_FEATURE_CHECKSUM, LINK_FEATURE_PRIORITY, LINK_FEATURE_RESUME } from '../harness/wire.js';

const TEST_TIMEOUT_MS = 180_000;
/** ADD_F | PE_PRESENT: the command word of every CRIU GET reply (docs/protocol.md §1.6). */
const GET_REPLY_CMD = 0x40006;
/** The HELLO magic's bytes as they appear on the wire (native order). */
const HELLO_BYTES = Buffer.from([0x48, 0x4b, 0x5a, 0x4c]);

/** `criu dump --lazy-pages --address 127.0.0.1` of a fresh 16 MiB workload, serving (the tasks frozen). */
function lazyDump(t: TestContext, version: CriuVersion, runDir: string, onCleanup: (fn: () => unknown) => void): Promise<Checkpoint> {
  return checkpointWorkload({
    criu: findCriu(version),
    runDir,
    workload: { mib: 16 },
    timeouts,
    progress: testProgress(t),
    onCleanup,
    lazyDump: { address: '127.0.0.1' },
  });
}

/** The daemon, the dump and `lazyd staging relay` run to completion (every page held, the dump exited 0). */
async function relayed(t: TestContext, version: CriuVersion, runDir: string, onCleanup: (fn: () => unknown) => void, daemonArgs: string[] = []) {
  const daemon: RelayDaemon = await startRelayDaemon({ dir: path.join(runDir, 'lazyd'), address: '127.0.0.1', extraArgs: daemonArgs });
  onCleanup(() => daemon.server.kill());
  const checkpoint = await lazyDump(t, version, runDir, onCleanup);
  const dump = checkpoint.dumpServer!;
  const command = await startRelayCommand(daemon, checkpoint.imagesDir, dump);
  // The status byte came: the pull runs, and the file is in -D already (a script copies -D from here on).
  const file = path.join(checkpoint.imagesDir, LINK_FILE_NAME);
  const writtenBeforeReady = fs.existsSync(file);
  const { line } = await command.done();
  t.diagnostic(line);
  const relayedLine = RELAYED_RE.exec(line)!;
  assert.equal(Number(relayedLine[3]), checkpoint.lazyPages, 'every PE_LAZY page of the dump is held');
  assert.equal((await dump.finish()).code, 0, 'the dump had its CLOSE');
  return { daemon, checkpoint, file, writtenBeforeReady, id: Number(relayedLine[1]) };
}



for (const version of CRIU_VERSIONS) {
  test(`CRIU ${version}: relay staging writes lazyd-link.json; lazyd lazy-pages opens with HELLO (bind, checksum), criu lazy-pages sees CRIU's bytes only; the file goes with the checkpoint`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    await withRunDir(`${version}-relay-link`, async (runDir, onCleanup) => {
      const { daemon, checkpoint, file, writtenBeforeReady, id } = await relayed(t, version, runDir, onCleanup, ['--staging-restores', '2']);
      assert.ok(writtenBeforeReady, 'lazyd-link.json is in -D by the time lazyd staging relay says the pull runs');
      assert.equal(fs.statSync(file).mode & 0o777, 0o600, 'mode 0600');
      const capability = await readLinkCapability(checkpoint.imagesDir);
      assert.ok(capability);
      assert.match(capability.token, /^[0-9a-f]{32}$/);
      assert.deepEqual([capability.version, capability.features, capability.checkpoint], [1, ['bind', 'checksum', 'priority', 'resume'], id]);

      const recording = await startRelay(daemon.server, { record: 4096 });
      onCleanup(() => recording.close());
      const verify = (name: string, restored: Awaited<ReturnType<typeof lazyRestore>>) => {
        assert.equal(restored.lazyPages.copied, restored.lazyPages.total, `${name}: every lazy page installed`);
        assert.ok(restored.passes[0].every((p) => p.ok === checkpoint.dataPages && p.bad === 0), `${name}: the workload verifies clean`);
      };

      // lazyd lazy-pages from a copy of -D (the images and lazyd-link.json): HELLO first, with the file's token.
      const linked = await lazyRestore({ checkpoint, server: recording, daemon: 'lazyd', name: 'dst-lazyd', progress: testProgress(t), onCleanup, timeouts });
      verify('lazyd', linked);
      assert.match(fs.readFileSync(path.join(linked.dstDir, 'lazy-pages.log'), 'utf8'), /lazyd link/, 'its log says it uses the link');
      let sessions = recording.recorded();
      assert.equal(sessions.length, 2, 'the main connection and the priority one (docs/protocol.md §7.5)');
      const [hello, priority] = sessions;
      const main = LINK_FEATURE_BIND | LINK_FEATURE_CHECKSUM | LINK_FEATURE_RESUME;
      for (const [name, session, features] of [['main', hello, main], ['priority', priority, main | LINK_FEATURE_PRIORITY]] as const) {
        assert.equal(session['to-server'].readUInt32LE(0), HELLO_MAGIC, `${name}: lazyd lazy-pages opened with HELLO`);
        assert.equal(session['to-server'].subarray(16, 32).toString('hex'), capability.token, `${name}: with the file's token`);
        assert.equal(session['to-server'].readBigUInt64LE(8), features, `${name}: the features asked`);
        assert.equal(session['to-client'].readUInt32LE(0), HELLO_MAGIC, `${name}: the daemon answered the HELLO`);
        assert.equal(session['to-client'].readInt32LE(16), 0, `${name}: HELLO granted`);
        assert.equal(session['to-client'].readBigUInt64LE(8), features, `${name}: all granted`);
        assert.equal(Number(session['to-client'].readBigUInt64LE(24)), id, `${name}: bound to the relayed checkpoint`);
      }
      assert.equal(hello['to-server'].readUInt32LE(32), 7, 'then CRIU GETs');

      // criu lazy-pages from the same copy (the file beside its images): not one extension byte either way.
      verify('criu', await lazyRestore({ checkpoint, server: recording, daemon: 'criu', name: 'dst-criu', progress: testProgress(t), onCleanup, timeouts }));
      sessions = recording.recorded();
      assert.equal(sessions.length, 3);
      const stock = sessions[2];
      assert.equal(stock['to-server'].readUInt32LE(0), 7, 'its first request is a CRIU GET');
      assert.equal(stock['to-server'].indexOf(HELLO_BYTES), -1, 'no HELLO byte sent');
      assert.equal(stock['to-client'].readUInt32LE(0), GET_REPLY_CMD, 'its first reply is ADD_F|PE_PRESENT');
      assert.equal(stock['to-client'].indexOf(HELLO_BYTES), -1, 'no HELLO reply byte received');

      // --staging-restores 2 reached: the checkpoint is released, and its file with it.
      await pollFor('lazyd-link.json removed after the release', 20_000, () => (fs.existsSync(file) ? undefined : true));
      assert.match(fs.readFileSync(daemon.server.logFile, 'utf8'), new RegExp(`Staged checkpoint #${id} released: after 2 completed restores`));
    });
  });

  test(`CRIU ${version}: a bit flipped in a relayed page is fetched again and counted (${CHECKSUM_METRIC}); the workload verifies`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    requireHost();
    const format = version === '4.1.1' ? 24 : 32;
    await withRunDir(`${version}-relay-link-flip`, async (runDir, onCleanup) => {
      const { daemon, checkpoint } = await relayed(t, version, runDir, onCleanup);
      const flipping = await startRelay(daemon.server, { flip: { format, range: await dataArea(checkpoint.imagesDir) } });
      onCleanup(() => flipping.close());
      const scrape = checksumScrape();
      const restored = await lazyRestore({
        checkpoint, server: flipping, daemon: 'lazyd', name: 'dst', progress: testProgress(t), onCleanup, timeouts,
        daemonArgs: scrape.daemonArgs, onDaemonReady: scrape.onDaemonReady,
      });
      const mismatches = await scrape.mismatches();
      assert.equal(flipping.flipped.length, 1, 'one bit flipped');
      assert.equal(restored.lazyPages.copied, restored.lazyPages.total, 'every lazy page installed');
      assert.ok(restored.passes[0].every((p) => p.ok === checkpoint.dataPages && p.bad === 0), 'the workload verifies clean');
      assert.equal(mismatches, 1, `${CHECKSUM_METRIC} after the restore`);
      const { pid, vaddr } = flipping.flipped[0];
      const warned = fs.readFileSync(path.join(restored.dstDir, 'lazy-pages.log'), 'utf8').split('\n').filter((l) => l.includes('failed their checksum'));
      assert.equal(warned.length, 1, `one line about the mismatch:\n${warned.join('\n')}`);
      assert.match(warned[0], new RegExp(`pid ${pid} from 0x${vaddr.toString(16)} failed their checksum .*fetching them again`));
    });
  });
}
