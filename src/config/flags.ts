// lazyd's configuration: every flag of every command, defined once (type, default, unit, validation, help text,
// the native option it sets), grouped as the commands share them, and one table per command (a role).
//
// Everything else comes from here: the yargs options and --help (src/cli/yargs-options.ts), the options a config
// file may set (src/cli/config-file.ts), the checks on the command line (src/cli/role-argv.ts), the values and
// native options objects the commands get (./resolve.ts), and the flag tables of README.md
// (scripts/write-flag-tables.mjs, ./markdown.ts). test/unit/config.test.ts fails when any of them disagree.
// Data only: loading it adds nothing to start-up.
import { CRIU_ABI_VALUES, wireFormatFromAbi } from '../protocol/criu-abi.js';
import { flag, type Flags } from './flag.js';
import { addressListProblem } from './address-list.js';

/** The daemon reads it unless --no-default-config (as criu reads /etc/criu/default.conf). */
export const DEFAULT_CONFIG_FILE = '/etc/lazyd/lazyd.conf';
export const LOG_FORMATS = ['auto', 'json', 'text'] as const;
export const FAILURE_POLICIES = ['kill', 'keep'] as const;

const IMAGES = {
  imagesDir: flag({ type: 'string', alias: 'D', arg: 'DIR', default: '.', describe: 'the checkpoint: CRIU images directory (criu -D)' }),
  workDir: flag({
    type: 'string',
    alias: 'W',
    arg: 'DIR',
    defaultText: 'the images dir',
    describe: 'work directory: relative --log-file and --pidfile names, lazy-pages.socket (criu -W)',
  }),
};

const verbosity = flag({
  type: 'number',
  alias: 'v',
  arg: 'N',
  default: 2,
  min: 0,
  criuArgv: true,
  describe: "log level as criu's -v0..-v4: fatal only, errors, warnings, info (a line per session), debug; -v, -vv: one more each",
  doc: "log level as criu's `-v0`..`-v4`: fatal only, errors, warnings, info (one line per session start and end), debug; `-v`, `-vv`: one more each",
});

/** criu's default log level (-v2), which -v and -vv raise; the daemon's own default is 3 (PAGE_SERVER below). */
export const DEFAULT_VERBOSITY = verbosity.default;

const LOGGING = {
  logFile: flag({
    type: 'string',
    alias: 'o',
    arg: 'F',
    defaultText: 'stderr',
    describe: 'log file, relative to the work dir (criu -o); SIGHUP reopens it',
  }),
  logFormat: flag({
    type: 'string',
    choices: LOG_FORMATS,
    default: 'auto',
    describe: "json or text (criu's lines); auto: text for the criu drop-ins, for the daemon text on a terminal and json otherwise",
    doc: "`json` or `text` (criu's lines); `auto`: `text` for the criu drop-ins, for the daemon `text` on a terminal and `json` otherwise",
  }),
  verbosity,
};

const PROCESS = {
  statusFd: flag({ type: 'number', arg: 'N', min: 0, describe: 'write one `\\0` byte to fd N once ready, then close it (as criu)' }),
  pidfile: flag({ type: 'string', arg: 'F', describe: 'write the pid to this file (relative: in the work dir)' }),
  daemon: flag({ type: 'boolean', alias: 'd', default: false, describe: 'run in the background once ready (as criu -d)' }),
};

const config = flag({ type: 'string', arg: 'F', describe: 'read options from this file (criu style: one long option per line)' });
const CONFIG = {
  config,
  defaultConfig: flag({
    type: 'boolean',
    default: true,
    describe: `read ${DEFAULT_CONFIG_FILE} (the daemon only; --no-default-config: do not)`,
  }),
};

const address = flag({ type: 'string', arg: 'ADDR', describe: 'numeric IPv4 or IPv6 address' });
const listenAddress = { ...address, defaultText: 'all addresses (IPv6 and IPv4)', describe: 'numeric IPv4 or IPv6 address to listen on' };
/** The daemon's listening address: without --tls it stays on this host unless --address says otherwise (README "Security"). */
const daemonListenAddress = {
  ...listenAddress,
  defaultText: '127.0.0.1 (loopback) without --tls; with --tls all addresses (IPv6 and IPv4)',
  describe: 'numeric IPv4 or IPv6 address to listen on; a plain (no --tls) listener off loopback logs a warning',
};
const port = flag({ type: 'number', arg: 'N', min: 0, max: 65535, describe: 'TCP port' });

