// The drop-in's fast path (src/cli/fast-argv.ts) against yargs (src/cli/yargs-cli.ts): for every flag of `lazyd
// lazy-pages`, in every spelling the fast path takes, both give the command the same values (or the same one-line
// error); every other spelling is left to yargs; and a plain `lazyd lazy-pages` command line never loads yargs.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { flagName, type Flag, type Flags } from '../../src/config/flag.js';
import { LAZY_PAGES } from '../../src/config/flags.js';
import { resolveValues } from '../../src/config/resolve.js';
import { fastGiven } from '../../src/cli/fast-argv.js';
import { runYargs, type Parsed } from '../../src/cli/yargs-cli.js';
import { normalizeCriuArgv } from '../../src/cli/criu-argv.js';
import { configArguments, parseConfig } from '../../src/cli/config-file.js';
import { optionTables } from '../../src/cli/index.js';
import { repoRoot } from '../../src/paths.js';

const lazyd = path.join(repoRoot(), 'bin', 'lazyd.js');
const COMMAND = LAZY_PAGES.command;

/** What yargs hands the lazy-pages command for `lazyd lazy-pages ...args`. */
async function yargsGiven(args: readonly string[]): Promise<Parsed> {
  let parsed: Parsed | undefined;
  const other = async () => assert.fail('yargs ran another command');
  await runYargs([COMMAND, ...args], {
    lazyPages: async (a) => void (parsed = a),
    pageServerDropin: other,
    staging: other,
    check: other,
    migrate: other,
    agent: other,
    replicate: other,
    failover: other,
    daemon: other,
  });
  return parsed!;
}

/** The command's values for what a parser gave, or the one line resolveValues reports. */
function outcome(given: Record<string, unknown>): unknown {
  try {
    // As src/cli/index.ts does: the verbosity comes from criu's -v forms, not from the parser.
    return resolveValues(LAZY_PAGES, { ...given, verbosity: undefined }, {});
  } catch (error) {
    return `error: ${(error as Error).message}`;
  }
}

async function assertSame(args: readonly string[]): Promise<void> {
  const fast = fastGiven(LAZY_PAGES, [COMMAND, ...args]);
  assert.ok(fast, `the fast path takes ${args.join(' ')}`);
  assert.deepEqual(outcome(fast), outcome(await yargsGiven(args)), args.join(' '));
}

/** Each spelling of a flag the fast path takes, with good values and bad ones it can still read. */
function spellingsOf(key: string, f: Flag): string[][] {
  const name = `--${flagName(key)}`;
  const short = f.alias ? [`-${f.alias}`] : [];
  if (f.type === 'boolean') return [[name], [`--no-${flagName(key)}`], ...short.map((s) => [s])];
  const values: string[] =
    f.type === 'number'
      ? ['0', '1', '7', '65535', '65536', '1.5', String(f.default ?? 3)]
      : f.choices
        ? [...f.choices, 'bogus']
        : key === 'criuAbi'
          ? ['auto', '4.1', '4.2', '4.3']
          : ['some/dir', 'x=y', '127.0.0.1', '123'];
  return values.flatMap((v) => [[name, v], [`${name}=${v}`], ...short.map((s) => [s, v])]);
}

test('fast path: every lazy-pages flag, every spelling it takes, gives the values (or the error) yargs gives', async () => {
  const keys = Object.entries(LAZY_PAGES.flags as Flags).filter(([, f]) => !f.criuArgv);
  assert.ok(keys.length > 20, 'the table has the lazy-pages flags');
  for (const [key, f] of keys) {
    for (const args of spellingsOf(key, f)) await assertSame(args);
  }
  await assertSame([]);
});

test('fast path: whole command lines as tools write them for criu, -v forms and glued -Dvalue included', async () => {
  const lines = [
    ['-v4', '-D/tmp/img', '-W', '/tmp/work', '-o', 'lazy-pages.log', '--status-fd', '3'],
    ['--page-server', '--address', '10.0.0.1', '--port', '9876', '-D', 'img', '--tls', '--tls-cacert', 'ca.pem', '--tls-no-cn-verify'],
    ['-vv', '--images-dir=img', '--work-dir=w', '--log-file=l.log', '--criu-abi', '4.2', '--on-failure', 'keep', '--rstf-timeout', '0.5'],
    ['--page-server', '--address', '::1', '--port', '1', '--drain-max-bytes', '65536', '--metrics-address', '127.0.0.1:9101', '--no-tls'],
    // with --tls to a page server the drain's defaults are the TLS ones: the same on both paths
    ['--page-server', '--tls', '--address', '127.0.0.1', '--port', '2'],
  ];
  for (const line of lines) await assertSame(normalizeCriuArgv([COMMAND, ...line]).args.slice(1));
});

