// End-to-end: TLS (`--tls`, docs/protocol.md §1.9) between lazyd and real CRIU 4.1.1 / 4.2.1, in every direction, with
// the self-verifying workload, and certificates made here (openssl, test/harness/pki.ts):
//   (a) lazyd --page-server --tls            ↔ criu lazy-pages --tls
//   (b) criu dump --lazy-pages --tls         ↔ lazyd lazy-pages --tls
//   (c) criu page-server --lazy-pages --tls  ↔ lazyd lazy-pages --tls
//   (d) lazyd ↔ lazyd (serve mode, and the drop-in `lazyd page-server --lazy-pages`)
//   (e) criu dump --page-server --tls uploads into lazyd (staging), restored from it
//   (f) refused peers (revoked, unknown CA, wrong name, no certificate, plain TCP): one clear line each, the
//       daemon keeps serving a good restore afterwards; --tls-no-cn-verify accepts the wrong name
//   (g) plain and TLS do not mix, and both ends say so
// The lazyd client's refusals run with a stand-in restore that only hands over userfaultfds
// (test/harness/fake-restore.ts): lazyd connects to the page server once every task is handed over.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { after, before, test, type TestContext } from 'node:test';
import {
  buildWorkload,
  checkHost,
  checkpointWorkload,
  copyCheckpointImages,
  CRIU_VERSIONS,
  dumpPageCounts,
  findCriu,
  instanceDirs,
  killWorkload,
  lastPassSum,
  lazyRestore,
  makeTestPki,
  nowNs,
  PAGES_PER_MIB,
  pollFor,
  runCriu,
  runLazyMigration,
  startFakeRestore,
  startLazyPagesDaemon,
  startPageServer,
  startWorkload,
  tlsArgs,
  waitForAllPasses,
  withRunDir,
  type Checkpoint,
  type CriuVersion,
  type DaemonKind,
  type SourceKind,
  type MigrationResult,
  type PageServer,
  type TestPki,
} from '../harness/index.js';

const TEST_TIMEOUT_MS = 90_000;
const MIB = 16;
const timeouts = { dumpMs: 30_000, readyMs: 15_000, restoreMs: 30_000, allPagesMs: 45_000, passesMs: 20_000 };

let pki: TestPki;
let pkiDir: string;
before(async () => {
  checkHost(CRIU_VERSIONS);
  pkiDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-tls-pki-'));
  pki = await makeTestPki(pkiDir);
});
after(() => {
  if (pkiDir) fs.rmSync(pkiDir, { recursive: true, force: true });
});

function diag(t: TestContext) {
  return (message: string) => t.diagnostic(message);
}

