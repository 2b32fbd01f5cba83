// The lazy page server of a migration, one of three interchangeable kinds:
//   'criu'          criu page-server --lazy-pages          (one session, then exits 0)
//   'lazyd'         lazyd --page-server (serve mode)        (any number of sessions, until SIGTERM; exits 0)
//   'lazyd-dropin'  lazyd page-server --lazy-pages          (criu's command line; one session, then exits 0)
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { repoRoot } from '../../src/paths.js';
import { findCriu, type CriuVersion } from './criu.js';
import { failureText, killQuietly, pollFor, processAlive, startWithStatusFd, type ExitInfo, type Proc } from './process.js';

export const SERVER_KINDS = ['criu', 'lazyd', 'lazyd-dropin'] as const;
export type ServerKind = (typeof SERVER_KINDS)[number];

export const LISTENING_RE = /listening on \[?([0-9a-fA-F.:]+)\]?:(\d+)/;

export interface PageServerOptions {
  kind: ServerKind;
  /** The images to serve (a plain `criu dump`). */
  imagesDir: string;
  /** For kind 'criu': which CRIU runs the server. */
  criuVersion?: CriuVersion;
  address?: string;
  /** 0 or undefined: a free port (lazyd serve mode picks it itself and prints it). */
  port?: number;
  /** -o, relative to the images dir like criu's (default page-server.log). */
  logFile?: string;
  /** --pidfile (criu resolves a relative path against the images dir, and writes it only with -d). */
  pidfile?: string;
  /** Drop-in and criu only: -d, fork into the background once listening; the server's pid comes from the pidfile. */
  daemon?: boolean;
  verbosity?: number;
  extraArgs?: string[];
  readyTimeoutMs?: number;
  /** Run the server in this network namespace (see CommandSpec.netns). */
  netns?: string;
}

export interface PageServer {
  kind: ServerKind;
  address: string;
  port: number;
  /** Sessions it serves before exiting on its own: 1, or Infinity for serve mode. */
  sessions: number;
  /** The process we started (with -d: the launcher, which exits 0 once the daemon listens). */
  proc: Proc;
  /** The serving process: proc.pid, or with -d the pid read from the pidfile. */
  pid: number;
  logFile: string;
  /** Serve mode: SIGTERM and wait (expects exit 0). One-session kinds: wait for the exit it makes by itself. */
  finish(timeoutMs?: number): Promise<ExitInfo>;
  /** Kill it without asking (cleanup after a failure). */
  kill(): void;
}

/** The `lazyd` command: <repo>/bin/lazyd.js, exec'd itself (its shebang drops NODE_EXTRA_CA_CERTS, as a user's `lazyd` does). */
export function lazydBin(): string {
  return path.join(repoRoot(), 'bin', 'lazyd.js');
}

/** A TCP port nobody listens on right now (bind port 0, read it, close). */
export async function freePort(address = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, address, () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** How a server that could not bind its port says so (criu, lazyd, node). */
const PORT_IN_USE_RE = /address already in use|EADDRINUSE|port is in use/i;

/**
 * Runs `start` with a port freePort() picked: the port is free only until another process binds it, so when
 * `start` fails because it is in use, it runs again with another one (3 times in all).
 */
export async function onFreePort<T>(start: (port: number) => Promise<T>, address = '127.0.0.1'): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const port = await freePort(address);
    try {
      return await start(port);
    } catch (error) {
      if (attempt >= 3 || !PORT_IN_USE_RE.test((error as Error).message)) throw error;
    }
  }
}

/**
 * Starts a page server of the given kind and resolves once it listens (status byte, and the port for lazyd).
 * Without a port, criu and the drop-in get a free one picked here; should another process take it first, the
 * start is retried with a new port (twice).
 */
export async function startPageServer(options: PageServerOptions): Promise<PageServer> {
  const pickPort = !options.port && options.kind !== 'lazyd';
  for (let attempt = 1; ; attempt++) {
    try {
      return await startPageServerOnce(options);
    } catch (error) {
      if (!pickPort || attempt >= 3 || !PORT_IN_USE_RE.test((error as Error).message)) throw error;
    }
  }
}

