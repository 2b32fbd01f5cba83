// End-to-end: lazyd in production — metrics scraped during and after a real lazy restore (real CRIU, real
// userfaultfd), systemd readiness over a real unix datagram socket, JSON logs with a log file reopened on SIGHUP,
// a config file, SIGTERM drain, the text format on a terminal (a pty from `script`), and `lazyd check` on this host
// and with CAP_SYS_PTRACE dropped.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import {
  checkpointWorkload,
  copyCheckpointImages,
  E2E_TIMEOUTS,
  findCriu,
  killPidNamespace,
  readPidfile,
  requireHost,
  runCriu,
  withRunDir,
  encodeHeader,
  lazydBin,
  onFreePort,
  pollFor,
  runLazyMigration,
  startWithStatusFd,
  testProgress,
  type Proc,
} from '../harness/index.js';
import { PS_IOV_CLOSE } from '../../src/protocol/constants.js';
import { repoRoot } from '../../src/paths.js';
import { totalServedSessions, type ServedSessions } from '../harness/session-log.js';
import { fixturePath } from '../fixtures/fixtures.js';

const TEST_TIMEOUT_MS = 120_000;
const timeouts = E2E_TIMEOUTS;
const FIXTURE_IMAGES = fixturePath('4.2.1', 'plain-dump', 'images');

const diag = testProgress;
/** How long a wait for something the daemon does may take before the test fails (a loaded machine is slow). */
const WAIT_MS = 15_000;

// ---------------------------------------------------------------- Prometheus text format

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
interface Scrape {
  /** When the request was sent: the answer shows the state at this moment or later. */
  atMs: number;
  types: Map<string, string>;
  samples: Sample[];
}

function parseExposition(text: string, atMs: number): Scrape {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) types.set(type[1], type[2]);
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const pair of (m[2] ?? '').match(/\w+="[^"]*"/g) ?? []) {
      const eq = pair.indexOf('=');
      labels[pair.slice(0, eq)] = pair.slice(eq + 2, -1);
    }
    samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return { atMs, types, samples };
}

function value(scrape: Scrape, name: string, labels: Record<string, string> = {}): number {
  const found = scrape.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  assert.equal(found.length, 1, `${name}${JSON.stringify(labels)}: ${found.length} samples`);
  return found[0].value;
}

function sum(scrape: Scrape, name: string): number {
  return scrape.samples.filter((s) => s.name === name).reduce((a, s) => a + s.value, 0);
}

async function scrape(url: string): Promise<Scrape | undefined> {
  const sentAt = performance.now();
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
    if (response.status !== 200) return undefined;
    return parseExposition(await response.text(), sentAt);
  } catch {
    return undefined; // not listening (yet, or any more)
  }
}

/** Scrapes every intervalMs until stop(); keeps every answer (after `first`, a scrape taken before). */
function scraper(url: string, first: Scrape[] = [], intervalMs = 50) {
  const scrapes: Scrape[] = [...first];
  let running = true;
  const loop = (async () => {
    while (running) {
      const s = await scrape(url);
      if (s) scrapes.push(s);
      await sleep(intervalMs);
    }
  })();
  return {
    scrapes,
    async stop() {
      running = false;
      await loop;
    },
  };
}

/** The URL a lazyd process logged for its metrics ("Metrics on http://…/metrics", before it signals readiness). */
function metricsUrl(logFile: string): string {
  const m = /Metrics on (http:\/\/\S+\/metrics)/.exec(fs.readFileSync(logFile, 'utf8'));
  assert.ok(m, `no "Metrics on <url>" line in ${logFile}`);
  return m[1];
}

/** How long lazyd lazy-pages serves its final totals; the test ends the linger with SIGTERM once it has them. */
const METRICS_LINGER_S = 60;

const ALLOWED_LABELS = new Set(['version', 'node_version', 'criu_abi', 'role', 'result', 'path', 'le']);

