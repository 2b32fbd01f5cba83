// -d/--daemon, as criu does it: the command runs on in the background, detached from the terminal and its
// session, and the launcher exits 0 once the daemon is ready (listening), or 1 if it died before that.
// Node cannot fork, so the launcher re-runs lazyd without -d, with a pipe on fd 3 as the daemon's --status-fd.
import type { ChildProcess } from 'node:child_process';
import { signalStatusFd } from './process-control.js';

const CHILD_MARK = 'LAZYD_DAEMON_CHILD';

export interface DaemonRequest {
  /** The arguments without -d/--daemon and without the caller's --status-fd. */
  childArgs: string[];
  statusFd?: number;
}

/** Finds -d/--daemon; returns undefined when the command should run in the foreground. */
export function daemonRequest(args: readonly string[]): DaemonRequest | undefined {
  if (process.env[CHILD_MARK]) return undefined;
  if (!args.some((a) => a === '-d' || a === '--daemon')) return undefined;
  const childArgs: string[] = [];
  let statusFd: number | undefined;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === '-d' || arg === '--daemon') continue;
    if (arg === '--status-fd') {
      statusFd = Number(args[++i]);
      continue;
    }
    if (arg.startsWith('--status-fd=')) {
      statusFd = Number(arg.slice('--status-fd='.length));
      continue;
    }
    childArgs.push(arg);
  }
  return { childArgs, statusFd };
}

function withoutExtraCaCerts(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const { NODE_EXTRA_CA_CERTS: _unused, ...rest } = env;
  return rest;
}

// The daemon writes --pidfile itself (its own pid) before it reports ready.
// node:child_process is imported here, for -d only: loading it costs start-up time every command would pay.
export async function runDaemon(request: DaemonRequest): Promise<number> {
  const { spawn } = await import('node:child_process');
  return new Promise((resolve) => {
    const child: ChildProcess = spawn(process.execPath, [process.argv[1], ...request.childArgs, '--status-fd', '3'], {
      detached: true,
      stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
      // Without NODE_EXTRA_CA_CERTS, as bin/lazyd.js's shebang starts lazyd (node would parse the bundle at start).
      env: { ...withoutExtraCaCerts(process.env), [CHILD_MARK]: '1' },
    });
    const status = child.stdio[3] as NodeJS.ReadableStream & { destroy(): void };
    let ready = false;
    status.on('data', () => {
      if (ready) return;
      ready = true;
      signalStatusFd(request.statusFd);
      status.destroy();
      child.unref();
      resolve(0);
    });
    status.on('error', () => {});
    child.on('exit', (code, signal) => {
      if (ready) return;
      process.stderr.write(
        `lazyd: the daemon exited (${signal ?? `code ${code}`}) before it was ready — see its log file (-o) for the cause\n`,
      );
      resolve(1);
    });
  });
}
