// A throw-away X.509 PKI for TLS tests and benchmarks, made with the openssl command line (Debian's openssl):
//   ca        the trusted CA, and its CRL (crl.pem) revoking `revoked`
//   a, b      good certificates (subjectAltName IP:127.0.0.1, DNS:localhost): criu checks the peer's certificate
//             against --address on BOTH ends, so client certificates need the name as well (docs/protocol.md §1.9)
//   revoked   signed by ca, listed in the CRL
//   wrongName signed by ca, naming 127.0.0.2 only
//   untrusted a certificate for 127.0.0.1 signed by another CA (otherCa), which nobody trusts
import fs from 'node:fs';
import path from 'node:path';
import { runCommand } from './process.js';

export interface CertKey {
  cert: string;
  key: string;
}

export interface TestPki {
  dir: string;
  ca: string;
  crl: string;
  otherCa: string;
  a: CertKey;
  b: CertKey;
  revoked: CertKey;
  wrongName: CertKey;
  untrusted: CertKey;
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

async function openssl(dir: string, args: string[]): Promise<void> {
  await runCommand({ name: `openssl ${args[0]}`, file: 'openssl', args, cwd: dir }, 30_000);
}

async function makeCa(dir: string, name: string, cn: string): Promise<void> {
  await openssl(dir, [
    'req', '-x509', ...EC, '-keyout', `${name}-key.pem`, '-out', `${name}.pem`, '-days', '7', '-subj', `/CN=${cn}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
}

async function makeLeaf(dir: string, name: string, ca: string, serial: number, san: string): Promise<CertKey> {
  fs.writeFileSync(
    path.join(dir, `${name}.ext`),
    `subjectAltName=${san}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n` +
      'extendedKeyUsage=serverAuth,clientAuth\n',
  );
  await openssl(dir, ['req', ...EC, '-keyout', `${name}-key.pem`, '-out', `${name}.csr`, '-subj', `/CN=lazyd test ${name}`]);
  await openssl(dir, [
    'x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}-key.pem`, '-set_serial', String(serial),
    '-days', '7', '-out', `${name}.pem`, '-extfile', `${name}.ext`,
  ]);
  return { cert: path.join(dir, `${name}.pem`), key: path.join(dir, `${name}-key.pem`) };
}

/** Generates the PKI in dir (created). Takes about a second. */
export async function makeTestPki(dir: string): Promise<TestPki> {
  fs.mkdirSync(dir, { recursive: true });
  await makeCa(dir, 'ca', 'lazyd test CA');
  await makeCa(dir, 'other-ca', 'lazyd untrusted CA');
  const good = 'IP:127.0.0.1,DNS:localhost';
  const a = await makeLeaf(dir, 'a', 'ca', 1, good);
  const b = await makeLeaf(dir, 'b', 'ca', 2, good);
  const revoked = await makeLeaf(dir, 'revoked', 'ca', 3, good);
  const wrongName = await makeLeaf(dir, 'wrong-name', 'ca', 4, 'IP:127.0.0.2,DNS:elsewhere.invalid');
  const untrusted = await makeLeaf(dir, 'untrusted', 'other-ca', 1, good);

  // The CRL: `openssl ca` keeps its state in an index file; revoke serial 3, then issue the list.
  fs.writeFileSync(path.join(dir, 'index.txt'), '');
  fs.writeFileSync(path.join(dir, 'crlnumber'), '01\n');
  fs.writeFileSync(
    path.join(dir, 'ca.cnf'),
    ['[ca]', 'default_ca = test_ca', '[test_ca]', `database = ${dir}/index.txt`, `crlnumber = ${dir}/crlnumber`,
      `certificate = ${dir}/ca.pem`, `private_key = ${dir}/ca-key.pem`, 'default_md = sha256', 'default_crl_days = 7', ''].join('\n'),
  );
  await openssl(dir, ['ca', '-config', 'ca.cnf', '-revoke', revoked.cert]);
  await openssl(dir, ['ca', '-config', 'ca.cnf', '-gencrl', '-out', 'crl.pem']);
  return {
    dir,
    ca: path.join(dir, 'ca.pem'),
    crl: path.join(dir, 'crl.pem'),
    otherCa: path.join(dir, 'other-ca.pem'),
    a,
    b,
    revoked,
    wrongName,
    untrusted,
  };
}

export interface TlsArgOptions {
  /** The certificate to present (default pki.a). */
  as?: CertKey;
  /** The CA to trust (default pki.ca). */
  cacert?: string;
  /** Load the CRL (default true). */
  crl?: boolean;
  noCnVerify?: boolean;
}

/** criu's (and lazyd's) TLS flags for one end. */
export function tlsArgs(pki: TestPki, options: TlsArgOptions = {}): string[] {
  const me = options.as ?? pki.a;
  return [
    '--tls',
    '--tls-cacert', options.cacert ?? pki.ca,
    ...(options.crl === false ? [] : ['--tls-cacrl', pki.crl]),
    '--tls-cert', me.cert,
    '--tls-key', me.key,
    ...(options.noCnVerify ? ['--tls-no-cn-verify'] : []),
  ];
}