const METRICS = {
  metricsAddress: flag({
    type: 'string',
    arg: 'HOST:PORT',
    defaultText: 'off',
    describe: 'serve Prometheus metrics on HOST:PORT at `/metrics` (a port of their own)',
  }),
};

const ABI = {
  criuAbi: flag({
    type: 'string',
    default: 'auto',
    describe: 'page-server header layout: auto, 4.1 (24-byte headers) or 4.2 (32-byte)',
    doc: 'page-server header layout: `4.1` (24-byte headers) or `4.2` (32-byte); `auto`: the page server detects it per session, lazy-pages takes it from the images',
    check: (value) => {
      try {
        wireFormatFromAbi(value);
        return undefined;
      } catch {
        return CRIU_ABI_VALUES;
      }
    },
    native: { key: 'format', convert: (value) => wireFormatFromAbi(value) ?? 0 },
  }),
};

const stallTimeout = flag({
  type: 'number',
  unit: 'seconds',
  arg: 'S',
  default: 30,
  min: 1,
  describe: 'seconds a peer may leave a pending reply (almost) unread',
  native: { key: 'stallTimeoutMs', scale: 1000 },
});

/** The page server's limits (README "Limits"): every resource a peer can make it hold is bounded by one. */
const SERVER_LIMITS = {
  maxRequestPages: flag({
    type: 'number',
    unit: 'pages',
    default: 65536,
    min: 1,
    describe: 'a GET for more pages is refused',
    native: { key: 'maxRequestPages' },
  }),
  maxSessions: flag({
    type: 'number',
    default: 1024,
    min: 1,
    describe: 'concurrent sessions; more are refused with a warning',
    native: { key: 'maxSessions' },
  }),
  maxInflight: flag({
    type: 'number',
    default: 64,
    min: 1,
    describe: 'unanswered requests per session before its socket is no longer read (backpressure)',
    native: { key: 'maxInflight' },
  }),
  maxSessionBytes: flag({
    type: 'number',
    unit: 'bytes',
    default: 64 * 1024 * 1024,
    min: 1,
    describe: 'unsent reply bytes per session before its socket is no longer read (backpressure)',
    native: { key: 'maxSessionBytes' },
  }),
  stallTimeout: {
    ...stallTimeout,
    describe: 'seconds a peer may read less than 64 KiB of a pending reply before its session is dropped',
  },
  idleTimeout: flag({
    type: 'number',
    unit: 'seconds',
    arg: 'S',
    default: 300,
    min: 0,
    zero: 'never',
    describe: 'seconds a session may send nothing with no reply pending before it is dropped',
    native: { key: 'idleTimeoutMs', scale: 1000 },
  }),
  drainTimeout: flag({
    type: 'number',
    unit: 'seconds',
    arg: 'S',
    default: 10,
    min: 0,
    fraction: true,
    describe: 'on SIGTERM/SIGINT, seconds to finish the replies in flight; then exit 0',
  }),
};

/** criu's TLS flags (criu's defaults for the files live in native/core/net/tls_context.h: "" here means them). */
const TLS = {
  tls: flag({
    type: 'boolean',
    default: false,
    describe: 'TLS on the page-server connection (mutual X.509, as criu --tls)',
    doc: 'TLS on the page-server connection (GnuTLS, its default priorities, as criu)',
  }),
  tlsCacert: flag({
    type: 'string',
    arg: 'F',
    defaultText: '`/etc/pki/CA/cacert.pem` **and** the system trust store',
    describe: 'CA certificate(s) to trust',
    doc: 'CAs to trust; when the flag is given, only F (which must hold a certificate); when not, a missing default file is only noted in the log',
  }),
  tlsCacrl: flag({
    type: 'string',
    arg: 'F',
    defaultText: '`/etc/pki/CA/cacrl.pem` if readable',
    describe: 'certificate revocation list',
    doc: 'revocation list; a given file that cannot be read stops lazyd at start',
  }),
  tlsCert: flag({
    type: 'string',
    arg: 'F',
    defaultText: '`/etc/pki/criu/cert.pem`',
    describe: 'own certificate',
    doc: 'own certificate; missing or not matching the key: one line naming the file and the flag, exit 1 at start',
  }),
  tlsKey: flag({
    type: 'string',
    arg: 'F',
    defaultText: '`/etc/pki/criu/private/key.pem`',
    describe: 'own private key',
    doc: 'own private key; missing or not matching the certificate: one line naming the file and the flag, exit 1 at start',
  }),
  tlsNoCnVerify: flag({
    type: 'boolean',
    default: false,
    describe: "do not check that the peer's certificate names --address",
  }),
};

