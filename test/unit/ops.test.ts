// Operations pieces that need no process of their own: config files, log formats and levels, the progress line,
// and the Prometheus exposition of native counter snapshots.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { configArguments, parseConfig, type OptionTable } from '../../src/cli/config-file.js';
import { normalizeCriuArgv } from '../../src/cli/criu-argv.js';
import { criuLine, levelForVerbosity, resolveLogFormat } from '../../src/log.js';
import { progressText, RestoreProgress } from '../../src/lazy-pages/progress.js';
import { TerminalLine } from '../../src/terminal-line.js';
import { createMetricsRegistry, type EngineCounters } from '../../src/metrics/registry.js';
import { parseMetricsAddress, refuseSamePort } from '../../src/metrics/server.js';
import { checkPipeMaxSize, evaluateRoles } from '../../src/commands/check.js';

function table(keys: string[], booleans: string[], aliases: Record<string, string> = {}): OptionTable {
  const canonical = new Map<string, string>(keys.map((k) => [k, k]));
  for (const [alias, name] of Object.entries(aliases)) canonical.set(alias, name);
  return { keys: new Set([...keys, ...Object.keys(aliases)]), booleans: new Set(booleans), canonical };
}

const tables = new Map<string, OptionTable>([
  ['$0', table(['images-dir', 'port', 'page-server', 'staging', 'log-file', 'metrics-address'], ['page-server', 'staging'], { D: 'images-dir', o: 'log-file' })],
  ['lazy-pages', table(['images-dir', 'port', 'page-server', 'rstf-timeout'], ['page-server'], { D: 'images-dir' })],
]);

test('config file: one long option per line, comments, blank lines, quoted values', () => {
  const entries = parseConfig('# lazyd\n\npage-server\nimages-dir "/var/lib/my ckpt"   # trailing comment\nport=9876\n  no-staging\n', 'f.conf');
  assert.deepEqual(
    entries.map((e) => [e.name, e.value, e.line]),
    [
      ['page-server', undefined, 3],
      ['images-dir', '/var/lib/my ckpt', 4],
      ['port', '9876', 5],
      ['no-staging', undefined, 6],
    ],
  );
  assert.deepEqual(configArguments(entries, '$0', tables, []), [
    '--page-server',
    '--images-dir',
    '/var/lib/my ckpt',
    '--port',
    '9876',
    '--no-staging',
  ]);
});

test('config file: the command line wins over the file, in any spelling', () => {
  const entries = parseConfig('images-dir /a\nport 1\nstaging\nverbosity 4\nlog-file x.log\n', 'f.conf');
  assert.deepEqual(configArguments(entries, '$0', tables, ['-D', '/b', '--port=2', '--no-staging', '-v1', '-o', 'y.log']), []);
  assert.deepEqual(configArguments(entries, '$0', tables, ['-Dfoo']), ['--port', '1', '--staging', '--verbosity=4', '--log-file', 'x.log']);
});

test('config file: options of another command are left to it; unknown ones fail with file:line', () => {
  const entries = parseConfig('rstf-timeout 5\nmetrics-address :9101\n', 'shared.conf');
  assert.deepEqual(configArguments(entries, '$0', tables, []), ['--metrics-address', ':9101']);
  assert.deepEqual(configArguments(entries, 'lazy-pages', tables, []), ['--rstf-timeout', '5']);
  assert.throws(() => configArguments(parseConfig('port 1\n\nporrt 2\n', '/etc/lazyd/lazyd.conf'), '$0', tables, []), {
    message: /^\/etc\/lazyd\/lazyd\.conf:3: unknown option "porrt"/,
  });
  assert.throws(() => parseConfig('--port 1\n', 'f.conf'), { message: /f\.conf:1: .*without its leading dashes/ });
  assert.throws(() => configArguments(parseConfig('port\n', 'f.conf'), '$0', tables, []), { message: /f\.conf:1: port needs a value/ });
  assert.throws(() => configArguments(parseConfig('staging maybe\n', 'f.conf'), '$0', tables, []), { message: /f\.conf:1: staging is a switch/ });
  assert.throws(() => configArguments(parseConfig('config other.conf\n', 'f.conf'), '$0', tables, []), { message: /f\.conf:1: .*cannot name another/ });
});

