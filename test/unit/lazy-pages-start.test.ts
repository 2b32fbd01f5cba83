// `lazyd lazy-pages` at start-up, on the recorded images of a real CRIU dump: ready means lazy-pages.socket listens
// before the status byte is written (docs/protocol.md §3.1); the lines logged before pino is loaded (src/log-core.ts;
// it is loaded only after RSTF, so never here) are all in the log, in order, with the times they were logged at; images
// already there are read ahead of the restore (after the status byte) and that read is what the hand-over uses; a
// directory without images fails at hand-over with one line.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { pollFor } from '../harness/process.js';
import { FIXTURE_VERSIONS, fixturePath } from '../fixtures/fixtures.js';
import { repoRoot } from '../../src/paths.js';

const lazyd = path.join(repoRoot(), 'bin', 'lazyd.js');

function tmp(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `lazyd-${tag}-`));
}

// The daemon needs no image to start (it can be started before the dump writes them): a directory without
// images is ready like any other, and fails when the restore hands over, with one line.
test('lazyd lazy-pages on a directory without images: ready, then at hand-over exit 1 and one line naming the image and the fix', async () => {
  const dir = tmp('no-images');
  try {
    for (const log of [[], ['-o', 'lazy-pages.log']]) {
      const child = spawn(lazyd, ['lazy-pages', '-D', dir, ...log, '--status-fd', '3'], { stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr!.on('data', (d) => (stderr += d));
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      try {
        await new Promise((resolve, reject) => {
          (child.stdio[3] as NodeJS.ReadableStream).once('data', resolve);
          child.once('exit', () => reject(new Error(`exited before it was ready: ${stderr}`)));
        });
        const socket = net.connect(path.join(dir, 'lazy-pages.socket'));
        await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
        assert.equal(await exited, 1, stderr);
        socket.destroy();
        const lines = stderr.split('\n').filter(Boolean);
        assert.equal(lines.length, 1, stderr);
        assert.match(lines[0], /inventory\.img: inventory image not found — .* is not a CRIU images dir \(or is incomplete\); point to the dir given to criu dump -D/);
      } finally {
        child.kill('SIGKILL');
      }
      fs.rmSync(path.join(dir, 'lazy-pages.socket'), { force: true });
    }
    assert.match(fs.readFileSync(path.join(dir, 'lazy-pages.log'), 'utf8'), /^\(\d\d\.\d{6}\) Error: .*inventory image not found/m);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

const STAMP = /^\((\d+)\.(\d{6})\) (.*)$/;

for (const { version } of FIXTURE_VERSIONS) {
  test(`CRIU ${version} images: the socket listens before the status byte, and every log line is written in order`, async () => {
    const dir = tmp('start');
    const src = fixturePath(version, 'plain-dump', 'images');
    for (const name of fs.readdirSync(src)) fs.copyFileSync(path.join(src, name), path.join(dir, name));
    const child = spawn(lazyd, ['lazy-pages', '-D', dir, '-v4', '-o', 'lazy-pages.log', '--status-fd', '3'], { stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      await new Promise((resolve, reject) => {
        (child.stdio[3] as NodeJS.ReadableStream).once('data', resolve);
        child.once('exit', () => reject(new Error(`exited before it was ready: ${stderr}`)));
      });
      // Listening already: the connection is accepted at once (it is taken as the restore's).
      const log = path.join(dir, 'lazy-pages.log');
      // The images are there: they are read ahead of the restore (a debug line says so), and that read is used.
      await pollFor('the read ahead in the log', 10_000, () => (fs.readFileSync(log, 'utf8').includes(' ahead of the restore: 1 tasks') ? true : undefined));
      const socket = net.connect(path.join(dir, 'lazy-pages.socket'));
      await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
      await pollFor('"Loaded" in the log', 10_000, () => (fs.readFileSync(log, 'utf8').includes(') Loaded ') ? true : undefined));
      assert.match(fs.readFileSync(log, 'utf8'), /\) Loaded \S+ \(read ahead of the restore\): 1 tasks, \d+ lazy pages/);
      child.kill('SIGTERM');
      assert.equal(await exited, 1);
      socket.destroy();
      const lines = fs.readFileSync(log, 'utf8').split('\n').filter(Boolean);
      const messages = lines.map((line) => STAMP.exec(line)?.[3]);
      const order = [/^Listening on /, / ahead of the restore: 1 tasks$/, /^Restore connected$/, /^Loaded /, /^Error: Got SIGTERM before every lazy page was installed; no task had been handed over$/];
      let at = -1;
      for (const re of order) {
        const next = messages.findIndex((m, i) => i > at && m !== undefined && re.test(m));
        assert.ok(next > at, `${re} after the line before it in:\n${lines.join('\n')}`);
        at = next;
      }
      const stamps = lines.map((line) => {
        const m = STAMP.exec(line);
        assert.ok(m, `a criu-style line: ${line}`);
        return Number(m[1]) * 1e6 + Number(m[2]);
      });
      assert.deepEqual(stamps, [...stamps].sort((a, b) => a - b), 'the times they were logged at, in order');
    } finally {
      child.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
}