const TLS_SERVER = {
  tlsHandshakeTimeout: flag({
    type: 'number',
    unit: 'seconds',
    arg: 'S',
    default: 10,
    min: 1,
    describe: "seconds a client may take to finish the TLS handshake (lazyd's page server only)",
    native: { key: 'tlsHandshakeTimeoutMs', scale: 1000 },
  }),
};

/** Who may connect, and for what (README "Security"); enforced by native/core/net/access_policy.h. */
const cidrList = (describe: string) =>
  flag({ type: 'string', arg: 'CIDR[,CIDR…]', defaultText: 'any peer', describe, check: addressListProblem });
const nameList = (describe: string) => flag({ type: 'string', arg: 'NAME[,NAME…]', defaultText: 'any name', describe });
const ACCESS = {
  allowFrom: cidrList(
    'IPv4/IPv6 blocks whose peers may fetch and upload; once any --allow-*-from is given, a peer no list covers is refused at accept, before a byte is read',
  ),
  allowFetchFrom: cidrList('blocks whose peers may fetch (restore) but not upload, unless another list lets them'),
  allowUploadFrom: cidrList('blocks whose peers may upload (criu dump --page-server) but not fetch, unless another list lets them'),
  tlsAllowName: nameList(
    "--tls: the peer's certificate must name one of these (DNS or IP subjectAltName) to fetch or upload, on top of the chain and CRL checks",
  ),
  tlsAllowFetchName: nameList("--tls: certificate names that may fetch"),
  tlsAllowUploadName: nameList("--tls: certificate names that may upload"),
};

/** Diskless staging (README "Diskless staging"): uploads from `criu dump --page-server`, served from memory. */
const STAGING = {
  requireLinkToken: flag({
    type: 'boolean',
    default: false,
    describe:
      "fetches must open with a lazyd HELLO naming a staged checkpoint's token (lazyd-link.json): stock `criu lazy-pages` clients are refused (README \"Security\")",
    native: { key: 'requireLinkToken' },
  }),
  staging: flag({
    type: 'boolean',
    default: true,
    describe: 'accept `criu dump --page-server` uploads on the page-server port and serve them lazily',
    native: { key: 'staging' },
  }),
  stagingDir: flag({
    type: 'string',
    arg: 'DIR',
    defaultText: '`-D`',
    describe: 'where the images of an upload are written (give `criu dump` the same `-D`)',
  }),
  stagingMaxBytes: flag({
    type: 'number',
    unit: 'bytes',
    default: 1024 * 1024 * 1024,
    min: 1,
    describe: 'cap on staged and uploading page bytes; an upload over it is refused: the dump fails and CRIU resumes the tasks, so nothing is lost',
    native: { key: 'stagingMaxBytes' },
  }),
  stagingRestores: flag({
    type: 'number',
    arg: 'N',
    default: 0,
    min: 0,
    zero: 'never',
    describe: 'release a staged checkpoint after N completed restores (a client that closed cleanly; one that dies mid-transfer does not count)',
    native: { key: 'stagingRestores' },
  }),
  linkResumeHold: flag({
    type: 'number',
    unit: 'seconds',
    arg: 'S',
    default: 120,
    min: 0,
    fraction: true,
    zero: 'a cut session cannot be resumed once its checkpoint is released',
    describe: "a lazyd link session cut without CLOSE (feature resume) keeps its checkpoint reachable by its token this long, even if released meanwhile, so the restore's lazy-pages can reconnect",
    native: { key: 'linkResumeHoldMs', scale: 1000 },
  }),
  stagingTtl: flag({
    type: 'number',
    unit: 'seconds',
    arg: 'S',
    default: 0,
    min: 0,
    fraction: true,
    zero: 'never',
    describe: 'release a staged checkpoint S seconds after it was staged',
  }),
  persist: flag({
    type: 'boolean',
    default: false,
    describe: 'also write the lazy pages to `pages-N.img` (`PE_LAZY|PE_PRESENT`), like `criu page-server`',
  }),
  controlSocket: flag({
    type: 'string',
    arg: 'PATH',
    defaultText: 'none',
    describe: 'a unix socket (mode 0600) on which `lazyd staging list|release` reach the daemon',
  }),
};

