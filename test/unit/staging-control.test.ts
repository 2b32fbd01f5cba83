// The staging control socket: `lazyd --page-server --control-socket PATH` (a real daemon, in a child process)
// stages CRIU's recorded upload stream; `lazyd staging list|release` lists and releases it from outside.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { repoRoot } from '../../src/paths.js';
import { sendStagingCommand } from '../../src/staging/control.js';
import { readFixture, sessionFacts } from '../fixtures/fixtures.js';

const run = promisify(execFile);
const LAZYD = path.join(repoRoot(), 'bin', 'lazyd.js');

async function lazyd(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [LAZYD, ...args]);
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

async function upload(port: number, stream: Buffer, expectReplies: number): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    let got = 0;
    const socket = net.connect(port, '127.0.0.1', () => socket.write(stream));
    socket.on('data', (d) => {
      got += d.length;
      if (got >= expectReplies) socket.end();
    });
    socket.on('error', reject);
    socket.on('close', () => resolve());
  });
}

/** Waits for fn() to give a value, with a deadline that only a failure reaches (a loaded machine is slow). */
async function until<T>(what: string, fn: () => Promise<T | undefined> | T | undefined, ms = 20_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await fn();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

for (const version of ['4.1.1', '4.2.1']) {
  test(`CRIU ${version}: --control-socket: lazyd staging list / release a staged upload from outside the daemon`, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazyd-control-'));
    const socketPath = path.join(dir, 'control.sock');
    fs.writeFileSync(socketPath, ''); // not a socket: the daemon refuses to replace it
    const refused = await lazyd('--page-server', '-D', dir, '--address', '127.0.0.1', '--port', '0', '--control-socket', socketPath);
    assert.equal(refused.code, 1);
    assert.match(refused.stdout + refused.stderr, /exists and is not a socket/);
    fs.rmSync(socketPath);

    const daemon = spawn(process.execPath, [LAZYD, '--page-server', '-v4', '-D', dir, '--address', '127.0.0.1', '--port', '0', '--control-socket', socketPath], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    daemon.stdout.on('data', (d) => (output += d));
    daemon.stderr.on('data', (d) => (output += d));
    const exited = new Promise<number | null>((resolve) => daemon.on('exit', (code) => resolve(code)));
    try {
      const port = await until('the daemon to listen', () => Number(/listening on \S+:(\d+)/.exec(output)?.[1]) || undefined);
      await until('the control socket', () => (fs.existsSync(socketPath) ? true : undefined));
      assert.equal(fs.statSync(socketPath).mode & 0o777, 0o600);

      let listed = await lazyd('staging', 'list', '--control-socket', socketPath);
      assert.equal(listed.code, 0, listed.stderr);
      assert.equal(listed.stdout, 'no staged checkpoint\n');

      const stream = readFixture(version, 'upload', 'client-to-server.bin');
      const replies = readFixture(version, 'upload', 'server-to-client.bin').length;
      // the pid the recorded dump uploaded
      const pid = sessionFacts(version, 'upload').workload.ns_pid;
      await upload(port, stream, replies);
      const staged = await until('the staged checkpoint', async () => {
        const answer = await sendStagingCommand(socketPath, 'list');
        const list = JSON.parse(answer.replace(/^ok /, '')) as Array<{ id: number; pids: number[]; bytes: number }>;
        return list.length ? list : undefined;
      });
      assert.equal(staged.length, 1);
      assert.deepEqual(staged[0].pids, [pid]);
      assert.ok(staged[0].bytes > 0);
      const id = staged[0].id;

      listed = await lazyd('staging', 'list', '--control-socket', socketPath);
      assert.match(listed.stdout, new RegExp(`^#${id}  pids ${pid}  [\\d.]+ MiB  0 restores  staged \\d{4}-`));

      // Protocol errors are answered, not fatal.
      assert.match(await sendStagingCommand(socketPath, 'frobnicate'), /^error unknown command/);
      assert.match(await sendStagingCommand(socketPath, 'release x'), /^error release: x is not a number/);
      const unknown = await lazyd('staging', 'release', String(id + 100), '--control-socket', socketPath);
      assert.equal(unknown.code, 1);
      assert.match(unknown.stderr, new RegExp(`no staged checkpoint #${id + 100}`));
      const noTarget = await lazyd('staging', 'release', '--control-socket', socketPath);
      assert.equal(noTarget.code, 1);

      // Release by pid: answered once lazyd has released it.
      const released = await lazyd('staging', 'release', '--pid', String(pid), '--control-socket', socketPath);
      assert.equal(released.code, 0, released.stderr);
      assert.equal(released.stdout, `released checkpoint #${id} (pids ${pid})\n`);
      assert.equal(await sendStagingCommand(socketPath, 'list'), 'ok []');
      // The daemon logged the release before it answered, but its stderr reaches us through a pipe of our own.
      const releasedLine = new RegExp(`checkpoint #${id} released: released on request \\(control socket\\)`);
      await until('the release in the daemon\'s log', () => (releasedLine.test(output) ? true : undefined));
      assert.match(output, releasedLine);
      // The same pid can be staged again, and released by id.
      await upload(port, stream, replies);
      const again = await until('the second staged checkpoint', async () => {
        const list = JSON.parse((await sendStagingCommand(socketPath, 'list')).replace(/^ok /, '')) as Array<{ id: number }>;
        return list.length ? list[0].id : undefined;
      });
      assert.notEqual(again, id);
      assert.equal((await lazyd('staging', 'release', String(again), '--control-socket', socketPath)).code, 0);
      assert.equal(await sendStagingCommand(socketPath, 'list'), 'ok []');
    } finally {
      daemon.kill('SIGTERM');
      assert.equal(await exited, 0, output);
      assert.ok(!fs.existsSync(socketPath), 'the socket file is removed at exit');
      const missing = await lazyd('staging', 'list', '--control-socket', socketPath);
      assert.equal(missing.code, 1);
      assert.match(missing.stderr, /is lazyd running with --control-socket/);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}