function readText(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

/** The last value of a counter in a lazyd log, text (`name=N`) or JSON (`"name":N`). */
function logCounter(log: string, name: string): number | undefined {
  const values = [...log.matchAll(new RegExp(`(?:\\b${name}=|"${name}":)(\\d+)`, 'g'))];
  return values.length ? Number(values[values.length - 1][1]) : undefined;
}

function assertComplete(result: MigrationResult): void {
  assert.equal(result.lazyPages.copied, result.lazyPages.total, 'every lazy page installed');
  assert.ok(result.lazyPages.total >= result.dataPages, `lazy pages ${result.lazyPages.total} cover the ${result.dataPages} data pages`);
  assert.equal(result.passes[0][0].ok, result.dataPages, 'the restored workload verified every data page');
}

/** The lazyd daemon's log of a restore (lazy-pages.log in the destination dir). */
function lazydLog(runDir: string, name = 'dst'): string {
  return readText(path.join(runDir, name, 'lazy-pages.log'));
}

const TLS_SESSION_RE = /Pages come from page-server 127\.0\.0\.1:\d+ over \(TLS1\.[23]\)/;

/**
 * One lazy migration with TLS on both ends (`server` with pki.a's certificate, the lazy-pages daemon with pki.b's),
 * verified complete; returns the page server's and the daemon's logs as they were when the restore finished.
 */
async function tlsMigration(t: TestContext, version: CriuVersion, server: SourceKind, daemon: DaemonKind) {
  // lazyd's servers get a 1 MiB --max-session-bytes, far below the 16 MiB served: a reply's bytes must be
  // released from that budget as TLS sends them (they once were not, and a session stopped after 64 MiB).
  const serverTls = [...tlsArgs(pki, { as: pki.a }), ...(server.startsWith('lazyd') ? ['--max-session-bytes', String(1 << 20)] : [])];
  let serverLog = '';
  let daemonLog = '';
  const result = await runLazyMigration({
    criuVersion: version,
    server,
    daemon,
    workload: { mib: MIB },
    ...(server === 'criu-dump' ? { dumpArgs: serverTls } : { serverOptions: { extraArgs: serverTls } }),
    daemonArgs: tlsArgs(pki, { as: pki.b }),
    timeouts,
    progress: diag(t),
    afterFinish: (running) => {
      serverLog = readText(running.logFile); // page servers only; the lazy dump has its own log
    },
    onRestored: (_restored, checkpoint) => {
      daemonLog = lazydLog(checkpoint.runDir);
    },
  });
  assertComplete(result);
  return { serverLog, daemonLog };
}

for (const version of CRIU_VERSIONS) {
  test(`CRIU ${version}: (a) lazyd --page-server --tls serves criu lazy-pages --tls`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const { serverLog, daemonLog } = await tlsMigration(t, version, 'lazyd', 'criu');
    assert.match(daemonLog, /tls: TLS handshake completed/, 'criu lazy-pages ran TLS');
    assert.match(serverLog, /Page-server session finished/);
    assert.equal(logCounter(serverLog, 'tlsFailures'), 0);
  });

  test(`CRIU ${version}: (b) criu dump --lazy-pages --tls serves lazyd lazy-pages --tls`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const { daemonLog } = await tlsMigration(t, version, 'criu-dump', 'lazyd');
    assert.match(daemonLog, TLS_SESSION_RE);
  });

  test(`CRIU ${version}: (c) criu page-server --lazy-pages --tls serves lazyd lazy-pages --tls`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const { serverLog, daemonLog } = await tlsMigration(t, version, 'criu', 'lazyd');
    assert.match(daemonLog, TLS_SESSION_RE);
    assert.match(serverLog, /tls: TLS handshake completed/);
    assert.doesNotMatch(serverLog, /Error/, 'criu page-server ends its TLS session cleanly');
  });

  // (d) lazyd on both ends: serve mode with 4.2.1, criu's drop-in command line with 4.1.1.
  const kind = version === '4.1.1' ? 'lazyd-dropin' : 'lazyd';
  test(`CRIU ${version}: (d) lazyd ${kind === 'lazyd' ? '--page-server' : 'page-server --lazy-pages'} --tls serves lazyd lazy-pages --tls`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const { serverLog, daemonLog } = await tlsMigration(t, version, kind, 'lazyd');
    assert.match(daemonLog, TLS_SESSION_RE);
    assert.equal(logCounter(serverLog, 'tlsFailures'), 0);
  });

  // (e) Diskless staging over TLS: the dump uploads into lazyd (same port as the lazy fetches), lazyd decrypts
  // the payload records into its memory store; criu lazy-pages --tls restores from it.
  test(`CRIU ${version}: (e) criu dump --page-server --tls uploads into lazyd, restored over TLS`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const criu = findCriu(version);
    await withRunDir(`${version}-tls-staging`, async (runDir, onCleanup) => {
      // criu's is_stack() quirk (see checkpointWorkload in the harness) applies to uploads too: a dump in which criu
      // marked no page of a task lazy cannot test a lazy restore, so it is done again with a fresh workload and
      // server (at most 3 times).
      let server: PageServer | undefined;
      let checkpoint: Checkpoint | undefined;
      for (let attempt = 1; !checkpoint; attempt++) {
        const stagingDir = path.join(runDir, `src-${attempt}`);
        fs.mkdirSync(stagingDir, { recursive: true });
        const started = await startPageServer({ kind: 'lazyd', imagesDir: stagingDir, extraArgs: tlsArgs(pki, { as: pki.a }) });
        onCleanup(() => started.kill());
        const workloadDir = path.join(runDir, `w-${attempt}`);
        const workload = await startWorkload(await buildWorkload(), workloadDir, { mib: MIB }, timeouts.readyMs);
        onCleanup(() => killWorkload(workload));
        await waitForAllPasses(workloadDir, 0, 1, timeouts.passesMs, { pid: workload.pid });
        const sums = instanceDirs(workloadDir, 0).map((dir) => lastPassSum(dir));
        const dumpStartNs = nowNs();
        const dump = await runCriu(
          criu,
          'dump',
          ['-t', String(workload.pid), '-D', stagingDir, '-v4', '-o', 'dump.log', '--page-server', '--address', '127.0.0.1',
            '--port', String(started.port), ...tlsArgs(pki, { as: pki.b })],
          timeouts.dumpMs,
          { imagesDir: stagingDir },
        );
        await workload.unshare.wait(10_000);
        assert.match(readText(path.join(stagingDir, 'dump.log')), /tls: TLS handshake completed/);
        // lazyd stages the upload when the dump hangs up after its CLOSE status, which may trail the dump's exit:
        // the restore's GETs find the pages once it has.
        await logShows(started, /Staged checkpoint #\d+: pids \d+/);
        const eager = (await dumpPageCounts(stagingDir)).filter((c) => c.lazyPages === 0).map((c) => c.file);
        if (eager.length > 0) {
          if (attempt >= 3) throw new Error(`criu dump --page-server --tls: ${eager.join(', ')} without a lazy page, 3 times in a row`);
          t.diagnostic(`criu dump: ${eager.join(', ')} has no lazy page (criu is_stack() quirk), dumping a fresh workload`);
          started.kill();
          continue;
        }
        server = started;
        checkpoint = {
          criu, runDir, workloadDir, imagesDir: stagingDir, workload: { mib: MIB }, dataPages: MIB * PAGES_PER_MIB,
          lazyPages: 0, attempts: attempt, sums, dumpStartNs, dumpMs: dump.ms,
        };
      }
      const restored = await lazyRestore({
        checkpoint, server: server!, daemon: 'criu', daemonArgs: tlsArgs(pki, { as: pki.a }), progress: diag(t), onCleanup, timeouts,
      });
      assert.equal(restored.lazyPages.copied, restored.lazyPages.total, 'every lazy page installed');
      assert.ok(restored.lazyPages.total >= checkpoint.dataPages);
      assert.equal(restored.passes[0][0].ok, checkpoint.dataPages);
      await server!.finish();
      const log = readText(server!.logFile);
      assert.match(log, /Upload finished: the dump has its CLOSE status/);
      assert.match(log, /Page-server session finished/);
      assert.equal(logCounter(log, 'tlsFailures'), 0);
    });
  });
}