const lazyPages = flag({
  type: 'boolean',
  default: false,
  describe: "criu's `--lazy-pages`: the drop-in needs it; the daemon accepts it and serves lazily anyway",
});

// The lazy-pages scheduler (README "Restoring lazily"): demand faults first, then fault-around, then the
// background drain in growing requests. The TLS defaults: under TLS every byte in flight is encrypted by the
// server and decrypted here before the reply behind it can start, so a fault queued behind 2 MiB of drain waits
// for all of that work. Smaller drain requests and less drain in flight kept faults shorter without slowing the
// transfer (512 MiB, 3 runs each: fault p50 <= 500-1000 us instead of <= 1000-5000 us, all pages present
// 1.4-2.4 s instead of 2.2-4.2 s; bench/tls.ts measures the result).
const DRAIN = {
  faultAroundBytes: flag({
    type: 'number',
    unit: 'bytes',
    default: 64 * 1024,
    min: 0,
    describe: 'bytes fetched from each faulting page onwards, with it (a page or less: none)',
    native: { key: 'faultAroundBytes' },
  }),
  drainMinBytes: flag({
    type: 'number',
    unit: 'bytes',
    default: 256 * 1024,
    min: 1,
    describe: "the background drain's first request size, and its size again after every fault",
    native: { key: 'drainMinBytes' },
  }),
  drainMaxBytes: flag({
    type: 'number',
    unit: 'bytes',
    default: 1024 * 1024,
    tlsDefault: 512 * 1024,
    min: 1,
    describe: "the drain's request size doubles up to this",
    native: { key: 'drainMaxBytes' },
  }),
  drainInflightBytes: flag({
    type: 'number',
    unit: 'bytes',
    default: 2 * 1024 * 1024,
    tlsDefault: 1024 * 1024,
    min: 1,
    describe: 'drain bytes in flight while no fault waits, at least: more when the measured bandwidth x RTT asks for it',
    native: { key: 'drainInflightBytes' },
  }),
  drainInflightMaxBytes: flag({
    type: 'number',
    unit: 'bytes',
    default: 16 * 1024 * 1024,
    min: 1,
    describe: 'the most drain bytes in flight however long the link (below --drain-inflight-bytes: a fixed window of that)',
    native: { key: 'drainInflightMaxBytes' },
  }),
  drainRate: flag({
    type: 'number',
    unit: 'bytes',
    default: 0,
    min: 0,
    zero: 'no limit',
    describe: "the drain's rate at most, bytes per second (demand faults and fault-around are not limited)",
    native: { key: 'drainRate' },
  }),
  drain: flag({
    type: 'boolean',
    default: true,
    describe: 'drain every lazy page in the background after RSTF (--no-drain: serve demand faults only; the daemon ends when the tasks exit)',
    native: { key: 'background' },
  }),
  drainStart: flag({
    type: 'number',
    unit: 'seconds',
    arg: 'S',
    default: 0.2,
    min: 0,
    fraction: true,
    zero: 'the window opens at RSTF',
    describe: "for this long after RSTF the drain keeps the faulting window (--drain-inflight-bytes-faulting) when the faults share its connection (a stock page server, --no-link-priority), the floor (--drain-inflight-bytes) on the lazyd link's priority connection: the restored tasks' first faults, the end of the downtime, queue behind little",
    native: { key: 'drainStartMs', scale: 1000 },
  }),
  drainInflightBytesFaulting: flag({
    type: 'number',
    unit: 'bytes',
    default: 256 * 1024,
    tlsDefault: 128 * 1024,
    min: 1,
    describe: 'drain bytes in flight while faults wait (or were seen in the last few ms): a fault never queues behind more',
    native: { key: 'drainInflightBytesFaulting' },
  }),
  maxRequestsInflight: flag({
    type: 'number',
    default: 64,
    min: 1,
    describe: "fault-around and drain requests in flight to the page source (a faulting page's own request never waits)",
    native: { key: 'maxRequestsInflight' },
  }),
};

