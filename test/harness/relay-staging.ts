// Relay staging as the README's "Relay staging" flow runs it, on the source host:
//
//   lazyd --page-server --control-socket S -D empty-dir       started first (an empty staging daemon)
//   criu dump --lazy-pages -D D --address 127.0.0.1 --port P  the frozen tasks serve their memory on loopback
//   lazyd staging relay -D D --from 127.0.0.1:P --control-socket S --status-fd 3
//        its status byte: the pull runs and the daemon serves the checkpoint; it exits 0 once every lazy page is
//        held and the dump has its CLOSE (the dump then exits 0 and kills the originals)
//
// The restores connect to the daemon's port with a copy of D, like a restore from `criu dump --lazy-pages` itself.
import fs from 'node:fs';
import path from 'node:path';
import { lazydBin, startPageServer, type PageServer } from './page-server.js';
import { Proc, startWithStatusFd, type ExitInfo } from './process.js';

export interface RelayDaemon extends RelayTarget {
  server: PageServer;
  /** The daemon's --control-socket. */
  controlSocket: string;
  /** Its (empty) -D. */
  dir: string;
}

export interface RelayDaemonOptions {
  /** A directory of its own (created): the daemon's -D, its log and its control socket. */
  dir: string;
  address: string;
  netns?: string;
  /** --staging-max-bytes (default: the flag's). */
  stagingMaxBytes?: number;
  extraArgs?: string[];
}

/** Starts an empty staging daemon with a control socket: `lazyd --page-server -D dir --control-socket dir/control.sock`. */
export async function startRelayDaemon(options: RelayDaemonOptions): Promise<RelayDaemon> {
  fs.mkdirSync(options.dir, { recursive: true });
  const controlSocket = path.join(options.dir, 'control.sock');
  const server = await startPageServer({
    kind: 'lazyd',
    imagesDir: options.dir,
    address: options.address,
    netns: options.netns,
    logFile: 'lazyd.log',
    extraArgs: [
      '--control-socket', controlSocket,
      ...(options.stagingMaxBytes !== undefined ? ['--staging-max-bytes', String(options.stagingMaxBytes)] : []),
      ...(options.extraArgs ?? []),
    ],
  });
  return { server, controlSocket, dir: options.dir, logFile: server.logFile };
}

/** What `lazyd staging` needs of a daemon: its control socket, a directory to run in, its log (for messages). */
export interface RelayTarget {
  controlSocket: string;
  dir: string;
  logFile?: string;
}

export interface RelayCommand {
  proc: Proc;
  /** Waits for `lazyd staging relay` to exit 0 (the pull is complete); its one line. */
  done(timeoutMs?: number): Promise<{ exit: ExitInfo; line: string }>;
  /** Waits for it to exit, whatever the status; its output. */
  ended(timeoutMs?: number): Promise<{ exit: ExitInfo; output: string }>;
}

/** The line `lazyd staging relay` prints once a relay completes. */
export const RELAYED_RE = /relayed checkpoint #(\d+) \(pids ([\d, ]+)\): (\d+) pages, ([\d.]+) MiB in (\d+) ms; the dump has its CLOSE/;

/**
 * Starts `lazyd staging relay -D dumpDir --from host:port` against a relay daemon; resolves once its status byte
 * says the pull runs (from then on restores of the checkpoint are served). Rejects (with its output) when it
 * exits first: the relay could not start.
 */
export async function startRelayCommand(
  daemon: RelayTarget,
  dumpDir: string,
  from: { address: string; port: number },
  extraArgs: string[] = [],
  readyTimeoutMs = 60_000,
  /** Run it in the source host's network namespace (and so on its CPUs, see NETNS_CPUS). */
  netns?: string,
): Promise<RelayCommand> {
  const fromText = from.address.includes(':') ? `[${from.address}]:${from.port}` : `${from.address}:${from.port}`;
  const spec = {
    name: 'lazyd staging relay',
    file: lazydBin(),
    args: ['staging', 'relay', '-D', dumpDir, '--from', fromText, '--control-socket', daemon.controlSocket, ...extraArgs, '--status-fd', '3'],
    cwd: daemon.dir,
    logFile: daemon.logFile,
    netns,
  };
  const proc = await startWithStatusFd(spec, readyTimeoutMs);
  return {
    proc,
    async done(timeoutMs = 120_000) {
      const exit = await proc.waitOk(timeoutMs);
      const line = proc.outputText.match(RELAYED_RE)?.[0];
      if (!line) throw new Error(`lazyd staging relay exited 0 without its "relayed checkpoint" line:\n${proc.outputText}`);
      return { exit, line };
    },
    async ended(timeoutMs = 120_000) {
      const exit = await proc.wait(timeoutMs);
      return { exit, output: proc.outputText };
    },
  };
}

/** `lazyd staging <args> --control-socket S` to completion: its exit code and output (stdout and stderr). */
export async function stagingCommand(daemon: RelayTarget, args: string[], timeoutMs = 30_000): Promise<{ code: number | null; output: string }> {
  const spec = { name: `lazyd staging ${args[0]}`, file: lazydBin(), args: ['staging', ...args, '--control-socket', daemon.controlSocket] };
  const proc = new Proc(spec, ['ignore', 'pipe', 'pipe']);
  const exit = await proc.wait(timeoutMs);
  return { code: exit.code, output: proc.outputText };
}
