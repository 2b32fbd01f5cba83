// The staging control socket (`lazyd --page-server --control-socket PATH`): an operator lists the staged
// checkpoints and releases one, from outside the daemon. A unix stream socket (mode 0600: root's, like the
// daemon), one command line per connection, one answer line, then the daemon hangs up:
//   list                 ok [{"id":1,"pids":[1],"bytes":16777216,"restores":0,"stagedAt":"2026-…"}, …]
//   release <id>         ok released checkpoint #<id> (pids …)      once the native side has released it
//   release pid <pid>    the same, for the checkpoint that holds <pid>
//   relay <json>         relay staging (./relay.ts): {"dir","host","port","wait",...} as RelayRequest; the answer
//                        comes once the pull is complete (wait) or once it runs (no wait):
//                        ok relayed checkpoint #<id> (pids …): <n> pages, <m> MiB in <t> ms; the dump has its CLOSE
//                        ok relaying checkpoint #<id> (pids …): <n> lazy pages from <host:port>
//   anything else        error <why>
// `list` shows relayed checkpoints too, with their state (pulling, complete, failed) and pages held.
// A released checkpoint is offered to no new restore; those in progress finish (as --staging-restores/--staging-ttl).
import fs from 'node:fs';
import net from 'node:net';
import type { Logger } from '../log.js';
import type { StagedCheckpointInfo } from './stager.js';
import { relayDoneLine, relayFailureState, type RelayInfo, type RelayOutcome, type RelayRequest } from './relay.js';

/** What the control socket needs of the daemon's relays (Relayer has it). */
export interface RelayControl {
  start(request: RelayRequest): Promise<RelayInfo>;
  wait(checkpoint: number): Promise<RelayOutcome>;
  list(): RelayInfo[];
}

/** What the control socket needs of the daemon (PageServerService has it). */
export interface StagingControlTarget {
  stagedCheckpoints(): StagedCheckpointInfo[];
  /** Resolves once the checkpoint is released (its 'released' event). */
  releaseAndWait(checkpoint: number, reason: string): Promise<void>;
  /** Relay staging (undefined: this daemon cannot relay). */
  relays?: RelayControl;
}

/** One checkpoint as `list` answers it. */
export interface ListedCheckpoint {
  id: number;
  pids: number[];
  bytes: number;
  restores: number;
  stagedAt: string;
  /** Relayed checkpoints only. */
  relay?: { state: RelayInfo['state']; pagesHeld: number; pagesTotal: number; from: string; message?: string };
}

const MAX_LINE = 8192; // a relay line carries a path (PATH_MAX 4096) and a few numbers
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
      // A relay that waits says first that its pull runs (restores may start), then how it ended.
      const notify = (early: string) => {
        if (!answered) socket.write(early.replace(/\n/g, ' ') + '\n');
      };
      runCommand(line, target, logger, notify).then(answer, (error) => answer(`error ${(error as Error).message}`));
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

/** The answer line of one command; `notify` gets the lines that come before it (a waiting relay's first one). */
export async function runCommand(
  line: string, target: StagingControlTarget, logger: Logger, notify: (line: string) => void = () => undefined,
): Promise<string> {
  const words = line.split(/\s+/).filter(Boolean);
  if (words[0] === 'list' && words.length === 1) return `ok ${JSON.stringify(listCheckpoints(target))}`;
  if (words[0] === 'relay') return relayCommand(line.slice(line.indexOf('relay') + 5).trim(), target, notify);
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
  return `error unknown command ${JSON.stringify(line.slice(0, 80))}: expected list, release <id>, release pid <pid> or relay {…}`;
}

function relayOf(info: RelayInfo): ListedCheckpoint['relay'] {
  return { state: info.state, pagesHeld: info.pagesHeld, pagesTotal: info.pagesTotal, from: info.from, ...(info.message ? { message: info.message } : {}) };
}

/** The staged checkpoints, with the state of those a relay brings, and the relays not staged (yet, or any more). */
export function listCheckpoints(target: StagingControlTarget): ListedCheckpoint[] {
  const relays = new Map((target.relays?.list() ?? []).map((r) => [r.id, r]));
  const list: ListedCheckpoint[] = target.stagedCheckpoints().map((c) => {
    const relay = relays.get(c.id);
    relays.delete(c.id);
    return {
      id: c.id,
      pids: c.pids,
      bytes: relay ? relay.bytes : c.bytes,
      restores: c.restores,
      stagedAt: new Date(c.stagedAt).toISOString(),
      ...(relay ? { relay: relayOf(relay) } : {}),
    };
  });
  for (const r of relays.values()) {
    // Not staged (the daemon forgets a relay once its checkpoint is released): listed from the relay alone.
    list.push({ id: r.id, pids: r.pids, bytes: r.bytes, restores: 0, stagedAt: new Date(r.startedAt).toISOString(), relay: relayOf(r) });
  }
  return list.sort((a, b) => a.id - b.id);
}