// ---------------------------------------------------------------- refusals

const CLOSE_V24 = Buffer.from([0x23, 0x10, 0, 0, ...new Array(20).fill(0)]);

/**
 * A TLS client (node's, OpenSSL) that presents `as` (or no certificate), sends CLOSE once connected and collects
 * what comes back until the server ends the connection. Resolves with the bytes received, or the error.
 */
function tlsClient(port: number, as: { cert: string; key: string } | undefined): Promise<{ data: Buffer; error?: string }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let error: string | undefined;
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      ca: fs.readFileSync(pki.ca),
      ...(as ? { cert: fs.readFileSync(as.cert), key: fs.readFileSync(as.key) } : {}),
      checkServerIdentity: () => undefined, // the server's name is not what these tests look at
    });
    const timer = setTimeout(() => socket.destroy(new Error('no end within 5 s')), 5000);
    socket.on('secureConnect', () => socket.write(CLOSE_V24));
    socket.on('data', (chunk) => {
      chunks.push(chunk);
      if (Buffer.concat(chunks).length >= 4) socket.end();
    });
    socket.on('error', (e) => (error = e.message));
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ data: Buffer.concat(chunks), error });
    });
  });
}

/** A plain TCP client that sends CLOSE and waits for the server to end the connection. */
function plainClient(port: number): Promise<Buffer> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const socket = net.connect({ host: '127.0.0.1', port }, () => socket.write(CLOSE_V24));
    const timer = setTimeout(() => socket.destroy(), 5000);
    socket.on('data', (chunk) => chunks.push(chunk));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
  });
}

