// Waiting for `criu dump --lazy-pages` to serve, without touching its socket. The dump's lazy page server accepts
// exactly ONE connection and then serves only it (docs/protocol.md §1.7): a probe connect would BE that
// connection, and the probe's close an EOF at a header boundary, which the dump counts as a completed transfer
// (it would kill the frozen tasks). So the LISTEN socket is looked for in the kernel's socket tables of this
// network namespace instead: asked of sock_diag (native/core/net/listen_probe.h, which walks only the listening
// sockets: microseconds), or, where netlink refuses, read from /proc/self/net/tcp and tcp6 (which walk every
// established-socket bucket: milliseconds a read, while the dump writes its images).
import fs from 'node:fs';
import net from 'node:net';
import { loadNative } from '../native.js';

/** TCP_LISTEN in the `st` column (include/net/tcp_states.h). */
const TCP_LISTEN = '0A';
const TABLES = ['/proc/self/net/tcp', '/proc/self/net/tcp6'];

/** One LISTEN socket of a table: its local address (IPv4 dotted, IPv6 as node prints it) and port. */
export interface ListenSocket {
  address: string;
  port: number;
}

/** The kernel prints each 32-bit word of the address in host byte order (little-endian here) as 8 hex digits. */
function wordBytes(hex: string): number[] {
  const bytes: number[] = [];
  for (let i = 0; i < 8; i += 2) bytes.push(parseInt(hex.slice(i, i + 2), 16));
  return bytes.reverse();
}

function decodeAddress(hex: string): string | undefined {
  if (hex.length === 8) return wordBytes(hex).join('.');
  if (hex.length !== 32) return undefined;
  const bytes = [0, 8, 16, 24].flatMap((at) => wordBytes(hex.slice(at, at + 8)));
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  // Through SocketAddress node writes the shortest form (::, ::ffff:127.0.0.1), as a user gives it.
  try {
    return new net.SocketAddress({ address: groups.join(':'), family: 'ipv6' }).address;
  } catch {
    return groups.join(':');
  }
}

/** The LISTEN sockets in the text of one /proc/net/tcp or tcp6 table. */
export function parseListenTable(text: string): ListenSocket[] {
  const out: ListenSocket[] = [];
  for (const line of text.split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 4 || fields[3] !== TCP_LISTEN) continue;
    const [addressHex, portHex] = fields[1]!.split(':');
    const address = addressHex && decodeAddress(addressHex);
    if (!address || !portHex) continue;
    out.push({ address, port: parseInt(portHex, 16) });
  }
  return out;
}

const WILDCARDS = new Set(['0.0.0.0', '::']);

/** Whether a connect to host:port would reach one of these LISTEN sockets (bound to host or to every address). */
export function listensFor(sockets: readonly ListenSocket[], host: string, port: number): boolean {
  const mapped = net.isIPv4(host) ? `::ffff:${host}` : undefined;
  return sockets.some((s) => s.port === port && (s.address === host || s.address === mapped || WILDCARDS.has(s.address)));
}

/** The /proc tables: the fallback where sock_diag cannot be asked. */
export function readTables(): ListenSocket[] {
  return TABLES.flatMap((table) => {
    try {
      return parseListenTable(fs.readFileSync(table, 'utf8'));
    } catch {
      return []; // no IPv6 in this kernel: no tcp6 table
    }
  });
}

/** How often to look: sock_diag costs microseconds, a read of the /proc tables milliseconds. */
const POLL_MS = { sockDiag: 1, proc: 10 };

/** The LISTEN sockets on port: sock_diag, or the /proc tables when it throws (then always, for this wait). */
function listeners(port: number, useProc: { value: boolean }): ListenSocket[] {
  if (!useProc.value) {
    try {
      return loadNative().tcpListening(port);
    } catch {
      useProc.value = true;
    }
  }
  return readTables();
}

/**
 * Resolves once something LISTENs for host:port in this network namespace; rejects with one line after timeoutMs
 * (0: no limit) or when the signal aborts. A dump signals readiness only through its --status-fd, which its
 * caller holds: the socket tables are what this process can see, so it looks at them every POLL_MS.
 */
export async function waitForListen(host: string, port: number, timeoutMs: number, signal?: AbortSignal): Promise<number> {
  const started = performance.now();
  const useProc = { value: false };
  for (;;) {
    if (listensFor(listeners(port, useProc), host, port)) return performance.now() - started;
    if (signal?.aborted) throw new Error(`stopped while waiting for the dump's page server on ${host}:${port}`);
    if (timeoutMs > 0 && performance.now() - started > timeoutMs) {
      throw new Error(
        `nothing listens on ${host}:${port} after ${(timeoutMs / 1000).toFixed(0)} s (--listen-timeout): start ` +
          `\`criu dump --lazy-pages --address ${host} --port ${port}\` in this daemon's network namespace, or check its dump.log`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, useProc.value ? POLL_MS.proc : POLL_MS.sockDiag));
  }
}
