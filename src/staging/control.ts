// The staging control socket (`lazyd --page-server --control-socket PATH`): an operator lists the staged
// checkpoints and releases one, from outside the daemon. A unix stream socket (mode 0600: root's, like the
// daemon), one command line per connection, one answer line, then the daemon hangs up:
//   list                 ok [{"id":1,"pids":[1],"bytes":16777216,"restores":0,"stagedAt":"2026-…"}, …]
//   release <id>         ok released checkpoint #<id> (pids …)      once the native side has released it
//   release pid <pid>    the same, for the checkpoint that holds <pid>
//   anything else        error <why>
// A released checkpoint is offered to no new restore; those in progress finish (as --staging-restores/--staging-ttl).
import fs from 'node:fs';
import net from 'node:net';
import type { Logger } from '../log.js';
import type { StagedCheckpointInfo } from './stager.js';

/** What the control socket needs of the daemon (PageServerService has it). */
export interface StagingControlTarget {
  stagedCheckpoints(): StagedCheckpointInfo[];
  /** Resolves once the checkpoint is released (its 'released' event). */
  releaseAndWait(checkpoint: number, reason: string): Promise<void>;
}

const MAX_LINE = 1024;
const RELEASE_WAIT_MS = 5000;

export interface StagingControlServer {
  path: string;
  close(): Promise<void>;
}

/** Listens on socketPath (a stale socket file there is replaced). */
export async function startStagingControl(socketPath: string, target: StagingControlTarget, logger: Logger): Promise<StagingControlServer> {
  removeStaleSocket(socketPath);
  const server = net.createServer((socket) => {
    let buffered = '';
    let answered = false;
    const answer = (line: string) => {
      if (answered) return;
      answered = true;
      socket.end(line.replace(/\n/g, ' ') + '\n');
    };
    socket.setEncoding('utf8');
    socket.on('error', () => undefined);
    socket.on('data', (chunk: string) => {
      buffered += chunk;
      const end = buffered.indexOf('\n');
      if (end < 0) {
        if (buffered.length > MAX_LINE) answer('error command line too long');
        return;
      }
      const line = buffered.slice(0, end).trim();
      socket.pause();
      runCommand(line, target, logger).then(answer, (error) => answer(`error ${(error as Error).message}`));
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  fs.chmodSync(socketPath, 0o600);
  logger.info({ socket: socketPath }, `Staging control socket listening on ${socketPath}`);
  return {
    path: socketPath,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        fs.rmSync(socketPath, { force: true });
      }),
  };
}

function removeStaleSocket(socketPath: string): void {
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(socketPath);
  } catch {
    return;
  }
  if (!stat.isSocket()) throw new Error(`--control-socket ${socketPath}: exists and is not a socket`);
  fs.rmSync(socketPath);
}

export async function runCommand(line: string, target: StagingControlTarget, logger: Logger): Promise<string> {
  const words = line.split(/\s+/).filter(Boolean);
  if (words[0] === 'list' && words.length === 1) {
    const list = target.stagedCheckpoints().map((c) => ({
      id: c.id,
      pids: c.pids,
      bytes: c.bytes,
      restores: c.restores,
      stagedAt: new Date(c.stagedAt).toISOString(),
    }));
    return `ok ${JSON.stringify(list)}`;
  }
  if (words[0] === 'release' && (words.length === 2 || (words.length === 3 && words[1] === 'pid'))) {
    const byPid = words.length === 3;
    const number = words[words.length - 1];
    if (!/^\d+$/.test(number)) return `error release: ${number} is not a number`;
    const n = Number(number);
    const staged = target.stagedCheckpoints();
    const found = byPid ? staged.find((c) => c.pids.includes(n)) : staged.find((c) => c.id === n);
    if (!found) return `error no staged checkpoint ${byPid ? `holds pid ${n}` : `#${n}`}`;
    logger.info({ checkpoint: found.id }, `Control socket: release of staged checkpoint #${found.id} requested`);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`checkpoint #${found.id} was not released within ${RELEASE_WAIT_MS} ms`)), RELEASE_WAIT_MS);
    });
    try {
      await Promise.race([target.releaseAndWait(found.id, 'released on request (control socket)'), timeout]);
    } finally {
      clearTimeout(timer);
    }
    return `ok released checkpoint #${found.id} (pids ${found.pids.join(', ')})`;
  }
  return `error unknown command ${JSON.stringify(line.slice(0, 80))}: expected list, release <id> or release pid <pid>`;
}

/** The client side: sends one command line, resolves with the answer line. */
export function sendStagingCommand(socketPath: string, command: string, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let reply = '';
    const socket = net.connect(socketPath, () => socket.write(command + '\n'));
    socket.setEncoding('utf8');
    socket.setTimeout(timeoutMs, () => socket.destroy(new Error(`no answer on ${socketPath} within ${timeoutMs} ms`)));
    socket.on('data', (d: string) => (reply += d));
    socket.on('error', (error: NodeJS.ErrnoException) => {
      const hint = error.code === 'ENOENT' || error.code === 'ECONNREFUSED' ? ' (is lazyd running with --control-socket?)' : '';
      reject(new Error(`${socketPath}: ${error.message}${hint}`));
    });
    socket.on('close', () => {
      const line = reply.split('\n')[0];
      if (line) resolve(line);
      else reject(new Error(`${socketPath}: the daemon hung up without an answer`));
    });
  });
}
