// Failover's restore on the standby: `lazyd lazy-pages -D <committed epoch>` serving the pages from the standby's
// own images (no page crosses the network), then `criu restore --lazy-pages -d` (src/agent/restore.ts).
import { spawn } from 'node:child_process';
import path from 'node:path';
import { criuLogErrors } from '../migrate/lazy-dump.js';
import { lastLine, runRestore, type LazyPagesChild } from './restore.js';

export function startLocalLazyPages(dir: string): Promise<LazyPagesChild> {
  const args = [process.argv[1], 'lazy-pages', '-D', dir, '-o', 'lazy-pages.log', '--log-format', 'json', '--on-failure', 'kill', '--status-fd', '3', '--no-default-config'];
  const child = spawn(process.execPath, args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stderr!.on('data', (chunk: Buffer) => (output = (output + chunk.toString()).slice(-8192)));
  const exited = new Promise<number>((resolve) => child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1))));
  const handle: LazyPagesChild = { child, exited, output: () => output };
  return new Promise((resolve, reject) => {
    let ready = false;
    const status = child.stdio[3] as NodeJS.ReadableStream;
    status.on('error', () => undefined);
    status.on('data', () => {
      if (!ready) {
        ready = true;
        resolve(handle);
      }
    });
    child.on('error', (error) => reject(new Error(`cannot start lazyd lazy-pages: ${error.message}`)));
    void exited.then((code) => {
      if (!ready) reject(new Error(`lazyd lazy-pages exited (${code}) before it was ready: ${lastLine(output) || criuLogErrors(path.join(dir, 'lazy-pages.log'))}`));
    });
  });
}

/** Lazy restore of `dir`; resolves once the tree runs (criu restore -d has returned). */
export async function restoreLocally(criu: string, dir: string): Promise<{ pid: number; lazyPages: LazyPagesChild }> {
  const lazyPages = await startLocalLazyPages(dir);
  try {
    const { pid } = await runRestore(criu, dir).result;
    return { pid, lazyPages };
  } catch (error) {
    lazyPages.child.kill('SIGTERM');
    throw error;
  }
}
