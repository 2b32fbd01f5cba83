// criu's TLS flags (protocol doc §1.9), shared by `lazyd --page-server`, `lazyd page-server` and
// `lazyd lazy-pages`: --tls, --tls-cacert, --tls-cacrl, --tls-cert, --tls-key, --tls-no-cn-verify. Defaults are
// criu's and live in the native core (native/core/net/tls_context.h): /etc/pki/CA/cacert.pem (plus the system trust
// store when --tls-cacert is not given), /etc/pki/CA/cacrl.pem (if readable), /etc/pki/criu/cert.pem,
// /etc/pki/criu/private/key.pem.
import path from 'node:path';
import type { Argv } from 'yargs';

/** What the native PageServer / LazyPages take as `tls` ("" : criu's default for that file). */
export interface NativeTlsOptions {
  cacert: string;
  cacrl: string;
  cert: string;
  key: string;
  noCnVerify: boolean;
  /** The name the peer's certificate must carry: --address, on both ends, as criu ("" : not checked). */
  peerName: string;
}

export interface TlsArgs {
  tls?: boolean;
  tlsCacert?: string;
  tlsCacrl?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsNoCnVerify?: boolean;
}

export function tlsFlags<T>(y: Argv<T>) {
  return y
    .option('tls', { type: 'boolean', default: false, describe: 'TLS on the page-server connection (mutual X.509, as criu --tls)' })
    .option('tls-cacert', { type: 'string', describe: 'CA certificate(s) to trust (default /etc/pki/CA/cacert.pem plus the system store)' })
    .option('tls-cacrl', { type: 'string', describe: 'certificate revocation list (default /etc/pki/CA/cacrl.pem if readable)' })
    .option('tls-cert', { type: 'string', describe: 'own certificate (default /etc/pki/criu/cert.pem)' })
    .option('tls-key', { type: 'string', describe: 'own private key (default /etc/pki/criu/private/key.pem)' })
    .option('tls-no-cn-verify', { type: 'boolean', default: false, describe: "do not check that the peer's certificate names --address" })
    .option('tls-handshake-timeout', { type: 'number', default: 10, describe: 'page server: seconds a client may take to finish the TLS handshake (lazyd only)' });
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