const LAZY_PAGES_OWN = {
  pageServer: flag({
    type: 'boolean',
    default: false,
    describe: 'fetch the lazy pages from the page server at `--address`:`--port` (without it: from the local images)',
  }),
  link: flag({
    type: 'string',
    choices: ['auto', 'stock'] as const,
    default: 'auto',
    describe:
      "auto: open with a lazyd HELLO when the images hold lazyd-link.json (a lazyd page server staged them), else speak CRIU's bytes only; stock: never (README \"The lazyd link: when both ends are lazyd\")",
  }),
  linkChecksum: flag({
    type: 'boolean',
    default: true,
    describe: 'on the lazyd link, ask for a CRC32C of every page and check each before it is installed (--no-link-checksum: ask for none; zero-copy serving on the page server)',
    native: { key: 'linkChecksum' },
  }),
  linkPriority: flag({
    type: 'boolean',
    default: true,
    describe: 'on the lazyd link, a second connection to the page server carries the demand faults and their fault-around, so no drain byte is ahead of them (--no-link-priority: one connection, first in first out)',
    native: { key: 'linkPriority' },
  }),
  reconnectTimeout: flag({
    type: 'number',
    unit: 'seconds',
    arg: 'S',
    default: 30,
    min: 0,
    fraction: true,
    zero: 'off: a cut link fails the restore',
    describe: 'on the lazyd link, a connection cut (a reset, or silent past --stall-timeout) is made again within this, every unanswered request asked again; the restored tasks only wait meanwhile. Then the restore fails by --on-failure',
    native: { key: 'reconnectTimeoutMs', scale: 1000 },
  }),
  onFailure: flag({
    type: 'string',
    choices: FAILURE_POLICIES,
    default: 'kill',
    env: 'LAZYD_ON_FAILURE',
    describe: 'restored tasks whose pages can never be completed: kill (SIGKILL) or keep (missing pages read as zeros)',
  }),
  rstfTimeout: flag({
    type: 'number',
    unit: 'seconds',
    arg: 'S',
    default: 60,
    min: 0,
    fraction: true,
    zero: 'no limit',
    env: 'LAZYD_RSTF_TIMEOUT',
    describe: 'seconds from the last task hand-over to RSTF; criu waits forever',
    native: { key: 'rstfTimeoutMs', scale: 1000 },
  }),
  metricsLinger: flag({
    type: 'number',
    unit: 'seconds',
    arg: 'S',
    default: 0,
    min: 0,
    fraction: true,
    describe: 'seconds to keep serving /metrics after the restore ended',
  }),
};

export type RoleId = 'page-server' | 'page-server-dropin' | 'lazy-pages' | 'staging' | 'check' | 'migrate' | 'agent' | 'replicate' | 'failover';

export interface Role<F extends Flags = Flags> {
  id: RoleId;
  /** The yargs command: '$0' for the daemon form (`lazyd --page-server`). */
  command: string;
  /** How errors and the README name the command. */
  title: string;
  flags: F;
  /** Positional arguments it takes (`lazyd staging list`), beyond which any is an error. */
  positionals?: number;
  /** Whether TLS is on, for the flags' TLS defaults (default: --tls). */
  tlsOn?: (given: Readonly<Record<string, unknown>>) => boolean;
  /** Native options the command sets itself, whatever the flags say. */
  fixedNative?: Readonly<Record<string, number | boolean>>;
}

function role<const F extends Flags>(spec: Role<F>): Role<F> {
  return spec;
}

export const PAGE_SERVER = role({
  id: 'page-server',
  command: '$0',
  title: '`lazyd --page-server`',
  flags: {
    pageServer: flag({ type: 'boolean', default: false, describe: 'serve the checkpoint of `-D` over TCP, to any number of restores' }),
    lazyPages,
    ...IMAGES,
    address: daemonListenAddress,
    port: { ...port, default: 9876, describe: 'TCP port; `0` picks a free one; the chosen port is printed on stdout' },
    ...PROCESS,
    ...LOGGING,
    verbosity: { ...verbosity, default: 3 },
    ...METRICS,
    ...CONFIG,
    ...ABI,
    ...SERVER_LIMITS,
    ...STAGING,
    ...ACCESS,
    ...TLS,
    ...TLS_SERVER,
  },
  fixedNative: { singleSession: false },
});

export const PAGE_SERVER_DROPIN = role({
  id: 'page-server-dropin',
  command: 'page-server',
  title: '`lazyd page-server --lazy-pages`',
  flags: {
    lazyPages,
    ...IMAGES,
    address: listenAddress,
    port: { ...port, default: 0, describe: "TCP port; `0` picks a free one, logged as criu's `Using N port`" },
    ...PROCESS,
    ...LOGGING,
    ...METRICS,
    ...CONFIG,
    ...ABI,
    ...SERVER_LIMITS,
    ...TLS,
    ...TLS_SERVER,
  },
  // criu's page server: one session, no uploads (the staging budget is the daemon's, unused here).
  fixedNative: {
    singleSession: true,
    requireLinkToken: false,
    staging: false,
    stagingMaxBytes: STAGING.stagingMaxBytes.default,
    stagingRestores: STAGING.stagingRestores.default,
    linkResumeHoldMs: 0,
  },
});