/** Waits for a line of the server's log (a deadline only a failure reaches: a loaded machine is slow). */
async function logShows(server: PageServer, what: RegExp): Promise<string> {
  return pollFor(`${what} in ${server.logFile}`, 20_000, () => {
    const line = readText(server.logFile).split('\n').find((l) => what.test(l));
    return line;
  }, 20);
}

/** lazyd lazy-pages with these flags against `server`, driven by a stand-in restore; it must fail: its output. */
async function lazydClientFails(checkpoint: Checkpoint, name: string, server: { address: string; port: number }, args: string[], onCleanup: (fn: () => unknown) => void): Promise<string> {
  const dstDir = path.join(checkpoint.runDir, name);
  copyCheckpointImages(checkpoint.imagesDir, dstDir);
  const pids = (await dumpPageCounts(checkpoint.imagesDir)).map((c) => Number(/pagemap-(\d+)\.img/.exec(c.file)![1]));
  const daemon = await startLazyPagesDaemon({ daemon: 'lazyd', criu: checkpoint.criu, dstDir, server, extraArgs: args, readyTimeoutMs: timeouts.readyMs });
  onCleanup(() => daemon.kill('SIGKILL'));
  const fake = await startFakeRestore(path.join(dstDir, 'lazy-pages.socket'), pids);
  onCleanup(() => fake.kill('SIGKILL'));
  const exit = await daemon.wait(15_000);
  assert.equal(exit.code, 1, `lazyd lazy-pages ${args.join(' ')} must fail: ${daemon.outputText}`);
  const fakeExit = await fake.wait(5000);
  assert.equal(fakeExit.signal, 'SIGKILL', 'the handed-over task is killed (its pages can never come)');
  return daemon.outputText;
}

const refusalVersion: CriuVersion = '4.2.1';

// Cleanups of processes the hooks start (runLazyMigration owns its own).
const cleanups: (() => unknown)[] = [];
async function runCleanups(): Promise<void> {
  for (const fn of cleanups.splice(0).reverse()) await fn();
}