/** Prometheus naming: counters end in _total, base units, no pid or address in any label. */
function assertNaming(s: Scrape, pids: number[]): void {
  for (const [name, type] of s.types) {
    assert.match(name, /^lazyd_[a-z_]+$/);
    if (type === 'counter') assert.match(name, /_total$/, `counter ${name}`);
    if (type !== 'counter') assert.doesNotMatch(name, /_total$/, `${type} ${name}`);
    assert.doesNotMatch(name, /_(ms|us|microseconds|milliseconds|kb|mb|mib|kib)(_|$)/, `${name}: base units only`);
  }
  for (const sample of s.samples) {
    for (const [label, v] of Object.entries(sample.labels)) {
      assert.ok(ALLOWED_LABELS.has(label), `${sample.name}: label ${label}`);
      assert.doesNotMatch(v, /^\d+\.\d+\.\d+\.\d+|:\d+$|^\[/, `${sample.name}{${label}="${v}"} looks like an address`);
      assert.ok(!pids.includes(Number(v)), `${sample.name}{${label}="${v}"} is a pid`);
    }
  }
}

test('metrics: scraped during and after a real lazy restore (CRIU 4.2.1, lazyd on both ends)', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  requireHost();
  // Port 0: each lazyd picks a free port for its metrics and logs the URL (a port picked here could be taken).
  let serverUrl = '';
  let serverLog = '';
  let serverScrapes: ReturnType<typeof scraper> | undefined;
  let daemonScrapes: ReturnType<typeof scraper> | undefined;
  let released: Promise<void> | undefined;
  let releaseError: Error | undefined;
  let taskLines: string[] = [];
  let served: ServedSessions | undefined;
  const pids: number[] = [];
  // lazyd lazy-pages under a systemd-like supervisor too: READY=1 when it listens, STOPPING=1 with the summary.
  const notifyDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-ops-notify-'));
  const notify = await notifySocket(path.join(notifyDir, 'notify.sock'));
  t.after(() => {
    notify.close();
    fs.rmSync(notifyDir, { recursive: true, force: true });
  });
  const result = await runLazyMigration({
    criuVersion: '4.2.1',
    server: 'lazyd',
    daemon: 'lazyd',
    workload: { mib: 32, order: 'random', seed: 3 },
    serverOptions: { extraArgs: ['--metrics-address', '127.0.0.1:0'] },
    daemonArgs: ['--metrics-address', '127.0.0.1:0', '--metrics-linger', String(METRICS_LINGER_S)],
    daemonEnv: { NOTIFY_SOCKET: path.join(notifyDir, 'notify.sock') },
    progress: diag(t),
    timeouts,
    beforeRestore: async (server) => {
      pids.push(server.pid);
      serverLog = server.logFile;
      serverUrl = metricsUrl(server.logFile);
      const first = await scrape(serverUrl);
      assert.ok(first, 'the page server serves /metrics once ready');
      assert.equal(value(first, 'lazyd_page_server_sessions_total'), 0);
      serverScrapes = scraper(serverUrl, [first]);
    },
    onDaemonReady: async (daemon, dstDir) => {
      // The daemon is ready and criu restore has not started: this first scrape is taken before any page can be
      // installed.
      const daemonUrl = metricsUrl(path.join(dstDir, 'lazy-pages.log'));
      const first = await scrape(daemonUrl);
      assert.ok(first, 'the lazy-pages daemon serves /metrics once ready');
      daemonScrapes = scraper(daemonUrl, [first]);
      // The last scrapes must show the final totals of both ends: once the daemon says it is done (STOPPING=1) and
      // the page server has logged the session's end, wait for a scrape of each sent after that, then end the
      // daemon's linger (SIGTERM after a completed restore: exit 0).
      released = (async () => {
        const done = notify.waitFor(/^STOPPING=1\nSTATUS=done: /, timeouts.allPagesMs);
        done.catch(() => undefined); // once the daemon has exited, nobody waits for it any more
        if ((await Promise.race([done, daemon.exited.then(() => 'exited' as const)])) === 'exited') return; // failed: the restore says why
        await pollFor("the page server's session end in its log", WAIT_MS, () =>
          fs.readFileSync(serverLog, 'utf8').includes('Page-server session finished') ? true : undefined,
        );
        const ended = performance.now();
        const scrapedAfter = (s: ReturnType<typeof scraper>) => s.scrapes.length >= 3 && s.scrapes.at(-1)!.atMs > ended;
        await pollFor('a scrape of each end after the restore ended', WAIT_MS, () =>
          scrapedAfter(daemonScrapes!) && scrapedAfter(serverScrapes!) ? true : undefined,
        );
        await daemonScrapes!.stop();
        daemon.kill('SIGTERM');
      })();
      released.catch((error: Error) => {
        releaseError = error;
        daemon.kill('SIGKILL'); // the restore then fails, and the test reports this error as the cause
      });
    },
    afterFinish: (server) => {
      // The serve-mode log is JSON (a file); the demo and the benchmarks total its session lines.
      served = totalServedSessions(fs.readFileSync(server.logFile, 'utf8'));
    },
    onRestored: async (restored) => {
      pids.push(restored.restoredPid);
      // The lazy-pages daemon has exited by now: it lingered until the scrapes had its final totals.
      await released;
      taskLines = fs
        .readFileSync(path.join(restored.dstDir, 'lazy-pages.log'), 'utf8')
        .split('\n')
        .filter((l) => /UFFD transferred pages: .* task \d+:/.test(l));
    },
  }).catch((error: Error) => {
    throw releaseError ?? error;
  });
  await serverScrapes!.stop();
  const daemon = daemonScrapes!.scrapes;
  const server = serverScrapes!.scrapes;
  t.diagnostic(`${daemon.length} scrapes of lazyd lazy-pages, ${server.length} of lazyd --page-server`);
  assert.ok(daemon.length >= 3 && server.length >= 3);

  // Types and naming, on every scrape.
  for (const s of [...daemon, ...server]) assertNaming(s, pids);
  const last = daemon.at(-1)!;
  assert.equal(last.types.get('lazyd_fault_service_seconds'), 'histogram');
  assert.equal(last.types.get('lazyd_faults_total'), 'counter');
  assert.equal(last.types.get('lazyd_pages_installed_total'), 'counter');
  assert.equal(last.types.get('lazyd_pages_remaining'), 'gauge');
  assert.equal(last.types.get('lazyd_page_requests_in_flight'), 'gauge');
  assert.equal(last.types.get('lazyd_tasks_active'), 'gauge');
  assert.equal(last.types.get('lazyd_tls_failures_total'), 'counter');
  assert.equal(value(last, 'lazyd_build_info', { role: 'lazy-pages' }), 1);

  // During: the daemon answered before any page was installed, and counters never went backwards.
  assert.equal(sum(daemon[0], 'lazyd_pages_installed_total'), 0, 'first scrape: before the restore');
  for (let i = 1; i < daemon.length; i++) {
    for (const name of ['lazyd_faults_total', 'lazyd_pages_installed_total', 'lazyd_lazy_pages_received_bytes_total']) {
      assert.ok(sum(daemon[i], name) >= sum(daemon[i - 1], name), `${name} went backwards`);
    }
  }
  const during = daemon.filter((s) => value(s, 'lazyd_restores_active') === 1).length;
  t.diagnostic(`${during} scrapes while the restore was active`);

  // After: every lazy page of the dump installed, counters consistent with each other and with the summary line.
  const installed = sum(last, 'lazyd_pages_installed_total');
  assert.equal(value(last, 'lazyd_restore_lazy_pages'), result.lazyPagesInImages);
  assert.equal(installed + value(last, 'lazyd_pages_present_total') + value(last, 'lazyd_pages_dropped_total'), result.lazyPagesInImages);
  assert.equal(installed, result.lazydTotals!.installed);
  assert.equal(value(last, 'lazyd_pages_remaining'), 0);
  assert.equal(value(last, 'lazyd_tasks_active'), 0);
  assert.equal(value(last, 'lazyd_page_requests_in_flight'), 0);
  const faults = sum(last, 'lazyd_faults_total');
  assert.ok(faults > 0, 'the restored workload faulted');
  assert.equal(faults, result.lazydTotals!.faults, 'every fault message ended with one result');
  const timed = ['copied', 'zeropage', 'exists'].reduce((a, r) => a + value(last, 'lazyd_faults_total', { result: r }), 0);
  assert.equal(value(last, 'lazyd_fault_service_seconds_count'), timed);
  assert.equal(value(last, 'lazyd_fault_service_seconds_bucket', { le: '+Inf' }), timed);
  const buckets = last.samples.filter((s) => s.name === 'lazyd_fault_service_seconds_bucket');
  // 8 µs · 2^(k/4) for k = 0..68, then +Inf (native/core/lazy/engine/counters.cc): 4 buckets per doubling.
  assert.equal(buckets.length, 70);
  for (let i = 1; i < buckets.length; i++) assert.ok(buckets[i].value >= buckets[i - 1].value, 'buckets are cumulative');
  assert.equal(buckets[0].labels.le, '0.000008');
  assert.ok(value(last, 'lazyd_fault_service_seconds_sum') > 0);

  // The page server's view of the same session: what it sent is what the daemon received, and the reverse.
  const end = server.at(-1)!;
  assert.equal(value(end, 'lazyd_page_server_sessions_total'), 1);
  assert.equal(value(end, 'lazyd_page_server_sessions_active'), 0);
  assert.equal(end.types.get('lazyd_page_server_requests_in_flight'), 'gauge');
  assert.equal(value(end, 'lazyd_page_server_requests_in_flight'), 0, 'no request left unanswered after the restore');
  assert.equal(value(end, 'lazyd_page_server_sessions_failed_total'), 0);
  assert.equal(value(end, 'lazyd_page_server_sent_bytes_total'), value(last, 'lazyd_lazy_pages_received_bytes_total'));
  assert.equal(value(end, 'lazyd_page_server_received_bytes_total'), value(last, 'lazyd_lazy_pages_sent_bytes_total'));
  assert.equal(value(end, 'lazyd_page_server_requests_total'), value(last, 'lazyd_page_requests_total'));
  assert.equal(value(end, 'lazyd_page_server_pages_sent_total'), installed + value(last, 'lazyd_pages_present_total'));
  assert.equal(value(end, 'lazyd_tls_failures_total'), 0);
  assert.equal(served?.sessions, 1);
  assert.equal(served?.bytes, value(end, 'lazyd_page_server_sent_bytes_total'));
  assert.equal(served?.gets, value(end, 'lazyd_page_server_requests_total'));

  t.diagnostic(
    `installed ${installed} of ${result.lazyPagesInImages} lazy pages, ${faults} faults (${timed} timed), ` +
      `${value(end, 'lazyd_page_server_sent_bytes_total')} bytes sent = received, ${value(end, 'lazyd_page_server_received_bytes_total')} bytes of requests`,
  );
  t.diagnostic(taskLines.join(' | '));
  // systemd saw the daemon ready while it waited for the restore, and stopping once every page was in.
  assert.match(notify.messages[0], /^READY=1\nMAINPID=\d+\nSTATUS=waiting for criu restore --lazy-pages$/);
  const stopping = notify.messages.find((m) => m.startsWith('STOPPING=1'));
  assert.match(stopping ?? '', new RegExp(`^STOPPING=1\nSTATUS=done: ${installed} pages installed `));

  // The per-task line reports the task's own bytes and time (it used to say "0 bytes in 0.000 s").
  assert.ok(taskLines.length >= 1, 'a per-task line');
  for (const line of taskLines) {
    const m = /; (\d+) bytes in (\d+\.\d+) s/.exec(line);
    assert.ok(m, line);
    assert.ok(Number(m[1]) > 0 && Number(m[2]) > 0, line);
  }
});

