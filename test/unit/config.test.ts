// The flags' table (src/config/flags.ts) against everything made from it: README.md's flag tables, each command's
// --help, the config files' options, the values the commands get and the native options objects the addon takes
// (the binding requires each one: a missing key is a TypeError naming it). And each command accepts only its own
// flags.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { defaultText, flagName, meaning, type Flag, type Flags } from '../../src/config/flag.js';
import { CHECK, LAZY_PAGES, PAGE_SERVER, PAGE_SERVER_DROPIN, ROLES, STAGING_COMMAND, type Role } from '../../src/config/flags.js';
import { README_TABLES, tablesIn, withFlagTables } from '../../src/config/markdown.js';
import { defaultValues, lazyPagesOptions, nativeKeys, nativeOptions, pageServerOptions, resolveValues } from '../../src/config/resolve.js';
import { argvProblem, roleOf } from '../../src/cli/role-argv.js';
import { normalizeCriuArgv } from '../../src/cli/criu-argv.js';
import { configArguments, parseConfig } from '../../src/cli/config-file.js';
import { optionTables } from '../../src/cli/index.js';
import { loadNative, type PageServerEvent } from '../../src/native.js';
import { repoRoot } from '../../src/paths.js';

const lazyd = path.join(repoRoot(), 'bin', 'lazyd.js');
const run = (...args: string[]) => spawnSync(process.execPath, [lazyd, ...args], { encoding: 'utf8', timeout: 30_000 });
const entries = (role: Role): [string, Flag][] => Object.entries(role.flags);
const squash = (text: string) => text.replace(/\s+/g, ' ');

test('README.md: every flag table is the one the flags make (scripts/write-flag-tables.mjs writes them)', () => {
  const readme = fs.readFileSync(path.join(repoRoot(), 'README.md'), 'utf8');
  assert.deepEqual([...tablesIn(readme)].sort(), README_TABLES.map((t) => t.id).sort(), 'one block per table, each once');
  assert.equal(withFlagTables(readme), readme, 'README.md differs from the flags: run `npm run readme:flags`');
});

test('README.md: every flag of every command is in a table that shows its definition', () => {
  for (const role of ROLES) {
    for (const [key, f] of entries(role)) {
      const shown = README_TABLES.some((t) => t.keys.includes(key) && (t.role.flags as Flags)[key] === f);
      assert.ok(shown, `${role.title} --${flagName(key)} is in no README flag table`);
    }
  }
});

