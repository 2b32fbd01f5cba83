// criu's TLS flags (docs/protocol.md §1.9, defined in src/config/flags.ts), shared by `lazyd --page-server`,
// `lazyd page-server` and `lazyd lazy-pages`: --tls, --tls-cacert, --tls-cacrl, --tls-cert, --tls-key,
// --tls-no-cn-verify, turned into the native `tls` option here. The files' defaults are criu's and live in the
// native core (native/core/net/tls_context.h): /etc/pki/CA/cacert.pem (plus the system trust
// store when --tls-cacert is not given), /etc/pki/CA/cacrl.pem (if readable), /etc/pki/criu/cert.pem,
// /etc/pki/criu/private/key.pem.
import path from 'node:path';
import type { NativeTlsOptions } from '../native.js';

export type { NativeTlsOptions };

/** The TLS flags' values (src/config/flags.ts). */
export interface TlsArgs {
  tls?: boolean;
  tlsCacert?: string;
  tlsCacrl?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsNoCnVerify?: boolean;
}

/**
 * The native TLS options for these flags, or undefined without --tls. Relative paths are taken from the directory
 * lazyd was started in. TLS flags without --tls are reported through `warn` (the connection stays plain, as criu's).
 */
export function tlsOptionsFrom(args: TlsArgs, address: string | undefined, warn: (message: string) => void): NativeTlsOptions | undefined {
  const files = { cacert: args.tlsCacert, cacrl: args.tlsCacrl, cert: args.tlsCert, key: args.tlsKey };
  if (!args.tls) {
    const given = Object.entries(files).filter(([, value]) => value !== undefined).map(([name]) => `--tls-${name}`);
    if (given.length || args.tlsNoCnVerify) {
      warn(`${[...given, ...(args.tlsNoCnVerify ? ['--tls-no-cn-verify'] : [])].join(', ')} given without --tls: the connection is plain TCP`);
    }
    return undefined;
  }
  const resolve = (file: string | undefined) => (file ? path.resolve(file) : '');
  return {
    cacert: resolve(files.cacert),
    cacrl: resolve(files.cacrl),
    cert: resolve(files.cert),
    key: resolve(files.key),
    noCnVerify: args.tlsNoCnVerify ?? false,
    peerName: address ?? '',
  };
}