test(`CRIU ${refusalVersion}: (f) refused peers get one clear line each; the daemon keeps serving a good restore`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const result = await runLazyMigration({
    criuVersion: refusalVersion,
    server: 'lazyd',
    daemon: 'criu',
    workload: { mib: MIB },
    serverOptions: { extraArgs: [...tlsArgs(pki, { as: pki.a }), '--tls-handshake-timeout', '1'] },
    daemonArgs: tlsArgs(pki, { as: pki.b }),
    timeouts,
    progress: diag(t),
    beforeRestore: async (server, checkpoint) => {
      const cases: [string, { cert: string; key: string } | undefined, RegExp][] = [
        ['revoked', pki.revoked, /TLS: the peer's certificate is revoked \(CRL .*crl\.pem\)/],
        ['unknown CA', pki.untrusted, /TLS: the peer's certificate is signed by an unknown CA \(trusted: .*ca\.pem\); pass the CA/],
        ['wrong name', pki.wrongName, /TLS: the peer's certificate does not name 127\.0\.0\.1 \(--address\);.*--tls-no-cn-verify/],
        ['no certificate', undefined, /TLS: the peer sent no certificate/],
      ];
      for (const [what, as, expected] of cases) {
        const outcome = await tlsClient(server.port, as);
        assert.equal(outcome.data.length, 0, `${what}: the server must answer nothing`);
        const line = await logShows(server, expected);
        t.diagnostic(`${what}: ${line.trim()} (client: ${outcome.error ?? 'closed'})`);
      }
      const plain = await plainClient(server.port);
      assert.equal(plain.length, 0, 'a plain client gets no answer from a TLS server');
      t.diagnostic((await logShows(server, /TLS: the peer speaks the plain page-server protocol, not TLS/)).trim());
      // lazyd's own client, plain, against this TLS server (it sends no request: the stand-in restore makes no
      // fault): dropped after --tls-handshake-timeout, it fails and says what to check.
      const started = performance.now();
      const output = await lazydClientFails(checkpoint, 'dst-plain', server, [], (fn) => cleanups.push(fn));
      t.diagnostic(`plain lazyd client: ${(performance.now() - started).toFixed(0)} ms: ${output.trim()}`);
      assert.match(output, /the page server closed the connection .*before its first reply: if it runs with --tls, pass --tls too/);
      await logShows(server, /TLS: the peer did not complete the handshake within 1 s; session dropped/);
    },
    afterFinish: (server) => {
      const log = readText(server.logFile);
      assert.match(log, /Page-server session finished/, 'the good restore after the refusals was served');
      assert.equal(logCounter(log, 'tlsFailures'), 6, 'every refused handshake is counted');
    },
  });
  await runCleanups();
  assertComplete(result);
});

test(`CRIU ${refusalVersion}: (f) a server certificate for another name: refused by lazyd, accepted with --tls-no-cn-verify`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
  let refusal = '';
  let serverLog = '';
  const result = await runLazyMigration({
    criuVersion: refusalVersion,
    server: 'criu',
    daemon: 'lazyd',
    workload: { mib: MIB },
    // criu page-server with a certificate that names 127.0.0.2, told not to check our name either.
    serverOptions: { extraArgs: tlsArgs(pki, { as: pki.wrongName, noCnVerify: true }) },
    daemonArgs: tlsArgs(pki, { as: pki.b, noCnVerify: true }),
    timeouts,
    progress: diag(t),
    beforeRestore: async (_server, checkpoint) => {
      // criu's server serves one session: the refusal runs against a lazyd server with the same certificate.
      const other = await startPageServer({ kind: 'lazyd', imagesDir: checkpoint.imagesDir, logFile: 'refusing-server.log', extraArgs: tlsArgs(pki, { as: pki.wrongName, noCnVerify: true }) });
      cleanups.push(() => other.kill());
      refusal = await lazydClientFails(checkpoint, 'dst-refused', other, tlsArgs(pki, { as: pki.b }), (fn) => cleanups.push(fn));
      await other.finish();
      serverLog = readText(other.logFile);
    },
  });
  await runCleanups();
  assertComplete(result);
  assert.match(refusal, /TLS handshake with the page server 127\.0\.0\.1:\d+ failed: the peer's certificate does not name 127\.0\.0\.1 \(--address\)/);
  assert.match(serverLog, /TLS: the peer refused the TLS handshake with alert/, 'the server learns why from the alert');
  assert.equal(logCounter(serverLog, 'tlsFailures'), 1);
});

test(`CRIU ${refusalVersion}: (h) --tls-allow-fetch-name: a restore whose certificate names an allowed name completes; one that names none is refused after the handshake`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
  let refusal = '';
  let serverLog = '';
  const result = await runLazyMigration({
    criuVersion: refusalVersion,
    server: 'lazyd',
    daemon: 'criu',
    workload: { mib: MIB },
    // pki.b names IP:127.0.0.1 and DNS:localhost: allowed to fetch by the name localhost.
    serverOptions: { extraArgs: [...tlsArgs(pki, { as: pki.a }), '--tls-allow-fetch-name', 'localhost', '--tls-allow-upload-name', 'uploader.invalid'] },
    daemonArgs: tlsArgs(pki, { as: pki.b }),
    timeouts,
    progress: diag(t),
    beforeRestore: async (_server, checkpoint) => {
      const other = await startPageServer({
        kind: 'lazyd',
        imagesDir: checkpoint.imagesDir,
        logFile: 'names-server.log',
        extraArgs: [...tlsArgs(pki, { as: pki.a }), '--tls-allow-fetch-name', 'restore.invalid'],
      });
      cleanups.push(() => other.kill());
      // A TLS client with pki.b (a good certificate, chain and CRL pass) sends the GET a restore would: the session
      // is refused at it, nothing served. (lazyd lazy-pages sends its first GET only after RSTF.)
      const [first] = await dumpPageCounts(checkpoint.imagesDir);
      const pid = Number(/pagemap-(\d+)\.img/.exec(first.file)![1]);
      const get = Buffer.alloc(32);
      get.writeUInt32LE(7, 0);
      get.writeBigUInt64LE(1n, 8);
      get.writeBigUInt64LE(0x7f0000000000n, 16);
      get.writeBigUInt64LE(BigInt(pid), 24);
      refusal = await new Promise<string>((resolve) => {
        let received = 0;
        const socket = tls.connect(
          { host: '127.0.0.1', port: other.port, ca: fs.readFileSync(pki.ca), cert: fs.readFileSync(pki.b.cert), key: fs.readFileSync(pki.b.key), servername: 'localhost' },
          () => socket.write(get),
        );
        socket.on('data', (d) => (received += d.length));
        socket.on('close', () => resolve(`closed by the server after ${received} bytes`));
        socket.on('error', (error) => resolve(`error ${error.message} after ${received} bytes`));
      });
      await other.finish();
      serverLog = readText(other.logFile);
    },
  });
  await runCleanups();
  assertComplete(result);
  assert.match(refusal, / after 0 bytes$/, refusal);
  assert.match(serverLog, /fetch refused: the peer's certificate \(IP:127\.0\.0\.1, DNS:localhost\) names none of restore\.invalid \(--tls-allow-name or --tls-allow-fetch-name\); session dropped/);
  assert.equal(logCounter(serverLog, 'accessRefused'), 1);
  assert.equal(logCounter(serverLog, 'tlsFailures'), 0, 'the handshake itself succeeded');
});

test(`CRIU ${refusalVersion}: (g) a TLS client and a plain server: both ends say TLS does not match`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const criu = findCriu(refusalVersion);
  await withRunDir(`${refusalVersion}-tls-mismatch`, async (runDir, onCleanup) => {
    const checkpoint = await checkpointWorkload({ criu, runDir, workload: { mib: 1 }, progress: diag(t), onCleanup, timeouts });
    const server = await startPageServer({ kind: 'lazyd', imagesDir: checkpoint.imagesDir });
    onCleanup(() => server.kill());
    const output = await lazydClientFails(checkpoint, 'dst-tls', server, tlsArgs(pki, { as: pki.b }), onCleanup);
    assert.match(output, /TLS handshake with the page server 127\.0\.0\.1:\d+ failed: the peer closed the connection during the TLS handshake .*does it run with --tls\?/);
    t.diagnostic((await logShows(server, /the bytes are a TLS ClientHello: the peer runs with --tls; start lazyd with --tls too/)).trim());
    // A missing certificate file stops lazyd at start, with the flag to fix.
    const missing = await startLazyPagesDaemon({
      daemon: 'lazyd', criu, dstDir: path.join(runDir, 'dst-tls'), server, extraArgs: ['--tls', '--tls-cert', path.join(runDir, 'nope.pem')], readyTimeoutMs: timeouts.readyMs,
    }).then(
      () => assert.fail('lazyd started without its certificate'),
      (error: Error) => error.message,
    );
    assert.match(missing, /TLS: cannot read .*nope\.pem \(--tls-cert\): No such file or directory — pass --tls-cert and --tls-key/);
    await server.finish();
  });
});
