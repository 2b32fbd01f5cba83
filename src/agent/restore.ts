// The destination's two processes of one migration (and of a replica's failover, src/agent/replica-restore.ts):
// `lazyd lazy-pages` (this lazyd, as a child: one restore's engine, its failure policy and its uffds in a process
// of their own, so one bad restore never takes the agent down) started before the restore needs it, then
// `criu restore --lazy-pages -d` (docs/protocol.md §4.2, §5.2).
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { criuLogErrors } from '../migrate/lazy-dump.js';

export interface LazyPagesChild {
  child: ChildProcess;
  /** Resolves with its exit code; its last stderr lines are in output(). */
  exited: Promise<number>;
  output(): string;
}

function lazydEntry(): string {
  // bin/lazyd.js, whichever way this lazyd was started.
  return process.argv[1];
}

/** Where the lazy pages come from: a page server (a migration's source), or the images in the directory itself. */
export type PageSource = { pageServer: { address: string; port: number }; tlsArgs: string[] } | 'local';

/**
 * Starts `lazyd lazy-pages -D dir` (with --page-server --address A --port P when the pages are remote) and
 * resolves once it listens for the restore (its --status-fd byte). `--on-failure kill`: a restore whose pages can
 * never be completed must not leave a copy running whose missing pages read as zeros.
 */
export function startLazyPages(dir: string, source: PageSource): Promise<LazyPagesChild> {
  const from = source === 'local'
    ? []
    : ['--page-server', '--address', source.pageServer.address, '--port', String(source.pageServer.port), ...source.tlsArgs];
  const args = [lazydEntry(), 'lazy-pages', ...from, '-D', dir, '-o', 'lazy-pages.log', '--log-format', 'json', '--on-failure', 'kill', '--status-fd', '3', '--no-default-config'];
  const child = spawn(process.execPath, args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stderr!.on('data', (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-8192);
  });
  const exited = new Promise<number>((resolve) => child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1))));
  const handle: LazyPagesChild = { child, exited, output: () => output };
  return new Promise((resolve, reject) => {
    let ready = false;
    const status = child.stdio[3] as NodeJS.ReadableStream;
    status.on('error', () => undefined);
    status.on('data', () => {
      if (ready) return;
      ready = true;
      resolve(handle);
    });
    child.on('error', (error) => reject(new Error(`cannot start lazyd lazy-pages: ${error.message}`)));
    void exited.then((code) => {
      if (!ready) reject(new Error(`lazyd lazy-pages exited (${code}) before it was ready: ${lastLine(output) || criuLogErrors(path.join(dir, 'lazy-pages.log'))}`));
    });
  });
}

export function lastLine(text: string): string {
  return text.trim().split('\n').pop()?.replace(/^lazyd: /, '') ?? '';
}

export interface RestoreRun {
  child: ChildProcess;
  /** Resolves with the restored tree's root pid (host pid); rejects with one line from restore.log. */
  result: Promise<{ pid: number; ms: number }>;
}

/** `criu restore --lazy-pages -D dir -d --pidfile restored.pid`. */
export function runRestore(criu: string, dir: string): RestoreRun {
  const pidfile = path.join(dir, 'restored.pid');
  const started = performance.now();
  const child = spawn(criu, ['restore', '--lazy-pages', '-D', dir, '-d', '-v4', '-o', 'restore.log', '--pidfile', pidfile], {
    cwd: dir,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const result = new Promise<{ pid: number; ms: number }>((resolve, reject) => {
    child.on('error', (error) => reject(new Error(`cannot run ${criu}: ${error.message} — point lazyd agent --criu at CRIU`)));
    child.on('exit', (code, signal) => {
      const ms = performance.now() - started;
      if (code !== 0) {
        reject(new Error(`criu restore failed (${signal ?? `exit ${code}`}): ${criuLogErrors(path.join(dir, 'restore.log'))}${stderr.trim() ? ` (${lastLine(stderr)})` : ''}`));
        return;
      }
      const pid = Number(fs.readFileSync(pidfile, 'utf8').trim());
      if (!Number.isInteger(pid) || pid <= 0) reject(new Error(`criu restore exited 0 but wrote no pid to ${pidfile}`));
      else resolve({ pid, ms });
    });
  });
  return { child, result };
}

/** The summary numbers of lazy-pages' last stderr line ("N pages installed ... of T lazy; ..."). */
export function lazyPagesTotals(output: string): { installed: number; total: number; line: string } {
  const m = /lazyd lazy-pages: ((\d+) pages installed .*?of (\d+) lazy;[^\n]*)/.exec(output);
  return m ? { line: m[1], installed: Number(m[2]), total: Number(m[3]) } : { line: lastLine(output), installed: 0, total: 0 };
}