test('--help of each command lists exactly its flags, each with its default', () => {
  for (const role of ROLES) {
    const args = role.command === '$0' ? ['--help'] : [role.command, '--help'];
    const help = run(...args);
    assert.equal(help.status, 0, help.stderr);
    // Option lines start at column 2 ("  -D, --images-dir", "  --pid") or, beside aliases, 6 ("      --port");
    // wrapped text is indented further.
    const listed = new Set([...help.stdout.matchAll(/^ {2}(?:-\w, | {4})?--([a-z][a-z-]*)/gm)].map((m) => m[1]));
    listed.delete('help');
    assert.deepEqual([...listed].sort(), entries(role).map(([key]) => flagName(key)).sort(), `${role.title} --help`);
    const text = squash(help.stdout);
    for (const [key, f] of entries(role)) {
      if (f.alias) assert.ok(text.includes(`-${f.alias}, --${flagName(key)}`), `${role.title}: -${f.alias} is shown`);
      const shown = defaultText(f)?.replace(/`|\*\*/g, '');
      if (shown !== undefined && !f.required) assert.ok(text.includes(`[default: ${squash(shown)}]`), `${role.title} --${flagName(key)}: [default: ${shown}]`);
      if (f.required) assert.ok(text.includes('[required]'), `${role.title} --${flagName(key)} is required`);
      assert.ok(text.includes(squash(meaning(f)).slice(0, 30)), `${role.title} --${flagName(key)}: its text`);
    }
  }
});

test('config files: each command accepts exactly its flags (and their aliases), switches as switches', () => {
  const tables = optionTables();
  assert.deepEqual([...tables.keys()].sort(), ROLES.map((r) => r.command).sort());
  for (const role of ROLES) {
    const table = tables.get(role.command)!;
    const own = entries(role).filter(([key]) => key !== 'config');
    const expected = own.flatMap(([key, f]) => [flagName(key), ...(f.alias ? [f.alias] : [])]);
    assert.deepEqual([...table.keys].sort(), expected.sort(), role.title);
    assert.deepEqual([...table.booleans].sort(), own.filter(([, f]) => f.type === 'boolean').map(([key]) => flagName(key)).sort());
    // Each option of the command, written in a file, reaches its command line; those of other commands do not.
    for (const [key, f] of own) {
      const name = flagName(key);
      const line = f.type === 'boolean' ? name : `${name} 7`;
      const args = configArguments(parseConfig(`${line}\n`, 'f.conf'), role.command, tables, []);
      if (name === 'verbosity') assert.deepEqual(args, ['--verbosity=7']);
      else assert.deepEqual(args, f.type === 'boolean' ? [`--${name}`] : [`--${name}`, '7'], `${role.title}: ${line}`);
    }
  }
  assert.deepEqual(configArguments(parseConfig('max-inflight 8\n', 'f.conf'), 'lazy-pages', tables, []), []);
  assert.deepEqual(configArguments(parseConfig('drain-max-bytes 8192\n', 'f.conf'), '$0', tables, []), []);
});

test('packaging/lazyd.conf: the limits it shows commented out are the flags\' defaults', () => {
  const text = fs.readFileSync(path.join(repoRoot(), 'packaging', 'lazyd.conf'), 'utf8');
  const shown = [...text.matchAll(/^#\s*([a-z][a-z-]*)\s+(\d+)\s*$/gm)];
  assert.ok(shown.length >= 5, 'the sample shows its limits with their defaults');
  for (const [, name, value] of shown) {
    const entry = Object.entries(PAGE_SERVER.flags).find(([key]) => flagName(key) === name);
    assert.ok(entry, `${name} is a flag of lazyd --page-server`);
    assert.equal(Number(value), (entry[1] as Flag).default, `packaging/lazyd.conf: ${name}`);
  }
});

test('values: the defaults, the environment, the TLS defaults of the drain, and one line for a bad value', () => {
  const d = defaultValues(PAGE_SERVER);
  assert.equal(d.maxInflight, 64);
  assert.equal(d.stallTimeout, 30);
  assert.equal(d.verbosity, 3, 'the daemon logs at info');
  assert.equal(defaultValues(PAGE_SERVER_DROPIN).verbosity, 2, "the drop-ins log at criu's level");
  assert.equal(defaultValues(PAGE_SERVER_DROPIN).port, 0);
  assert.equal(d.port, 9876);
  // Restore must send RSTF within a bounded time by default (criu waits forever).
  const rstf = defaultValues(LAZY_PAGES).rstfTimeout;
  assert.ok(rstf > 0 && rstf <= 60, `--rstf-timeout defaults to ${rstf} s`);

  const plain = resolveValues(LAZY_PAGES, { pageServer: true }, {});
  const tls = resolveValues(LAZY_PAGES, { pageServer: true, tls: true }, {});
  const localTls = resolveValues(LAZY_PAGES, { tls: true }, {});
  assert.deepEqual([plain.drainMaxBytes, plain.drainInflightBytes, plain.drainInflightBytesFaulting], [1 << 20, 2 << 20, 256 << 10]);
  assert.deepEqual([tls.drainMaxBytes, tls.drainInflightBytes, tls.drainInflightBytesFaulting], [512 << 10, 1 << 20, 128 << 10]);
  assert.equal(localTls.drainMaxBytes, 1 << 20, 'a local restore has no TLS connection');
  assert.equal(resolveValues(LAZY_PAGES, { pageServer: true, tls: true, drainMaxBytes: 4096 }, {}).drainMaxBytes, 4096, 'a given flag wins');
  assert.equal(tls.drainMinBytes, 256 << 10);
  assert.equal(tls.faultAroundBytes, 64 << 10);
  assert.equal(tls.maxRequestsInflight, 64);

  assert.equal(resolveValues(LAZY_PAGES, {}, { LAZYD_RSTF_TIMEOUT: '2', LAZYD_ON_FAILURE: 'keep' }).rstfTimeout, 2);
  assert.equal(resolveValues(LAZY_PAGES, {}, { LAZYD_ON_FAILURE: 'keep' }).onFailure, 'keep');
  assert.equal(resolveValues(LAZY_PAGES, { rstfTimeout: 5 }, { LAZYD_RSTF_TIMEOUT: '2' }).rstfTimeout, 5, 'the flag wins');
  assert.throws(() => resolveValues(LAZY_PAGES, {}, { LAZYD_RSTF_TIMEOUT: 'soon' }), {
    message: 'LAZYD_RSTF_TIMEOUT=soon (--rstf-timeout): expected a number >= 0',
  });
  assert.throws(() => resolveValues(LAZY_PAGES, { onFailure: 'maybe' }, {}), { message: '--on-failure maybe: expected one of kill, keep' });
  assert.throws(() => resolveValues(LAZY_PAGES, { drainMaxBytes: 0 }, {}), { message: '--drain-max-bytes 0: expected a whole number >= 1' });
  assert.throws(() => resolveValues(PAGE_SERVER, { port: 70000 }, {}), { message: '--port 70000: expected a whole number from 0 to 65535' });
  assert.throws(() => resolveValues(PAGE_SERVER, { criuAbi: '3x' }, {}), {
    message: '--criu-abi 3x: expected auto, 4.1 (24-byte headers, CRIU <= 4.1) or 4.2 (32-byte, CRIU >= 4.2)',
  });
  assert.throws(() => resolveValues(PAGE_SERVER, { logFormat: 'xml' }, {}), { message: '--log-format xml: expected one of auto, json, text' });
});

test('native options: each flag sets its native key, in native units', () => {
  const ps = pageServerOptions(PAGE_SERVER, resolveValues(PAGE_SERVER, { stallTimeout: 7, idleTimeout: 0, criuAbi: '4.2' }, {}));
  assert.deepEqual(ps, {
    format: 32,
    maxRequestPages: 65536,
    maxSessions: 1024,
    maxInflight: 64,
    maxSessionBytes: 64 << 20,
    stallTimeoutMs: 7000,
    idleTimeoutMs: 0,
    tlsHandshakeTimeoutMs: 10000,
    staging: true,
    stagingMaxBytes: 1 << 30,
    stagingRestores: 0,
    linkResumeHoldMs: 120000,
    singleSession: false,
    requireLinkToken: false,
  });
  const dropin = pageServerOptions(PAGE_SERVER_DROPIN, defaultValues(PAGE_SERVER_DROPIN));
  assert.deepEqual([dropin.singleSession, dropin.staging, dropin.format], [true, false, 0]);
  assert.deepEqual(Object.keys(dropin).sort(), Object.keys(ps).sort(), 'the same native keys for both forms');
  assert.deepEqual(lazyPagesOptions(LAZY_PAGES, resolveValues(LAZY_PAGES, { criuAbi: '4.1', rstfTimeout: 0.5 }, {})), {
    format: 24,
    stallTimeoutMs: 30000,
    rstfTimeoutMs: 500,
    faultAroundBytes: 64 << 10,
    drainMinBytes: 256 << 10,
    drainMaxBytes: 1 << 20,
    drainInflightBytes: 2 << 20,
    drainInflightBytesFaulting: 256 << 10,
    drainInflightMaxBytes: 16 << 20,
    drainRate: 0,
    drainStartMs: 200,
    background: true,
    linkChecksum: true,
    linkPriority: true,
    reconnectTimeoutMs: 30000,
    maxRequestsInflight: 64,
  });
  const noDrain = lazyPagesOptions(LAZY_PAGES, resolveValues(LAZY_PAGES, { drain: false, drainRate: 8 << 20, drainInflightMaxBytes: 2 << 20, drainStart: 0.05 }, {}));
  assert.deepEqual([noDrain.background, noDrain.drainRate, noDrain.drainInflightMaxBytes, noDrain.drainStartMs], [false, 8 << 20, 2 << 20, 50], "--no-drain, --drain-rate, a fixed window, --drain-start in ms");
  assert.equal(lazyPagesOptions(LAZY_PAGES, resolveValues(LAZY_PAGES, { linkChecksum: false }, {})).linkChecksum, false, '--no-link-checksum');
  const fifo = lazyPagesOptions(LAZY_PAGES, resolveValues(LAZY_PAGES, { linkPriority: false, reconnectTimeout: 0.5 }, {}));
  assert.deepEqual([fifo.linkPriority, fifo.reconnectTimeoutMs], [false, 500], '--no-link-priority, --reconnect-timeout in ms');
  assert.deepEqual(nativeKeys(STAGING_COMMAND), []);
  assert.deepEqual(nativeKeys(CHECK), []);
});

test('the binding requires every flag-backed PageServer option and needs no other', async () => {
  const addon = loadNative();
  let stopped!: () => void;
  const done = new Promise<void>((resolve) => (stopped = resolve));
  const complete = {
    ...pageServerOptions(PAGE_SERVER, resolveValues(PAGE_SERVER, { stagingMaxBytes: 12345 }, {})),
    tls: undefined,
    access: { fetchFrom: [], uploadFrom: [], fetchNames: [], uploadNames: [] },
    onEvent: (event: PageServerEvent) => event.type === 'stopped' && stopped(),
  };
  for (const key of nativeKeys(PAGE_SERVER)) {
    const { [key as keyof typeof complete]: _dropped, ...missing } = complete;
    assert.throws(() => new addon.PageServer(missing as typeof complete), (error: Error) => {
      assert.ok(error instanceof TypeError, `${key}: ${error}`);
      assert.equal(error.message, `PageServer: option ${key} is required`);
      return true;
    });
  }
  const { tls: _tls, ...noTls } = complete;
  assert.throws(() => new addon.PageServer(noTls as typeof complete), { name: 'TypeError', message: 'PageServer: option tls is required' });
  const { access: _access, ...noAccess } = complete;
  assert.throws(() => new addon.PageServer(noAccess as typeof complete), { name: 'TypeError', message: 'PageServer: option access is required' });
  const badBlock = { ...complete, access: { ...complete.access, fetchFrom: ['10.0.0.0/33'] } };
  assert.throws(() => new addon.PageServer(badBlock), { name: 'TypeError', message: /access\.fetchFrom: "10\.0\.0\.0\/33": the prefix length must be 0\.\.32/ });
  // With exactly these keys it runs, and the values arrive (the staging cap is in its counters).
  const server = new addon.PageServer(complete);
  server.listen('127.0.0.1', 0);
  assert.equal(server.stats().stagingMaxBytes, 12345);
  server.start();
  server.stop(0);
  await done;
  assert.throws(() => server.stop(undefined as unknown as number), { name: 'TypeError' });
});

test('the binding requires every flag-backed LazyPages option and needs no other', () => {
  const addon = loadNative();
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-config-'));
  try {
    const complete = {
      ...lazyPagesOptions(LAZY_PAGES, defaultValues(LAZY_PAGES)),
      format: 24 as const,
      workDir,
      nrTasks: 1,
      tasks: [],
      source: 'local' as const,
      address: undefined,
      port: undefined,
      tls: undefined,
      onEvent: () => undefined,
    };
    for (const key of [...nativeKeys(LAZY_PAGES), 'nrTasks', 'tls']) {
      const { [key as keyof typeof complete]: _dropped, ...missing } = complete;
      assert.throws(() => new addon.LazyPages(missing as typeof complete), (error: Error) => {
        assert.ok(error instanceof TypeError, `${key}: ${error}`);
        assert.match(error.message, new RegExp(`^LazyPages: option ${key} `));
        return true;
      });
    }
    assert.throws(() => new addon.LazyPages({ ...complete, source: 'remote' }), { name: 'TypeError', message: /option address/ });
    const engine = new addon.LazyPages(complete);
    assert.equal(engine.stats().state, 'idle');
    engine.stop();
  } finally {
    fs.rmSync(workDir, { recursive: true, force: true });
  }
});

test('each command accepts only its own flags: a flag of another command names the one that takes it', () => {
  const check = (line: string) => {
    const { args } = normalizeCriuArgv(line.split(' ').filter(Boolean));
    return argvProblem(args, roleOf(args));
  };
  assert.equal(check('lazy-pages --max-sessions 1'), '--max-sessions is a flag of `lazyd --page-server` and `lazyd page-server --lazy-pages`, not of `lazyd lazy-pages`');
  assert.equal(check('lazy-pages --no-staging'), '--no-staging is a flag of `lazyd --page-server`, not of `lazyd lazy-pages`');
  assert.equal(check('--page-server --drain-max-bytes=4096'), '--drain-max-bytes is a flag of `lazyd lazy-pages`, not of `lazyd --page-server`');
  assert.equal(check('page-server --lazy-pages --staging-ttl 5'), '--staging-ttl is a flag of `lazyd --page-server`, not of `lazyd page-server --lazy-pages`');
  assert.equal(check('check -d'), '-d is a flag of `lazyd --page-server`, `lazyd page-server --lazy-pages` and `lazyd lazy-pages`, not of `lazyd check`');
  assert.equal(check('lazy-pages --nope'), 'unknown flag --nope for `lazyd lazy-pages`: see `lazyd lazy-pages --help`');
  assert.equal(check('lazy-pages -x'), 'unknown flag -x for `lazyd lazy-pages`: see `lazyd lazy-pages --help`');
  assert.match(check('foo') ?? '', /^unknown command "foo": lazyd's commands are page-server, lazy-pages, staging, check/);
  assert.match(check('--page-server foo') ?? '', /^unknown command "foo"/);
  assert.equal(check('-D /x lazy-pages'), 'lazy-pages: the command comes first (lazyd lazy-pages ...)');
  assert.match(check('lazy-pages extra') ?? '', /^unexpected argument "extra": `lazyd lazy-pages` takes none there/);
  assert.match(check('staging release 3 4') ?? '', /^unexpected argument "4"/);
  // criu's spellings, and every flag in the forms the harness and criu's callers write.
  for (const line of [
    'lazy-pages --no-default-config -D /d -d --pidfile lp.pid -o lazy-pages.log -v4',
    'lazy-pages --page-server --address 10.0.0.1 --port 9876 -D /d -v4 -o l.log --status-fd 3 --tls --tls-cacert=ca.pem --tls-no-cn-verify',
    'lazy-pages -Ddir -Wwork -ofile -vvv --verbosity=3 --verbosity --on-failure keep --rstf-timeout 2 --metrics-linger 2',
    'lazy-pages --drain-max-bytes 4096 --drain-inflight-bytes=8192 --max-requests-inflight 8 --fault-around-bytes 0',
    'page-server --lazy-pages -D /d --address 127.0.0.1 --port 0 -v4 -o ps.log --pidfile ps.pid --max-session-bytes 1048576',
    '--page-server -D /d --port 0 --max-inflight 8 --stall-timeout 2 --idle-timeout 3 --no-staging --staging false --tls-handshake-timeout 1',
    '--page-server --help',
    'lazy-pages --help',
    'staging release 3 --control-socket /run/x.sock',
    'staging list --json --control-socket /run/x.sock',
    'check --json --no-default-config',
    '',
  ]) {
    assert.equal(check(line), undefined, line);
  }
});

test('lazyd: flags of another command, unknown flags and unknown commands exit 1 with one line', () => {
  const cases: [string[], RegExp][] = [
    [['lazy-pages', '--max-sessions', '1', '--max-inflight', '8'], /^lazyd: --max-sessions is a flag of `lazyd --page-server` and `lazyd page-server --lazy-pages`, not of `lazyd lazy-pages`\n$/],
    [['foo'], /^lazyd: unknown command "foo": /],
    [['foo', '--help'], /^lazyd: unknown command "foo": /],
    [['lazy-pages', '--no-such-flag'], /^lazyd: unknown flag --no-such-flag for `lazyd lazy-pages`/],
    [['lazy-pages', '-D', '/nonexistent-lazyd', '--drain-max-bytes', 'lots'], /^lazyd: --drain-max-bytes NaN: expected a whole number >= 1\n$/],
  ];
  for (const [args, expected] of cases) {
    const result = run(...args);
    assert.equal(result.status, 1, `${args.join(' ')}: ${result.stderr}`);
    assert.match(result.stderr, expected, args.join(' '));
    assert.equal(result.stdout, '', args.join(' '));
  }
});