test('metrics: never on the page-server port; a port in use is one clear error line', { timeout: 30_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-ops-'));
  const blocker = net.createServer();
  try {
    for (const name of fs.readdirSync(FIXTURE_IMAGES)) fs.copyFileSync(path.join(FIXTURE_IMAGES, name), path.join(dir, name));
    // A port held here (the blocker's): the same port for both is refused before lazyd listens on either, and were
    // it not, lazyd would fail on the port in use, not pass.
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const busy = (blocker.address() as net.AddressInfo).port;
    const same = spawnSync(process.execPath, [lazydBin(), '--page-server', '-D', dir, '--address', '127.0.0.1', '--port', String(busy), '--metrics-address', `127.0.0.1:${busy}`], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    assert.equal(same.status, 1);
    assert.match(same.stderr, /--metrics-address 127\.0\.0\.1:\d+: port \d+ is the page server's — metrics need a port of their own, pick another/);

    const inUse = spawnSync(process.execPath, [lazydBin(), '--page-server', '-D', dir, '--address', '127.0.0.1', '--port', '0', '--metrics-address', `127.0.0.1:${busy}`, '--log-format', 'text'], {
      encoding: 'utf8',
      timeout: 20_000,
    });
    assert.equal(inUse.status, 1);
    const errors = inUse.stderr.split('\n').filter((l) => /Error/.test(l));
    assert.equal(errors.length, 1, inUse.stderr);
    assert.match(errors[0], /Error: cannot serve metrics on 127\.0\.0\.1:\d+: the port is in use — stop the other server or pick another --metrics-address/);
  } finally {
    blocker.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------- a systemd-like supervisor

/** A unix datagram socket like systemd's NOTIFY_SOCKET, bound by python3 (Node cannot), printing each datagram. */
async function notifySocket(file: string) {
  const script =
    'import socket, sys, json\n' +
    's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n' +
    's.bind(sys.argv[1])\n' +
    'print("bound", flush=True)\n' +
    'while True:\n' +
    '    print(json.dumps(s.recv(4096).decode()), flush=True)\n';
  const child = spawn('python3', ['-c', script, file], { stdio: ['ignore', 'pipe', 'inherit'] });
  const messages: string[] = [];
  let buffer = '';
  let bound = false;
  child.stdout.on('data', (chunk: Buffer) => {
    buffer += chunk.toString();
    let nl: number;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
      if (line === 'bound') bound = true;
      else messages.push(JSON.parse(line));
    }
  });
  await pollFor('the notify socket to be bound', WAIT_MS, () => (bound ? true : undefined));
  return {
    messages,
    waitFor: (re: RegExp, ms = WAIT_MS) => pollFor(`a notify message matching ${re}`, ms, () => messages.find((m) => re.test(m))),
    close: () => child.kill('SIGKILL'),
  };
}

/** The complete lines of a JSON log (the daemon may be writing the next one). */
function jsonLines(file: string): Record<string, unknown>[] {
  const text = fs.readFileSync(file, 'utf8');
  return text
    .slice(0, text.lastIndexOf('\n') + 1)
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line));
}

async function closeSession(port: number): Promise<void> {
  const socket = net.connect({ host: '127.0.0.1', port });
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  socket.write(encodeHeader(32, PS_IOV_CLOSE, 0, 0n, 0n));
  await new Promise<void>((resolve) => socket.once('data', () => resolve()));
  socket.end();
  await new Promise<void>((resolve) => socket.once('close', () => resolve()));
}

test('service: config file, systemd READY/STATUS/STOPPING, JSON log file reopened on SIGHUP, SIGTERM drains', { timeout: 60_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-ops-'));
  let proc: Proc | undefined;
  let notify: Awaited<ReturnType<typeof notifySocket>> | undefined;
  try {
    const images = path.join(dir, 'images');
    fs.mkdirSync(images);
    for (const name of fs.readdirSync(FIXTURE_IMAGES)) fs.copyFileSync(path.join(FIXTURE_IMAGES, name), path.join(images, name));
    const log = path.join(dir, 'lazyd.log');
    const config = path.join(dir, 'lazyd.conf');
    // port 1 would need CAP_NET_BIND_SERVICE and is taken by nobody: the command line's --port must win.
    fs.writeFileSync(
      config,
      `# lazyd test service\npage-server\nimages-dir ${images}\naddress 127.0.0.1\nport 1\nlog-file ${log}\nno-staging\nrstf-timeout 5   # lazy-pages only: ignored here\n`,
    );
    notify = await notifySocket(path.join(dir, 'notify.sock'));
    let port = 0;
    proc = await onFreePort((picked) => {
      port = picked;
      fs.rmSync(log, { force: true }); // a start that found the port taken leaves its error line there
      return startWithStatusFd(
        {
          name: 'lazyd (service)',
          file: process.execPath,
          args: [lazydBin(), '--config', config, '--port', String(port), '--status-fd', '3'],
          env: { ...process.env, NOTIFY_SOCKET: path.join(dir, 'notify.sock') },
          logFile: log,
        },
        15_000,
      );
    });
    const ready = await notify.waitFor(/^READY=1/);
    assert.match(ready, new RegExp(`^READY=1\nMAINPID=${proc.pid}\nSTATUS=serving on port ${port}: 0 sessions active, 0 served$`));

    await closeSession(port);
    await notify.waitFor(/^STATUS=serving on port \d+: 0 sessions active, 1 served$/);
    // The log is JSON (not a terminal), at the daemon's default level info: one line per session start and end.
    await pollFor('the session end line', WAIT_MS, () => jsonLines(log).find((r) => r.msg === 'Page-server session finished'));
    const first = jsonLines(log);
    assert.ok(first.every((r) => typeof r.level === 'string' && typeof r.time === 'number' && typeof r.msg === 'string'));
    assert.ok(first.some((r) => r.msg === 'Accepted page-server session'));
    const end = first.find((r) => r.msg === 'Page-server session finished')!;
    assert.equal(end.result, 'ok');
    assert.equal(end.gets, 0);
    assert.equal(typeof end.seconds, 'number');

    // Log rotation: rename, SIGHUP, the next lines go to a new file of the same name.
    fs.renameSync(log, `${log}.1`);
    proc.kill('SIGHUP');
    // The reopen creates the file: from then on the lines go there.
    await pollFor('the log file reopened on SIGHUP', WAIT_MS, () => (fs.existsSync(log) ? true : undefined));
    await closeSession(port);
    await pollFor('a line in the reopened log', WAIT_MS, () => (fs.existsSync(log) && jsonLines(log).some((r) => r.msg === 'Page-server session finished') ? true : undefined));
    assert.equal(jsonLines(`${log}.1`).filter((r) => r.msg === 'Page-server session finished').length, 1);

    // A reopen that fails (a directory where the file should be) keeps the old file, says why, and serves on.
    fs.renameSync(log, `${log}.2`);
    fs.mkdirSync(log);
    proc.kill('SIGHUP');
    const warning = await pollFor('the reopen warning', WAIT_MS, () => jsonLines(`${log}.2`).find((r) => String(r.msg).startsWith('SIGHUP:')));
    assert.equal(warning.level, 'warn');
    assert.match(String(warning.msg), /^SIGHUP: cannot open the log file .*lazyd\.log: .*EISDIR.*; still writing to the file opened before$/);
    assert.ok(proc.running, 'a failed reopen must not stop the daemon');
    await closeSession(port);
    fs.rmdirSync(log);

    proc.kill('SIGTERM');
    const exit = await proc.wait(15_000);
    assert.equal(exit.code, 0);
    assert.match(await notify.waitFor(/^STOPPING=1/), /^STOPPING=1\nSTATUS=draining: 0 sessions finishing their replies$/);
    const last = jsonLines(`${log}.2`);
    assert.ok(last.some((r) => r.msg === 'Got SIGTERM: finishing the replies in flight, then exiting'));
    assert.ok(last.every((r) => r.level !== 'error'), JSON.stringify(last));
  } finally {
    proc?.kill('SIGKILL');
    notify?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('logs: JSON when stderr is not a terminal, criu text lines on a terminal (pty)', { timeout: 30_000 }, async () => {
  // A failing start logs one error line: compare how it reads on a pipe and on a pty.
  const args = [lazydBin(), '--page-server', '-D', '/nonexistent/lazyd-images', '--no-staging', '--port', '0'];
  const piped = spawnSync(process.execPath, args, { encoding: 'utf8', timeout: 20_000 });
  assert.equal(piped.status, 1);
  const record = JSON.parse(piped.stderr.split('\n').find((l) => l.startsWith('{'))!);
  assert.equal(record.level, 'error');
  assert.match(record.msg, /nonexistent/);

  const command = [process.execPath, ...args].map((a) => `'${a}'`).join(' ');
  const tty = spawnSync('script', ['-qec', command, '/dev/null'], { encoding: 'utf8', timeout: 20_000 });
  assert.equal(tty.status, 1, tty.stdout + tty.stderr);
  const text = tty.stdout.replace(/\r/g, '');
  assert.match(text, /^\(\d\d\.\d{6}\) Error: .*nonexistent/m, text);
  assert.doesNotMatch(text, /"level"/);
});

test('progress: on a terminal (a pty), lazyd lazy-pages draws a live line for a real restore', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  requireHost();
  const criu = findCriu('4.2.1');
  await withRunDir('ops-progress', async (runDir, onCleanup) => {
    const checkpoint = await checkpointWorkload({ criu, runDir, workload: { mib: 32, order: 'random', seed: 5 }, progress: diag(t), onCleanup, timeouts });
    const dstDir = path.join(runDir, 'dst');
    copyCheckpointImages(checkpoint.imagesDir, dstDir);
    // stderr is the pty of `script`, whose stdout we read; the readiness byte still comes on fd 3.
    const command = [process.execPath, lazydBin(), 'lazy-pages', '-D', dstDir, '--status-fd', '3'].map((a) => `'${a}'`).join(' ');
    const daemon = await startWithStatusFd({ name: 'lazyd lazy-pages (pty)', file: 'script', args: ['-qefc', command, '/dev/null'], cwd: dstDir }, timeouts.readyMs);
    onCleanup(() => daemon.kill('SIGKILL'));
    const pidfile = path.join(dstDir, 'restored.pid');
    await runCriu(criu, 'restore', ['--lazy-pages', '-D', dstDir, '-d', '-v4', '-o', 'restore.log', '--pidfile', pidfile], timeouts.restoreMs, { imagesDir: dstDir });
    const restored = readPidfile(pidfile)!;
    onCleanup(() => killPidNamespace(restored));
    await daemon.waitOk(timeouts.allPagesMs);
    const screen = daemon.outputText;
    const draws = [...screen.matchAll(/\r\x1b\[2Krestore: (\d+)\/(\d+) pages \((\d+)%\)/g)];
    t.diagnostic(`${draws.length} progress draws: ${draws.map((d) => d[1]).join(', ')} of ${draws[0]?.[2]}`);
    assert.ok(draws.length >= 1, `no progress line on the terminal: ${JSON.stringify(screen.slice(0, 400))}`);
    assert.equal(Number(draws[0][2]), checkpoint.lazyPages);
    assert.match(screen, /\r\x1b\[2K(\r\n)?lazyd lazy-pages: \d+ pages installed/, 'the line is taken down before the summary');
  });
});

test('packaging/lazyd.service passes systemd-analyze verify', { timeout: 30_000 }, () => {
  const unit = path.join(repoRoot(), 'packaging/lazyd.service');
  const text = fs.readFileSync(unit, 'utf8');
  assert.match(text, /^Type=notify$/m);
  assert.match(text, /^ExecReload=\/bin\/kill -HUP \$MAINPID$/m);
  const verify = spawnSync('systemd-analyze', ['verify', unit], { encoding: 'utf8', timeout: 20_000 });
  assert.equal(verify.status, 0, verify.stdout + verify.stderr);
  assert.equal(verify.stderr.trim(), '', verify.stderr);
});

/** The units' `systemd-analyze security` exposure (0 safest .. 10): README "Security" states these bounds. */
const EXPOSURE_BOUNDS = { 'lazyd.service': 1.7, 'lazyd-lazy-pages@.service': 2.3 } as const;

test('packaging: each unit keeps only what its role needs (systemd-analyze security --offline, exposure within its bound)', { timeout: 60_000 }, () => {
  for (const [name, bound] of Object.entries(EXPOSURE_BOUNDS)) {
    const unit = path.join(repoRoot(), 'packaging', name);
    const verify = spawnSync('systemd-analyze', ['verify', unit], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(verify.status, 0, `${name}: ${verify.stdout}${verify.stderr}`);
    assert.equal(verify.stderr.trim(), '', `${name}: ${verify.stderr}`);
    const analyzed = spawnSync('systemd-analyze', ['security', '--offline=true', unit], { encoding: 'utf8', timeout: 20_000 });
    const overall = analyzed.stdout.match(/Overall exposure level for \S+: (\d+\.\d+)/);
    assert.ok(overall, `${name}: no exposure level in ${analyzed.stdout}${analyzed.stderr}`);
    const score = Number(overall[1]);
    assert.ok(score <= bound, `${name}: exposure ${score} above ${bound}:\n${analyzed.stdout.split('\n').filter((l) => l.includes('✗')).join('\n')}`);
    const text = fs.readFileSync(unit, 'utf8');
    // The page server needs only CAP_SYS_RESOURCE (relay staging's pipes); lazy-pages only those of userfaultfd's
    // non-cooperative features and of killing restored tasks it cannot complete.
    const bounding = text.match(/^CapabilityBoundingSet=(.*)$/m)?.[1].trim().split(/\s+/).filter(Boolean) ?? ['(unset)'];
    assert.deepEqual(bounding, name === 'lazyd.service' ? ['CAP_SYS_RESOURCE'] : ['CAP_SYS_PTRACE', 'CAP_KILL'], `${name}: CapabilityBoundingSet`);
    assert.match(text, /^UMask=0077$/m, `${name}: files it creates are its own`);
  }
});

test('lazyd check: every role runs on this host; without CAP_SYS_PTRACE the lazy-pages role fails with its fix', { timeout: 30_000 }, () => {
  const ok = spawnSync(process.execPath, [lazydBin(), 'check'], { encoding: 'utf8', timeout: 20_000 });
  assert.equal(ok.status, 0, ok.stdout + ok.stderr);
  for (const role of ['page-server', 'staging', 'lazy-pages']) assert.match(ok.stdout, new RegExp(`^  ok    ${role} `, 'm'));
  assert.match(ok.stdout, /ok    criu\s+4\.1\.1 \(.*\), 4\.2\.1 \(/);

  const json = spawnSync(process.execPath, [lazydBin(), 'check', '--json'], { encoding: 'utf8', timeout: 20_000 });
  const report = JSON.parse(json.stdout);
  assert.equal(report.ok, true);
  assert.deepEqual(report.roles.map((r: { role: string }) => r.role), ['page-server', 'staging', 'lazy-pages']);

  const dropped = spawnSync('setpriv', ['--bounding-set', '-sys_ptrace', '--inh-caps', '-sys_ptrace', process.execPath, lazydBin(), 'check'], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  assert.equal(dropped.status, 1, dropped.stdout + dropped.stderr);
  assert.match(dropped.stdout, /^  FAIL  uffd features .*asking for them fails with EPERM\n\s+fix: EVENT_FORK needs CAP_SYS_PTRACE/m);
  assert.match(dropped.stdout, /^  FAIL  lazy-pages .* — fails: .*uffd features/m);
  assert.match(dropped.stdout, /^  ok    memfd/m);
});