export const LAZY_PAGES = role({
  id: 'lazy-pages',
  command: 'lazy-pages',
  title: '`lazyd lazy-pages`',
  flags: {
    ...LAZY_PAGES_OWN,
    ...IMAGES,
    address: { ...address, describe: "the page server's numeric IPv4 or IPv6 address (with --page-server)" },
    port: { ...port, describe: "the page server's TCP port (with --page-server)" },
    ...PROCESS,
    ...LOGGING,
    ...METRICS,
    ...CONFIG,
    ...ABI,
    stallTimeout: { ...stallTimeout, describe: 'seconds the page server may send nothing while requests are outstanding; then the restore fails (on a lazyd link with resume: the connection is made again, --reconnect-timeout)' },
    ...DRAIN,
    ...TLS,
  },
  // The TLS defaults of the drain apply to a TLS connection to a page server (a local restore has none).
  tlsOn: (given) => given.tls === true && given.pageServer === true,
});

/** The actions of `lazyd staging` (its first positional). */
export const STAGING_ACTIONS = ['list', 'release', 'relay'] as const;

/**
 * Relay staging (README "Relay staging"): `lazyd staging relay -D DIR --from HOST:PORT` has the daemon pull the
 * lazy pages of a `criu dump --lazy-pages` on this host. The defaults, measured with real CRIU 4.2.1 on loopback
 * (`npm run bench -- --only relay`, bench/relay.ts): 1 MiB requests with 1 MiB in flight pulled 512 MiB fastest
 * (316-344 ms, against 477-569 with 4 MiB in flight), and the bytes in flight bound how long a demand fetch for a
 * restore waits behind the bulk pull (native/tests/relay_test.cc --measure: 0.5-0.6 ms with 1 MiB, 1.9 with 4 MiB).
 */
const RELAY = {
  imagesDir: { ...IMAGES.imagesDir, describe: "relay: the dump's -D (its images, written before it serves)" },
  from: flag({
    type: 'string',
    arg: 'HOST:PORT',
    describe: "relay: the dump's --address and --port (`127.0.0.1:9877`, `[::1]:9877`)",
    check: (value) => (parseHostPort(value) ? undefined : 'HOST:PORT (a numeric address and a port 1-65535)'),
  }),
  wait: flag({
    type: 'boolean',
    default: true,
    describe: 'relay: answer once every lazy page is held and the dump has its CLOSE (--no-wait: once the pull runs)',
  }),
  listenTimeout: flag({
    type: 'number',
    unit: 'seconds',
    arg: 'S',
    default: 60,
    min: 0,
    fraction: true,
    zero: 'no limit',
    describe: "relay: seconds to wait for the dump's page server to listen on --from",
  }),
  relayRequestBytes: flag({
    type: 'number',
    unit: 'bytes',
    default: 1024 * 1024,
    min: 4096,
    describe: 'relay: the size of each bulk request to the dump',
  }),
  relayInflightBytes: flag({
    type: 'number',
    unit: 'bytes',
    default: 1024 * 1024,
    min: 4096,
    describe: 'relay: bulk bytes in flight to the dump (a demand page for a restore waits behind at most these)',
  }),
  relayStallTimeout: {
    ...stallTimeout,
    native: undefined,
    describe: "relay: seconds the dump's server may send nothing while requests are outstanding; then the relay fails",
  },
  statusFd: { ...PROCESS.statusFd, describe: 'relay: write one `\\0` byte to fd N once the pull runs (restores may start), then close it (as criu)' },
  relayTls: flag({
    type: 'boolean',
    default: false,
    describe: "relay: the dump runs with --tls: talk TLS to it with the daemon's own --tls-* certificate",
  }),
  criuAbi: {
    ...ABI.criuAbi,
    native: undefined,
    describe: "relay: the dump's header layout: auto (from its pagemaps), 4.1 (24-byte headers) or 4.2 (32-byte)",
    doc: "relay: the dump's header layout: `4.1` (24-byte headers) or `4.2` (32-byte); `auto`: from its pagemaps' encoding",
  },
};