test("verbosity: criu's -v forms map to pino levels", () => {
  assert.deepEqual([0, 1, 2, 3, 4, 9].map(levelForVerbosity), ['fatal', 'error', 'warn', 'info', 'debug', 'debug']);
  assert.deepEqual(normalizeCriuArgv(['-v4']), { args: [], verbosity: 4, verbosityGiven: true });
  assert.deepEqual(normalizeCriuArgv(['-vv', '-D/x']), { args: ['-D', '/x'], verbosity: 4, verbosityGiven: true });
  assert.deepEqual(normalizeCriuArgv(['--verbosity=0']).verbosity, 0);
  assert.deepEqual(normalizeCriuArgv(['--port', '1']), { args: ['--port', '1'], verbosity: 2, verbosityGiven: false });
});

test('log format: json off a terminal, text on one; the drop-ins always text unless told', () => {
  assert.equal(resolveLogFormat({}, false), 'json');
  assert.equal(resolveLogFormat({}, true), 'text');
  assert.equal(resolveLogFormat({ autoFormat: 'text' }, false), 'text');
  assert.equal(resolveLogFormat({ format: 'json', autoFormat: 'text' }, true), 'json');
  assert.throws(() => resolveLogFormat({ format: 'xml' as never }, false), /--log-format must be one of auto, json, text/);
  const start = 1_000_000;
  assert.equal(
    criuLine({ level: 'error', time: start + 1234.5678, msg: 'Page-server session failed: x', session: 2, peer: '127.0.0.1:5' }, start),
    '(01.234568) Error: Page-server session failed: x session=2 peer=127.0.0.1:5\n',
  );
  assert.equal(criuLine({ level: 'warn', time: start, msg: 'w' }, start), '(00.000000) Warn: w\n');
  assert.equal(criuLine({ level: 'info', time: start + 61_000, msg: 'i' }, start), '(61.000000) i\n');
});

test('progress line: pages present / total, rate, ETA', () => {
  const a = { present: 1000, total: 5000, atMs: 0 };
  const b = { present: 3000, total: 5000, atMs: 500 };
  assert.equal(progressText(undefined, a, 4096), 'restore: 1000/5000 pages (20%)');
  assert.equal(progressText(a, b, 4096), 'restore: 3000/5000 pages (60%), 15.6 MiB/s, ETA 0.5 s');
  assert.equal(progressText(b, { present: 3000, total: 5000, atMs: 1000 }, 4096), 'restore: 3000/5000 pages (60%), 0.0 MiB/s, ETA -');
  assert.equal(progressText(b, { present: 5000, total: 5000, atMs: 1000 }, 4096), 'restore: 5000/5000 pages (100%), 15.6 MiB/s, ETA 0 s');
});

