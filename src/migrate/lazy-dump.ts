// `criu dump --lazy-pages` of the process tree on the source (docs/protocol.md §1.7, §5.2): the tasks are frozen,
// the images written without the lazy pages, and the frozen tasks' memory served on 127.0.0.1:PORT (loopback
// only: the relay, src/migrate/relay-source.ts, is its one client) until its one client ends the session.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

export interface LazyDump {
  port: number;
  child: ChildProcess;
  /** performance.now() when criu dump was started (the freeze follows within milliseconds). */
  startedAt: number;
  /** performance.now() when it signalled that it serves (images written). */
  readyAt: number;
  /** Resolves with its exit code once it has exited (0: the transfer counted as complete, the originals killed). */
  exited: Promise<number>;
  logFile: string;
}

async function freeLoopbackPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** The last Error lines of a criu log, for one line of failure. */
export function criuLogErrors(file: string, max = 2): string {
  let text = '';
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return `(no log at ${file})`;
  }
  const lines = text.split('\n').filter((line) => /Error|FAILED/.test(line));
  const picked = (lines.length ? lines : text.split('\n').filter(Boolean)).slice(-max);
  return picked.map((line) => line.replace(/^\(\s*[\d.]+\)\s*/, '').trim()).join(' / ');
}

function once(criu: string, pid: number, dir: string, port: number, extra: string[]): Promise<LazyDump> {
  const logFile = path.join(dir, 'dump.log');
  const args = ['dump', '-t', String(pid), '-D', dir, '-v4', '-o', 'dump.log', '--lazy-pages', '--address', '127.0.0.1', '--port', String(port), '--status-fd', '3', ...extra];
  const startedAt = performance.now();
  const child = spawn(criu, args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number>((resolve) => child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1))));
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise<LazyDump>((resolve, reject) => {
    const status = child.stdio[3] as NodeJS.ReadableStream;
    let ready = false;
    status.on('data', () => {
      if (ready) return;
      ready = true;
      resolve({ port, child, startedAt, readyAt: performance.now(), exited, logFile });
    });
    status.on('error', () => undefined);
    child.on('error', (error) => reject(new Error(`cannot run ${criu}: ${error.message} — point --criu at CRIU`)));
    void exited.then((code) => {
      if (ready) return;
      reject(new Error(`criu dump -t ${pid} failed (exit ${code}): ${criuLogErrors(logFile)}${stderr.trim() ? ` (${stderr.trim().split('\n').pop()})` : ''}; log ${logFile}`));
    });
  });
}

/** Starts the lazy dump; resolves once it serves. A lost race for the port is retried on another (criu then resumed the tasks). */
export async function startLazyDump(criu: string, pid: number, dir: string, extra: string[] = []): Promise<LazyDump> {
  for (let attempt = 1; ; attempt++) {
    const port = await freeLoopbackPort();
    try {
      return await once(criu, pid, dir, port, extra);
    } catch (error) {
      if (attempt >= 3 || !/Address already in use/.test((error as Error).message)) throw error;
      for (const name of fs.readdirSync(dir)) if (name.endsWith('.img')) fs.rmSync(path.join(dir, name));
    }
  }
}