async function startPageServerOnce(options: PageServerOptions): Promise<PageServer> {
  const address = options.address ?? '127.0.0.1';
  const logFile = options.logFile ?? 'page-server.log';
  const verbosity = `-v${options.verbosity ?? 4}`;
  const readyTimeoutMs = options.readyTimeoutMs ?? 30_000;
  const absLog = path.isAbsolute(logFile) ? logFile : path.join(options.imagesDir, logFile);
  const extra = options.extraArgs ?? [];
  const pidfile = [...(options.pidfile ? ['--pidfile', options.pidfile] : []), ...(options.daemon ? ['-d'] : [])];
  if (options.daemon && (options.kind === 'lazyd' || !options.pidfile)) {
    throw new Error('daemon mode needs a one-session server kind (criu, lazyd-dropin) and a pidfile');
  }

  let file: string;
  let args: string[];
  let name: string;
  let port = options.port ?? 0;
  switch (options.kind) {
    case 'criu': {
      if (!options.criuVersion) throw new Error("page server kind 'criu' needs criuVersion");
      const criu = findCriu(options.criuVersion);
      if (!port) port = await freePort(address);
      file = criu.path;
      name = `criu ${criu.version} page-server --lazy-pages`;
      args = ['page-server', '--lazy-pages', '-D', options.imagesDir, '--address', address, '--port', String(port), verbosity, '-o', logFile, ...pidfile, ...extra];
      break;
    }
    case 'lazyd-dropin':
      if (!port) port = await freePort(address);
      file = lazydBin();
      name = 'lazyd page-server --lazy-pages';
      args = ['page-server', '--lazy-pages', '-D', options.imagesDir, '--address', address, '--port', String(port), verbosity, '-o', logFile, ...pidfile, ...extra];
      break;
    case 'lazyd':
      file = lazydBin();
      name = 'lazyd --page-server';
      args = ['--page-server', '-D', options.imagesDir, '--address', address, '--port', String(port), verbosity, '-o', logFile, ...pidfile, ...extra];
      break;
    default:
      throw new Error(`unknown page server kind ${String(options.kind)}`);
  }

  // lazyd serve mode prints "listening on A:P"; with --port 0 that is the only way to learn the port.
  let stdout = '';
  let announced: number | undefined;
  const onStdout = (text: string) => {
    stdout += text;
    const m = stdout.match(LISTENING_RE);
    if (m) announced = Number(m[2]);
  };
  const spec = { name, file, args: [...args, '--status-fd', '3'], cwd: options.imagesDir, logFile: absLog, netns: options.netns };
  const proc = await startWithStatusFd(spec, readyTimeoutMs, onStdout);
  if (options.kind === 'lazyd') {
    // The line may trail the status byte by a moment (the deadline is one only a failure reaches).
    const deadline = performance.now() + 15_000;
    while (announced === undefined && proc.running && performance.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    if (announced === undefined) {
      proc.kill('SIGKILL');
      throw new Error(failureText(spec, 'signalled ready but printed no "listening on <address>:<port>" line', proc.outputText));
    }
    if (port && announced !== port) {
      proc.kill('SIGKILL');
      throw new Error(failureText(spec, `listens on port ${announced}, not on --port ${port}`, proc.outputText));
    }
    port = announced;
  }

  const sessions = options.kind === 'lazyd' ? Infinity : 1;
  let pid = proc.pid;
  if (options.daemon) {
    const launcher = await proc.waitOk(readyTimeoutMs);
    void launcher;
    const file = path.resolve(options.imagesDir, options.pidfile!);
    pid = await pollFor(`the daemon's pid in ${file}`, 5000, () => {
      const value = Number(fs.readFileSync(file, 'utf8').trim());
      return Number.isInteger(value) && value > 0 ? value : undefined;
    }).catch((error) => {
      throw new Error(failureText(spec, `daemonized but left no usable pidfile: ${(error as Error).message}`));
    });
  }
  const daemonPid = pid;
  return {
    kind: options.kind,
    address,
    port,
    sessions,
    proc,
    pid,
    logFile: absLog,
    async finish(timeoutMs = 30_000) {
      if (options.daemon) {
        // Not our child: no exit code to collect. Wait for it to go, as zdtm does (wait_pid_die).
        const started = performance.now();
        await pollFor(`${name} daemon (pid ${daemonPid}) to exit after its session`, timeoutMs, () =>
          processAlive(daemonPid) ? undefined : true,
        ).catch((error) => {
          killQuietly(daemonPid);
          throw new Error(failureText(spec, (error as Error).message));
        });
        return { code: null, signal: null, ms: performance.now() - started };
      }
      if (sessions === Infinity) proc.kill('SIGTERM');
      return proc.waitOk(timeoutMs);
    },
    kill() {
      proc.kill('SIGKILL');
      if (options.daemon) killQuietly(daemonPid);
    },
  };
}