/** HOST:PORT (`[v6]:PORT` for IPv6), a numeric address and a port 1-65535; undefined when it is not one. */
export function parseHostPort(value: string): { host: string; port: number } | undefined {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(value);
  if (!match) return undefined;
  const port = Number(match[3]);
  if (port < 1 || port > 65535) return undefined;
  const host = match[1] ?? match[2]!;
  if (match[2] !== undefined && !/^(\d{1,3})(\.\d{1,3}){3}$/.test(host)) return undefined;
  if (match[2] !== undefined && host.split('.').some((octet) => Number(octet) > 255)) return undefined;
  return { host, port };
}

export const STAGING_COMMAND = role({
  id: 'staging',
  command: 'staging',
  title: '`lazyd staging`',
  positionals: 2,
  flags: {
    controlSocket: flag({ type: 'string', arg: 'PATH', required: true, describe: "the daemon's --control-socket" }),
    pid: flag({ type: 'number', arg: 'PID', min: 1, describe: 'release: the checkpoint that holds this pid' }),
    json: flag({ type: 'boolean', default: false, describe: 'list: print the JSON answer as it is' }),
    ...RELAY,
    config,
  },
});

export const CHECK = role({
  id: 'check',
  command: 'check',
  title: '`lazyd check`',
  flags: {
    json: flag({ type: 'boolean', default: false, describe: 'print the report as JSON' }),
    ...CONFIG,
  },
});

// `lazyd migrate` and `lazyd agent` (README "Migrating a process"): the two ends of a whole migration.
const criuBinary = flag({ type: 'string', arg: 'F', default: 'criu', describe: 'the criu binary (a path, or a name looked up in PATH)' });
const linkTimeout = flag({
  type: 'number',
  unit: 'seconds',
  arg: 'S',
  default: 10,
  min: 1,
  fraction: true,
  describe: 'seconds without a byte on the control link: the agent then gives up (killing a restored copy), this side after twice that (resuming the original)',
});
const migrationTls = {
  ...TLS,
  tls: flag({
    type: 'boolean',
    default: false,
    describe: "mutual TLS on the control connection and the page connection (criu's --tls files)",
  }),
};

export const MIGRATE = role({
  id: 'migrate',
  command: 'migrate',
  title: '`lazyd migrate`',
  flags: {
    pid: flag({ type: 'number', arg: 'PID', min: 1, required: true, describe: 'the root of the process tree to move' }),
    to: flag({ type: 'string', arg: 'HOST:PORT', required: true, describe: "the destination's `lazyd agent` (IPv6: [ADDR]:PORT)" }),
    criu: { ...criuBinary, describe: "this host's criu binary (a path, or a name looked up in PATH)" },
    linkTimeout,
    pagePort: flag({
      type: 'number',
      arg: 'N',
      default: 0,
      min: 0,
      max: 65535,
      describe: "the port the destination's lazy-pages fetches pages on (on the control connection's source address); 0: any free one",
    }),
    preCopy: flag({
      type: 'boolean',
      default: false,
      describe: 'pre-dump iterations first where the kernel tracks dirty memory (criu check --feature mem_dirty_track); without it: post-copy alone, said in one line',
    }),
    preCopyMaxIterations: flag({
      type: 'number',
      arg: 'N',
      default: 8,
      min: 1,
      max: 64,
      describe: 'with --pre-copy: at most N pre-dump iterations; they stop sooner when one writes fewer than 64 pages or over 10 % more than the one before',
    }),
    dumpDir: flag({ type: 'string', arg: 'DIR', defaultText: '`$TMPDIR/lazyd-migrate`', describe: "where criu dump writes the images (a fresh directory under it; kept after a failure)" }),
    keepImages: flag({ type: 'boolean', default: false, describe: 'keep the dump directory after a successful migration' }),
    json: flag({ type: 'boolean', default: false, describe: 'print the final report as one JSON object on stdout' }),
    config,
    ...migrationTls,
  },
});

