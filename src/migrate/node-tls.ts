// criu's TLS flags (docs/protocol.md §1.9) for the connections of `lazyd migrate` and `lazyd agent` that run in
// JavaScript (the control channel; the source's page server is native, src/migrate/relay-source.ts): the same files and defaults as the native side
// (src/cli/tls-options.ts), loaded into Node's tls module. Mutual: each end presents its certificate and
// demands the peer's, signed by --tls-cacert.
import fs from 'node:fs';
import type { SecureContextOptions } from 'node:tls';
import type { TlsArgs } from '../cli/tls-options.js';

const DEFAULTS = {
  cacert: '/etc/pki/CA/cacert.pem',
  cacrl: '/etc/pki/CA/cacrl.pem',
  cert: '/etc/pki/criu/cert.pem',
  key: '/etc/pki/criu/private/key.pem',
};

function read(file: string, flagName: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (error) {
    throw new Error(`cannot read ${flagName} ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message} — pass ${flagName} FILE`);
  }
}

/** The credentials, or undefined without --tls. Throws one line naming the file and its flag. */
export function nodeTlsOptions(args: TlsArgs): SecureContextOptions | undefined {
  if (!args.tls) return undefined;
  const options: SecureContextOptions = {
    ca: read(args.tlsCacert ?? DEFAULTS.cacert, '--tls-cacert'),
    cert: read(args.tlsCert ?? DEFAULTS.cert, '--tls-cert'),
    key: read(args.tlsKey ?? DEFAULTS.key, '--tls-key'),
  };
  const crl = args.tlsCacrl ?? DEFAULTS.cacrl;
  if (args.tlsCacrl !== undefined || fs.existsSync(crl)) options.crl = read(crl, '--tls-cacrl');
  return options;
}

/** The native TLS flags to hand on to a child (`lazyd lazy-pages`), as given. */
export function tlsArgv(args: TlsArgs): string[] {
  if (!args.tls) return [];
  const out = ['--tls'];
  if (args.tlsCacert) out.push('--tls-cacert', args.tlsCacert);
  if (args.tlsCacrl) out.push('--tls-cacrl', args.tlsCacrl);
  if (args.tlsCert) out.push('--tls-cert', args.tlsCert);
  if (args.tlsKey) out.push('--tls-key', args.tlsKey);
  if (args.tlsNoCnVerify) out.push('--tls-no-cn-verify');
  return out;
}