test('terminal line: drawn in place, taken down around log lines, never when disabled', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-line-'));
  try {
    const file = path.join(dir, 'tty');
    const fd = fs.openSync(file, 'w');
    const line = new TerminalLine(fd, true);
    // 0.7 s of the restore on the samples' own clock: one sample per 50 ms poll, 14 of them, then no more (the
    // restore is over). The line is drawn after the polls whatever the machine's load did to their timing.
    const SAMPLES = 14;
    let present = 0;
    let samples = 0;
    const progress = new RestoreProgress(
      line,
      () => (samples < SAMPLES ? { present: (present += 100), total: 1000, atMs: 50 * samples++ } : undefined),
      4096,
      200,
    );
    progress.start();
    const deadline = performance.now() + 10_000;
    while (samples < SAMPLES) {
      assert.ok(performance.now() < deadline, `the progress line took ${samples} of ${SAMPLES} samples in 10 s`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    line.around(() => fs.writeSync(fd, 'a log line\n'));
    progress.stop();
    fs.closeSync(fd);
    const text = fs.readFileSync(file, 'utf8');
    const draws = text.split('\r\x1b[2Krestore: ').length - 1;
    // The first draw comes at once (one 50 ms poll), then at most one per 200 ms.
    assert.ok(draws >= 2 && draws <= 4, `drawn ${draws} times in 0.7 s at most every 200 ms: ${JSON.stringify(text)}`);
    assert.match(text, /\r\x1b\[2Ka log line\nrestore: \d+\/1000 pages/);
    assert.ok(text.endsWith('\r\x1b[2K'), 'stop() takes the line down');

    const off = path.join(dir, 'file');
    const fd2 = fs.openSync(off, 'w');
    const disabled = new TerminalLine(fd2, false);
    disabled.show('restore: 1/2 pages');
    disabled.around(() => fs.writeSync(fd2, 'line\n'));
    disabled.clear();
    fs.closeSync(fd2);
    assert.equal(fs.readFileSync(off, 'utf8'), 'line\n');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('metrics: native snapshots become Prometheus counters, gauges and a seconds histogram', async () => {
  const stats: EngineCounters = {
    state: 'running',
    summary: { faults: 7, pagesFault: 3, pagesAround: 10, pagesBackground: 100, pagesZero: 2, pagesExist: 1, pagesDropped: 0, pagesTotal: 200, bytesReceived: 4096 * 113 + 24 * 9, copyBytes: 4096 * 113, copyNs: 2_500_000, seconds: 1 },
    tasksTotal: 2,
    tasksActive: 1,
    pagesRemaining: 80,
    pagesInFlight: 6,
    faultsWaiting: 1,
    requests: 9,
    requestsInFlight: 2,
    pagesDiscarded: 0,
    tlsFailures: 0,
    checksumMismatches: 1,
    reconnects: 0,
    installSlices: 5,
    faultsReasked: 0,
    drainWindowBytes: 3 << 20,
    drainInflightBytes: 1 << 20,
    drainRequestedBytes: 400 << 10,
    linkRttUs: 5400,
    linkBandwidth: 544e6,
    latencyBoundsUs: [10, 250, Infinity],
    latencyCounts: [2, 3, 1],
    latencySumUs: 1_500_000,
    latencyCount: 6,
    latencyP50Us: 200,
    latencyP99Us: 250,
    latencyMaxUs: 1_000_000,
    faultsByResult: { copied: 3, zeropage: 2, exists: 1, dropped: 0, retried: 0, gone: 1 },
    bytesSent: 9 * 24,
  };
  const registry = createMetricsRegistry({ role: 'lazy-pages', criuAbi: 'auto', lazyPages: () => stats });
  const text = await registry.metrics();
  const line = (name: string) => text.split('\n').find((l) => l.startsWith(name + ' ') || l.startsWith(name + '{'));
  assert.match(text, /# TYPE lazyd_fault_service_seconds histogram/);
  assert.equal(line('lazyd_fault_service_seconds_bucket{le="0.00001"}'), 'lazyd_fault_service_seconds_bucket{le="0.00001"} 2');
  assert.match(text, /lazyd_fault_service_seconds_bucket\{le="0.00025"\} 5\n/);
  assert.match(text, /lazyd_fault_service_seconds_bucket\{le="\+Inf"\} 6\n/);
  assert.match(text, /lazyd_fault_service_seconds_sum 1.5\n/);
  assert.match(text, /lazyd_fault_service_seconds_count 6\n/);
  assert.match(text, /# TYPE lazyd_faults_total counter\nlazyd_faults_total\{result="copied"\} 3\n/);
  assert.equal(line('lazyd_drain_window_bytes'), `lazyd_drain_window_bytes ${3 << 20}`);
  assert.equal(line('lazyd_drain_requested_bytes_total'), `lazyd_drain_requested_bytes_total ${400 << 10}`);
  assert.equal(line('lazyd_drain_install_slices_total'), 'lazyd_drain_install_slices_total 5');
  assert.equal(line('lazyd_page_link_rtt_seconds'), 'lazyd_page_link_rtt_seconds 0.0054');
  assert.equal(line('lazyd_page_link_bandwidth_bytes'), 'lazyd_page_link_bandwidth_bytes 544000000');
  assert.match(text, /lazyd_pages_installed_total\{path="near_fault"\} 10\n/);
  assert.match(text, /lazyd_pages_remaining 86\n/);
  assert.match(text, /lazyd_restores_active 1\n/);
  assert.match(text, /lazyd_tls_failures_total 0\n/);
  assert.match(text, /lazyd_page_checksum_mismatches_total 1\n/);
  assert.equal(line('lazyd_uffd_copied_bytes_total'), `lazyd_uffd_copied_bytes_total ${4096 * 113}`);
  assert.equal(line('lazyd_uffd_copy_seconds_total'), 'lazyd_uffd_copy_seconds_total 0.0025');
  assert.match(text, /lazyd_build_info\{version="[^"]+",node_version="v[\d.]+",criu_abi="auto",role="lazy-pages"\} 1/);
  // A second scrape reads the counters again (they are not added up twice).
  stats.summary.pagesBackground = 150;
  const again = await registry.metrics();
  assert.match(again, /lazyd_pages_installed_total\{path="background"\} 150\n/);
});

test('lazyd check: fs.pipe-max-size thresholds and the roles a failure takes down', () => {
  assert.equal(checkPipeMaxSize('4194304').status, 'ok');
  const small = checkPipeMaxSize('65536');
  assert.equal(small.status, 'fail');
  assert.match(small.detail, /65536 bytes: criu dump's page pipes need at least 1048576/);
  assert.match(small.fix!, /^sysctl -w fs\.pipe-max-size=4194304/);
  assert.equal(checkPipeMaxSize('1048576').status, 'warn');
  assert.equal(checkPipeMaxSize('unreadable').status, 'fail');
  const roles = evaluateRoles([small, { name: 'userfaultfd', status: 'ok', detail: '' }]);
  assert.deepEqual(
    roles.map((r) => [r.role, r.ok, r.failing]),
    [
      ['page-server', false, ['fs.pipe-max-size']],
      ['staging', false, ['fs.pipe-max-size']],
      ['lazy-pages', true, []],
    ],
  );
});

test('metrics address: HOST:PORT forms, and never the page-server port', () => {
  assert.deepEqual(parseMetricsAddress('127.0.0.1:9101'), { host: '127.0.0.1', port: 9101 });
  assert.deepEqual(parseMetricsAddress('[::1]:9101'), { host: '::1', port: 9101 });
  assert.deepEqual(parseMetricsAddress(':9101'), { host: '', port: 9101 });
  assert.deepEqual(parseMetricsAddress('9101'), { host: '', port: 9101 });
  assert.throws(() => parseMetricsAddress('localhost'), /expected HOST:PORT/);
  assert.throws(() => parseMetricsAddress('1.2.3.4:70000'), /expected HOST:PORT/);
  assert.throws(() => refuseSamePort({ host: '', port: 9876 }, 9876), /port 9876 is the page server's — metrics need a port of their own/);
  refuseSamePort({ host: '', port: 9101 }, 9876);
});

test('packaging/lazyd.conf: every option it sets, and every one it shows commented out, is one the daemon accepts', async () => {
  const { optionTables } = await import('../../src/cli/index.js');
  const { repoRoot } = await import('../../src/paths.js');
  const text = fs.readFileSync(path.join(repoRoot(), 'packaging', 'lazyd.conf'), 'utf8');
  // "# name value" lines are options shown with their defaults; prose comments have more than two words.
  const shown = text
    .split('\n')
    .map((line) => /^#\s*([a-z][a-z0-9-]*)(\s+\S+)?\s*(#.*)?$/.exec(line))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => `${m[1]}${m[2] ?? ''}`);
  assert.ok(shown.length >= 5, `the sample shows its limits commented out (${shown.join(', ')})`);
  const entries = parseConfig(`${text}\n${shown.join('\n')}\n`, 'packaging/lazyd.conf');
  assert.ok(configArguments(entries, '$0', optionTables(), []).length > 0);
});