/** The fields of a relay request and what each must be (the command checks its flags; this checks the line). */
export function parseRelayRequest(json: string): { request: RelayRequest; wait: boolean } {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(json) as Record<string, unknown>;
  } catch {
    throw new Error('relay: expected a JSON object after relay');
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new Error('relay: expected a JSON object after relay');
  const text = (key: string) => {
    const v = raw[key];
    if (typeof v !== 'string' || !v) throw new Error(`relay: "${key}" must be a non-empty string`);
    return v;
  };
  const whole = (key: string, min: number, max = Number.MAX_SAFE_INTEGER) => {
    const v = raw[key];
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new Error(`relay: "${key}" must be a whole number from ${min} to ${max}`);
    return v;
  };
  const dir = text('dir');
  if (!dir.startsWith('/')) throw new Error('relay: "dir" must be an absolute path (the daemon has its own working directory)');
  const format = raw.format === undefined ? undefined : whole('format', 24, 32);
  if (format !== undefined && format !== 24 && format !== 32) throw new Error('relay: "format" must be 24 or 32');
  return {
    wait: raw.wait !== false,
    request: {
      dir,
      host: text('host'),
      port: whole('port', 1, 65535),
      listenTimeoutMs: whole('listenTimeoutMs', 0),
      tls: raw.tls === true,
      format,
      requestBytes: whole('requestBytes', 4096),
      inflightBytes: whole('inflightBytes', 4096),
      stallTimeoutMs: whole('stallTimeoutMs', 1),
      connectTimeoutMs: whole('connectTimeoutMs', 1),
    },
  };
}

async function relayCommand(json: string, target: StagingControlTarget, notify: (line: string) => void): Promise<string> {
  if (!target.relays) return 'error relay: this daemon does not relay (it needs staging on)';
  const { request, wait } = parseRelayRequest(json);
  const started = await target.relays.start(request);
  const running = `relaying checkpoint #${started.id} (pids ${started.pids.join(', ')}): ${started.pagesTotal} lazy pages from ${started.from}`;
  if (!wait) return `ok ${running}`;
  notify(running);
  const outcome = await target.relays.wait(started.id);
  if (outcome.ok) return `ok ${relayDoneLine(outcome.info)}`;
  // The native message says what happened, how many pages were held and what the dump does (it had a reset).
  return `error checkpoint #${outcome.info.id}: ${outcome.message}; ${relayFailureState(outcome.info)}`;
}

/**
 * The client side: sends one command line, resolves with the answer (the last line; timeoutMs 0: wait as long as
 * it takes). Lines before it (a waiting relay's "relaying checkpoint #N") go to onLine as they arrive.
 */
export function sendStagingCommand(socketPath: string, command: string, timeoutMs = 10_000, onLine?: (line: string) => void): Promise<string> {
  return new Promise((resolve, reject) => {
    let reply = '';
    const socket = net.connect(socketPath, () => socket.write(command + '\n'));
    socket.setEncoding('utf8');
    if (timeoutMs > 0) socket.setTimeout(timeoutMs, () => socket.destroy(new Error(`no answer on ${socketPath} within ${timeoutMs} ms`)));
    let seen = 0;
    socket.on('data', (d: string) => {
      reply += d;
      // Every complete line but the answer is an early one; the answer is the one the daemon ends with.
      for (let end = reply.indexOf('\n', seen); end >= 0; end = reply.indexOf('\n', seen)) {
        const line = reply.slice(seen, end);
        seen = end + 1;
        try {
          if (!/^(ok|error)\b/.test(line)) onLine?.(line);
        } catch (error) {
          socket.destroy(error as Error);
        }
      }
    });
    socket.on('error', (error: NodeJS.ErrnoException) => {
      const hint = error.code === 'ENOENT' || error.code === 'ECONNREFUSED' ? ' (is lazyd running with --control-socket?)' : '';
      reject(new Error(`${socketPath}: ${error.message}${hint}`));
    });
    socket.on('close', () => {
      const line = reply.split('\n').find((l) => /^(ok|error)\b/.test(l));
      if (line) resolve(line);
      else reject(new Error(`${socketPath}: the daemon hung up without an answer`));
    });
  });
}
