// Who may reach lazyd's page server (README "Security"): where the daemon listens by default, the warning for a
// plain listener off loopback, and the allow-lists (--allow-from & co) as the native `access` option
// (native/core/net/access_policy.h enforces them: at accept, and at the session's first command).
import net from 'node:net';
import type { NativeAccessOptions } from '../native.js';
import { addressBlocks } from '../config/address-list.js';

/** Where `lazyd --page-server` listens without --address and without --tls: this host only. */
export const PLAIN_DEFAULT_ADDRESS = '127.0.0.1';

/** The names of a comma-separated list of certificate names. */
export function nameList(list: string | undefined): string[] {
  return addressBlocks(list);
}

export interface AccessValues {
  allowFrom?: string;
  allowFetchFrom?: string;
  allowUploadFrom?: string;
  tlsAllowName?: string;
  tlsAllowFetchName?: string;
  tlsAllowUploadName?: string;
}

/** The native access option; throws an Error with one line when the names lists are given without --tls. */
export function accessOptionsFrom(values: AccessValues, tls: boolean): NativeAccessOptions {
  const both = addressBlocks(values.allowFrom);
  const names = nameList(values.tlsAllowName);
  const access = {
    fetchFrom: [...both, ...addressBlocks(values.allowFetchFrom)],
    uploadFrom: [...both, ...addressBlocks(values.allowUploadFrom)],
    fetchNames: [...names, ...nameList(values.tlsAllowFetchName)],
    uploadNames: [...names, ...nameList(values.tlsAllowUploadName)],
  };
  if (!tls && access.fetchNames.length + access.uploadNames.length > 0) {
    const given = (['tlsAllowName', 'tlsAllowFetchName', 'tlsAllowUploadName'] as const)
      .filter((key) => values[key] !== undefined)
      .map((key) => `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);
    throw new Error(`${given.join(', ')} checks the peer's TLS certificate: it needs --tls (or use --allow-from to limit peers by address)`);
  }
  return access;
}

/** No allow-list: every peer may fetch and upload. */
export const OPEN_ACCESS: NativeAccessOptions = { fetchFrom: [], uploadFrom: [], fetchNames: [], uploadNames: [] };

const loopback = new net.BlockList();
loopback.addSubnet('127.0.0.0', 8, 'ipv4');
loopback.addAddress('::1', 'ipv6');
loopback.addSubnet('::ffff:127.0.0.0', 104, 'ipv6');

export function isLoopback(address: string): boolean {
  const family = net.isIP(address);
  return family !== 0 && loopback.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

export interface ListenPlan {
  /** The address to bind ("" : every IPv6 and IPv4 address). */
  address: string;
  /** One warning line for a plain listener off loopback, or undefined. */
  warning?: string;
}

/**
 * Where the daemon listens: --address when given; otherwise every address with --tls and loopback without it.
 * A plain listener that is not on loopback gets the warning (the checkpoints' memory is readable by whoever
 * connects). The criu drop-in does not come here: it listens where criu would, as criu does.
 */
export function listenPlan(address: string | undefined, port: number, tls: boolean, access: NativeAccessOptions): ListenPlan {
  if (address === undefined) return { address: tls ? '' : PLAIN_DEFAULT_ADDRESS };
  if (tls || isLoopback(address)) return { address };
  const where = `${address.includes(':') ? `[${address}]` : address}:${port}`;
  const limited = access.fetchFrom.length + access.uploadFrom.length > 0;
  const warning = limited
    ? `listening on ${where} without --tls: checkpoint memory (whatever the processes held: keys, tokens, passwords) crosses the network in clear, readable by anyone on the path and by any peer that --allow-from & co admit; run with --tls (and --tls-allow-name) to fix it`
    : `listening on ${where} without --tls: checkpoint memory (whatever the processes held: keys, tokens, passwords) is readable by any peer that can connect to this port; run with --tls (and --tls-allow-name), or limit the peers with --allow-from CIDR, to fix it`;
  return { address, warning };
}