test('fast path: options from a config file reach both parsers alike', async () => {
  const file = parseConfig(
    ['page-server', 'address 127.0.0.1', 'port 9999', 'tls', 'no-tls-no-cn-verify', 'drain-min-bytes 8192', 'verbosity 4', 'metrics-linger 2'].join('\n'),
    'test.conf',
  );
  const commandLine = ['-D', 'img', '--port', '1234'];
  const args = [...commandLine, ...configArguments(file, COMMAND, optionTables(), commandLine)];
  const { args: normalized } = normalizeCriuArgv([COMMAND, ...args]);
  await assertSame(normalized.slice(1));
  const fast = fastGiven(LAZY_PAGES, normalized)!;
  assert.equal(fast.port, 1234, 'the command line wins over the file');
  assert.equal(fast.drainMinBytes, 8192);
});

test('fast path: every other form is left to yargs (so --help and its messages stay the same)', () => {
  const leftToYargs = [
    ['--help'],
    ['--port', 'abc'],
    ['--port', '0x10'],
    ['--port', ''],
    ['--port', '-1'],
    ['--port', '1e3'],
    ['--tls=false'],
    ['--tls', 'true'],
    ['--port', '1', '--port', '2'],
    ['--tls', '--no-tls'],
    ['-o', '-'],
    ['--address'],
    ['--imagesDir', 'x'],
    ['--verbosity', '4'],
    ['--unknown-flag'],
    ['-Dx'],
    ['-dD', 'x'],
    ['stray'],
    ['--', 'x'],
  ];
  for (const args of leftToYargs) assert.equal(fastGiven(LAZY_PAGES, [COMMAND, ...args]), undefined, args.join(' '));
});

/** Runs lazyd with a module hook that prints each package it resolves; returns those names and the run. */
function packagesResolved(args: string[]) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-fast-argv-'));
  const hooks = path.join(dir, 'hooks.mjs');
  fs.writeFileSync(
    hooks,
    'export async function resolve(specifier, context, next) {\n' +
      "  if (/^[a-z@][^:]*$/.test(specifier)) process.stderr.write(`resolved-package ${specifier}\\n`);\n" +
      '  return next(specifier, context);\n}\n',
  );
  const register = path.join(dir, 'register.mjs');
  fs.writeFileSync(register, `import { register } from 'node:module';\nregister(${JSON.stringify(new URL(`file://${hooks}`).href)});\n`);
  try {
    const run = spawnSync(process.execPath, ['--import', register, lazyd, ...args], { encoding: 'utf8', timeout: 30_000, cwd: dir });
    const packages = new Set([...run.stderr.matchAll(/^resolved-package (\S+)$/gm)].map((m) => m[1].split('/')[0]));
    return { run, packages };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

test('a plain `lazyd lazy-pages` command line does not load yargs; --help and a bad value do', () => {
  const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-no-images-'));
  try {
    const plain = packagesResolved([COMMAND, '-D', empty, '-o', path.join(empty, 'log'), '--status-fd', '9']);
    assert.equal(plain.run.status, 1, 'no images: it stops with one line');
    assert.ok(!plain.packages.has('yargs'), `yargs was loaded: ${[...plain.packages].join(', ')}`);
    const help = packagesResolved([COMMAND, '--help']);
    assert.equal(help.run.status, 0);
    assert.ok(help.packages.has('yargs'), '--help goes through yargs');
    const bad = packagesResolved([COMMAND, '--port', 'abc']);
    assert.equal(bad.run.status, 1);
    assert.ok(bad.packages.has('yargs'), 'a value the fast path does not read goes through yargs');
  } finally {
    fs.rmSync(empty, { recursive: true, force: true });
  }
});