export const AGENT = role({
  id: 'agent',
  command: 'agent',
  title: '`lazyd agent`',
  flags: {
    listen: flag({ type: 'string', arg: 'HOST:PORT', required: true, describe: 'where to accept migrations (IPv6: [ADDR]:PORT); port 0 picks one, printed on stdout' }),
    criu: { ...criuBinary, describe: "this host's criu binary for the restores" },
    stateDir: flag({ type: 'string', arg: 'DIR', default: '/var/lib/lazyd/agent', describe: "one directory per migration under it: images, lazy-pages.socket, restore.log, lazy-pages.log" }),
    keep: flag({ type: 'boolean', default: false, describe: "keep a completed migration's directory (a failed one's is always kept)" }),
    replicaCap: flag({ type: 'number', arg: 'MiB', default: 4096, min: 1, describe: 'replicas: MiB of images one replica may hold here (its committed epoch and the one in flight); an epoch over it is refused' }),
    ...METRICS,
    preRestoreHook: flag({
      type: 'string',
      arg: 'CMD',
      describe: 'a shell command run before each restore, in its directory (env LAZYD_MIGRATION_ID, LAZYD_MIGRATION_DIR); non-zero fails the migration',
    }),
    statusFd: PROCESS.statusFd,
    pidfile: PROCESS.pidfile,
    ...LOGGING,
    verbosity: { ...verbosity, default: 3 },
    config,
    ...migrationTls,
  },
});

// `lazyd replicate` and `lazyd failover` (README "Replication and failover"): continuous checkpoints of a running
// tree into a standby `lazyd agent`, and the lazy restore of the last committed one there.
export const REPLICATE_ACTIONS = ['run', 'status'] as const;
/** lazyd replicate --tracking: how an epoch finds the pages that changed (src/replicate/tracking.ts). */
export const REPLICATE_TRACKING = ['auto', 'dirty', 'compare', 'full'] as const;

export const REPLICATE = role({
  id: 'replicate',
  command: 'replicate',
  title: '`lazyd replicate`',
  positionals: 1,
  flags: {
    pid: flag({ type: 'number', arg: 'PID', min: 1, describe: 'the root of the process tree to replicate (run)' }),
    to: flag({ type: 'string', arg: 'HOST:PORT', required: true, describe: "the standby's `lazyd agent` (IPv6: [ADDR]:PORT)" }),
    id: flag({ type: 'string', arg: 'ID', describe: "the replica's name on the standby (1-64 of [A-Za-z0-9._-]); default pid-PID" }),
    interval: flag({ type: 'number', unit: 'seconds', arg: 'S', default: 10, min: 0.05, fraction: true, describe: 'seconds from the start of one epoch to the start of the next' }),
    epochs: flag({ type: 'number', arg: 'N', default: 0, min: 0, describe: 'stop after N committed epochs (0: until stopped or fenced)' }),
    tracking: flag({
      type: 'string',
      choices: REPLICATE_TRACKING,
      default: 'auto',
      describe:
        "which pages an epoch sends: dirty (the kernel's dirty-page tracking, `criu dump --track-mem` on the previous epoch), compare (the pages whose SHA-256 changed since the committed epoch), full (every page, every epoch); auto: dirty where `criu check --feature mem_dirty_track` passes, else compare",
    }),
    criu: { ...criuBinary, describe: "this host's criu binary (a path, or a name looked up in PATH)" },
    dumpDir: flag({ type: 'string', arg: 'DIR', defaultText: '`$TMPDIR/lazyd-replicate`', describe: 'where each epoch is dumped (tmpfs: memory speed); only the last epoch is kept' }),
    failoverAfter: flag({
      type: 'number',
      unit: 'seconds',
      arg: 'S',
      default: 0,
      min: 0,
      fraction: true,
      describe: 'the standby fails over on its own once this primary has been unreachable for S seconds (0: only on `lazyd failover`)',
    }),
    killOnFence: flag({ type: 'boolean', default: false, describe: 'when the standby has taken over (fenced this primary): SIGKILL the replicated tree before exiting' }),
    linkTimeout,
    ...METRICS,
    json: flag({ type: 'boolean', default: false, describe: 'status: print JSON' }),
    config,
    ...migrationTls,
  },
});

export const FAILOVER = role({
  id: 'failover',
  command: 'failover',
  title: '`lazyd failover`',
  positionals: 1,
  flags: {
    to: flag({ type: 'string', arg: 'HOST:PORT', required: true, describe: "the standby's `lazyd agent` that holds the replica" }),
    json: flag({ type: 'boolean', default: false, describe: 'print the result as JSON' }),
    config,
    ...migrationTls,
  },
});

export const ROLES: readonly Role[] = [PAGE_SERVER, PAGE_SERVER_DROPIN, LAZY_PAGES, STAGING_COMMAND, CHECK, MIGRATE, AGENT, REPLICATE, FAILOVER];

/** The groups the README shows in tables of their own (README "Diskless staging", "TLS"). */
export const FLAG_GROUPS = { STAGING, ACCESS, TLS, TLS_SERVER, DRAIN } as const;
