// The native addon (native/binding/, built by cmake-js into build/Release) and the one declaration of what it
// exports: this is the only module that loads it, and nothing untyped leaves it. test/unit/native-surface.test.ts
// checks the declared surface against the loaded binding (every declared class, method and function exists;
// nothing exported is undeclared).
//
// Numbers: the binding returns 64-bit counters as numbers up to 2^53 (beyond, a bigint; no counter gets there).
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { repoRoot } from './paths.js';

/** 24: CRIU <= 4.1 headers; 32: CRIU >= 4.2; 0: detect from the first header (page server only). */
export type WireFormatCode = 0 | 24 | 32;

/** The `tls` option of PageServer and LazyPages ("" : criu's default for that file, native/core/net/tls_context.h). */
export interface NativeTlsOptions {
  cacert: string;
  cacrl: string;
  cert: string;
  key: string;
  noCnVerify: boolean;
  /** The name the peer's certificate must carry: --address, on both ends, as criu ("" : not checked). */
  peerName: string;
}

// ---- PageServer (native/core/server/page_server.h) ----

/** The PageServer options that flags set (src/config/flags.ts); the binding requires every one. */
export interface PageServerFlagOptions {
  format: WireFormatCode;
  maxRequestPages: number;
  maxInflight: number;
  maxSessionBytes: number;
  maxSessions: number;
  stallTimeoutMs: number;
  idleTimeoutMs: number;
  tlsHandshakeTimeoutMs: number;
  /** Accept `criu dump --page-server` uploads (staging). */
  staging: boolean;
  stagingMaxBytes: number;
  stagingRestores: number;
  /** A cut lazyd link session (feature resume) keeps its checkpoint reachable by token this long (docs/protocol.md §7.6). */
  linkResumeHoldMs: number;
  /** criu's page server: one session, then stop. */
  singleSession: boolean;
  /** --require-link-token: fetch sessions must open with a lazyd HELLO naming a staged checkpoint's token. */
  requireLinkToken: boolean;
}

/** Who may connect, and for what (--allow-from & co; native/core/net/access_policy.h). Empty lists: everyone. */
export interface NativeAccessOptions {
  /** CIDR blocks that may fetch (--allow-from + --allow-fetch-from). */
  fetchFrom: string[];
  /** CIDR blocks that may upload (--allow-from + --allow-upload-from). */
  uploadFrom: string[];
  /** TLS: names one of which the peer's certificate must carry to fetch / to upload. */
  fetchNames: string[];
  uploadNames: string[];
}

export interface PageServerOptions extends PageServerFlagOptions {
  /** undefined: plain TCP. */
  tls: NativeTlsOptions | undefined;
  access: NativeAccessOptions;
  /** Called on the JavaScript thread, in order. */
  onEvent: (event: PageServerEvent) => void;
}

export type PageServerEventType =
  | 'session-start'
  | 'session-end'
  | 'refused'
  | 'stopped'
  | 'upload-sealed'
  | 'staged'
  | 'restore-done'
  | 'released'
  | 'relay-progress'
  | 'relay-done'
  | 'relay-failed';

export interface SessionStats {
  gets: number;
  pages: number;
  bytesOut: number;
  closedByRequest: boolean;
  /** The session opened with a lazyd HELLO (docs/protocol.md §7). */
  hello: boolean;
}

export interface UploadStats {
  opens: number;
  entries: number;
  pagesWithData: number;
  pagesWithoutData: number;
  bytesIn: number;
  closeSeen: boolean;
}

/** One pagemap of an upload: [vaddr, nrPages, flags] * n, in the order the upload opened them. */
export interface StagedPagemap {
  type: 'pid' | 'shmem';
  id: number;
  entries: BigUint64Array;
}

export interface PageServerEvent {
  type: PageServerEventType;
  session: number;
  peer: string;
  ok: boolean;
  message: string;
  /** 24 or 32 once known, else 0. */
  format: number;
  seconds: number;
  stats: SessionStats;
  /** The session was an upload. */
  upload: boolean;
  uploadStats?: UploadStats;
  /** restore-done / released / the session-end of a lazy session bound to a staged checkpoint (else 0). */
  checkpoint: number;
  restores: number;
  /** Staging budget in use after the event. */
  memoryUsed: number;
  /** upload-sealed / staged: the store's pagemaps and the page bytes it holds. */
  pagemaps?: StagedPagemap[];
  bytesHeld?: number;
  /** upload-sealed: the checkpoint's link token (32 hex digits), written into lazyd-link.json (docs/protocol.md §7). */
  token?: string;
  /** relay-*: lazy pages pulled so far, of pagesTotal (0 for other events). */
  pagesHeld: number;
  pagesTotal: number;
  /** relay-*: page bytes held. */
  bytes: number;
  /** relay-*: ms since startRelay (relay-done: to the dump's CLOSE answered). */
  ms: number;
  /** relay-*: GETs sent for pages a restore waited for (ahead of the bulk), bulk GETs, and replies the dump
   * clamped at its page-pipe buffer end (the rest asked again). 0 for other events. */
  demandRequests: number;
  bulkRequests: number;
  shortReplies: number;
  /** relay-*: page bytes copied into the store's memfd; the rest are held by reference, uncopied (pipes). */
  bytesCopied: number;
}

/** One task of a relayed dump: its PE_LAZY pagemap entries (dump-time addresses). */
export interface RelayTaskOptions {
  pid: number;
  ranges: { vaddr: bigint; nrPages: number }[];
}

/** startRelay: the lazy page server of a `criu dump --lazy-pages` on this host, and how to pull from it. */
export interface RelayOptions {
  host: string;
  port: number;
  connectTimeoutMs: number;
  /** The dump's header layout (24: CRIU <= 4.1, 32: CRIU >= 4.2). */
  format?: 24 | 32;
  /** undefined: plain TCP. */
  tls?: NativeTlsOptions;
  tasks: RelayTaskOptions[];
  /** Pages per bulk GET. */
  requestPages: number;
  /** Bulk bytes requested and not yet received. */
  inflightBytes: number;
  stallTimeoutMs: number;
  /** Hold the CLOSE once every page is held, until releaseRelay() (lazyd migrate's point of no return); the last
   * page's relay-progress event comes at once. release() still resets it (the dump resumes the tasks). */
  holdClose?: boolean;
}

/** startRelay's answer. */
export interface RelayStarted {
  /** The relayed checkpoint's id. */
  checkpoint: number;
  /** Its link token, 32 hex digits, for its lazyd-link.json (docs/protocol.md §7); "" when none could be drawn. */
  token: string;
}

export interface PageServerStats {
  sessionsTotal: number;
  sessionsActive: number;
  sessionsFailed: number;
  getsTotal: number;
  pagesTotal: number;
  bytesTotal: number;
  bytesReceived: number;
  /** TLS handshakes that failed or timed out (peer refused, not TLS, ...). */
  tlsFailures: number;
  /** Connections and sessions refused by --allow-from & co (address or certificate name). */
  accessRefused: number;
  /** GET requests read and not yet answered in full, over all sessions. */
  requestsInFlight: number;
  stagingBytes: number;
  stagingMaxBytes: number;
}

export interface PageServer {
  /** A pages image; returns its index for addTask. Before listen. */
  addFile(path: string): number;
  /** runs: [vaddr, nrPages, flags, fileIndex (2^64-1: none), fileOffset] * n. Before listen. */
  addTask(pid: number, runs: BigUint64Array): void;
  /** Binds and listens; returns the port (the chosen one for 0). Throws an Error with `code` (EADDRINUSE, ...). */
  listen(address: string, port: number): number;
  start(): void;
  /** Stop accepting; finish the replies in flight (at most drainMs), then the thread ends ('stopped' event). */
  stop(drainMs: number): void;
  /** The counters (an empty object before listen). */
  stats(): PageServerStats;
  /** Writes the pages image of one pagemap of a sealed upload, atomically, on a native worker thread; resolves
   * to the bytes written. */
  writePages(session: number, type: 'pid' | 'shmem', id: number, file: string, includeLazy: boolean): Promise<number>;
  /** The images of a sealed upload are written (ok) or could not be (the dump then fails). */
  ackUpload(session: number, ok: boolean, message?: string): void;
  /** New sessions no longer fetch from the staged checkpoint (a relay still pulling is reset: the dump resumes
   * the tasks). */
  release(checkpoint: number, reason?: string): void;
  /** Relay staging (needs staging: true, after start): connects to the dump's lazy page server and pulls every
   * lazy page on the server's thread; the checkpoint is served from now on. Returns its id and link token; throws
   * one line (code ECONNREFUSED / ETIMEDOUT / ECAP / ERELAY) when it cannot start, after resetting a connection it
   * made. */
  startRelay(options: RelayOptions): RelayStarted;
  /** A holdClose relay sends its CLOSE to the dump (now, or once every page is held): the dump exits 0 and kills
   * the tasks. Its end comes as relay-done / relay-failed. */
  releaseRelay(checkpoint: number): void;
}

// ---- LazyPages (native/core/lazy/fault_engine.h) ----

/** The LazyPages options that flags set (src/config/flags.ts); the binding requires every one. */
export interface LazyPagesFlagOptions {
  stallTimeoutMs: number;
  rstfTimeoutMs: number;
  faultAroundBytes: number;
  drainMinBytes: number;
  drainMaxBytes: number;
  drainInflightBytes: number;
  drainInflightBytesFaulting: number;
  drainInflightMaxBytes: number;
  /** Drain bytes/s at most; 0: no limit. */
  drainRate: number;
  /** false (--no-drain): demand faults (and fault-around) only. */
  background: boolean;
  /** For this long after RSTF the drain keeps the faulting window; 0: none. */
  drainStartMs: number;
  /** false (--no-link-checksum): a lazyd HELLO asks for no per-page checksums (docs/protocol.md §7.4). */
  linkChecksum: boolean;
  /** false (--no-link-priority): no second connection for demand faults on the lazyd link (§7.5). */
  linkPriority: boolean;
  /** A cut lazyd link is made again within this (feature resume, §7.6); 0: off, a cut fails the restore. */
  reconnectTimeoutMs: number;
  maxRequestsInflight: number;
}

export interface LazyPagesTask {
  /** The pid in pstree.img. */
  pid: number;
  /** [imgStart, nrPages, fd (2^64-1: none), fileOffset] * n, split at VMA ends. */
  runs: BigUint64Array;
}

/** What setTasks() gives a deferTasks engine. */
export interface LazyPagesTaskSet {
  nrTasks: number;
  tasks: LazyPagesTask[];
  format: 24 | 32;
  /** lazyd-link.json's token (docs/protocol.md §7): open the page-server session with a HELLO. Absent: stock bytes. */
  linkToken?: string;
}

export interface LazyPagesOptions extends LazyPagesFlagOptions {
  /** Where lazy-pages.socket is created. */
  workDir: string;
  /** Hand-overs to expect: the pstree.img records, zombies included (left out with deferTasks). */
  nrTasks?: number;
  tasks?: LazyPagesTask[];
  /** true: start() only listens; nrTasks, tasks and format come later through setTasks() (after restore-connected). */
  deferTasks?: boolean;
  source: 'local' | 'remote';
  /** remote: the page server. */
  address: string | undefined;
  port: number | undefined;
  format?: 24 | 32;
  /** undefined: plain TCP. */
  tls: NativeTlsOptions | undefined;
  onEvent: (event: LazyPagesEvent) => void;
  // Not flags (the engine's own values unless a test sets them): the handshake's timeouts.
  acceptTimeoutMs?: number;
  handoverTimeoutMs?: number;
  connectTimeoutMs?: number;
  closeTimeoutMs?: number;
}

export type LazyPagesEventType =
  | 'listening'
  | 'restore-connected'
  | 'task'
  | 'zombie'
  | 'restore-finished'
  | 'source-connected'
  | 'fork'
  | 'task-exited'
  | 'task-done'
  | 'warning'
  | 'done'
  | 'failed';

/** Totals of the engine (done) or of one task (task-done, task-exited). */
export interface EngineSummary {
  faults: number;
  pagesFault: number;
  pagesAround: number;
  pagesBackground: number;
  pagesZero: number;
  pagesExist: number;
  pagesDropped: number;
  pagesTotal: number;
  bytesReceived: number;
  /** Bytes UFFDIO_COPY placed, and the time spent inside it (ns): the install's own cost. */
  copyBytes: number;
  copyNs: number;
  seconds: number;
}

export interface LazyPagesEvent {
  type: LazyPagesEventType;
  pid: number;
  task: number;
  parentTask: number;
  /** task: "host pid N" (the task's pid here); listening: the socket path; warning, failed: the text. */
  message: string;
  summary: EngineSummary;
}

export type EngineState = 'idle' | 'waiting-restore' | 'handshake' | 'running' | 'closing' | 'done' | 'failed';

export interface LazyPagesStats {
  state: EngineState;
  summary: EngineSummary;
  tasksTotal: number;
  tasksActive: number;
  pagesRemaining: number;
  pagesInFlight: number;
  faultsWaiting: number;
  requests: number;
  requestsInFlight: number;
  pagesDiscarded: number;
  tlsFailures: number;
  /** Pages that failed their link checksum (docs/protocol.md §7.4): each fetched again once. */
  checksumMismatches: number;
  /** Lazyd link cuts that began a reconnect (feature resume, docs/protocol.md §7.6). */
  reconnects: number;
  /** Drain reply parts installed in a later loop pass than their reply's first (faults first: 128 KiB a pass). */
  installSlices: number;
  faultsReasked: number;
  /** The drain's bytes in flight allowed now (measured bandwidth x RTT within the floor and ceiling, or the faulting cap). */
  drainWindowBytes: number;
  drainInflightBytes: number;
  /** Bytes the drain has requested in all. */
  drainRequestedBytes: number;
  /** The page link's round trip and delivery rate (bytes/s) as measured; 0 before the first replies. */
  linkRttUs: number;
  linkBandwidth: number;
  /** Fault service time histogram: bucket upper bounds (the last is Infinity) and counts. */
  latencyBoundsUs: number[];
  latencyCounts: number[];
  latencySumUs: number;
  latencyCount: number;
  /** The same samples at a finer resolution: p50 and p99 as bucket upper bounds within 1.6 %, the max exact (0: none). */
  latencyP50Us: number;
  latencyP99Us: number;
  latencyMaxUs: number;
  /** By how each fault ended: copied, zeropage, exists, dropped, retried, gone. */
  faultsByResult: Record<string, number>;
  bytesSent: number;
}

export interface LazyPages {
  /** Creates lazy-pages.socket and starts the engine thread. */
  start(): void;
  /** deferTasks: the tasks and header format, once (thread-safe in the engine: its thread reads the waiting hand-overs). */
  setTasks(tasks: LazyPagesTaskSet): void;
  stop(): void;
  stats(): LazyPagesStats;
  socketPath(): string;
  /** Why it failed ("" while it has not). */
  error(): string;
}

// ---- host facts and helpers ----

/** errno 0: it worked. */
export interface HostProbe {
  uffd: { syscallErrno: number; deviceErrno: number; apiErrno: number; features: number; noncoopErrno: number; noncoopFeatures: number };
  memfdErrno: number;
}

export interface NativePageHashes {
  size: number;
  /** 32 bytes per page, in file order. */
  hashes: Buffer;
  /** Hex SHA-256 of the whole file. */
  sha256: string;
}

export interface NativeAddon {
  PageServer: new (options: PageServerOptions) => PageServer;
  LazyPages: new (options: LazyPagesOptions) => LazyPages;
  /** native/core/wire/wire.h's constants by name. */
  constants: Record<string, number | bigint>;
  /** One sd_notify datagram to the socket (systemd Type=notify). */
  notify(socket: string, text: string): void;
  /** What `lazyd check` asks of the kernel. */
  probeHost(): HostProbe;
  /** The TCP sockets that LISTEN on port in this network namespace (sock_diag). Throws when netlink refuses. */
  tcpListening(port: number): { address: string; port: number }[];
  /** Loads the TLS credentials as the daemons will; returns the notes for the log ("" if none). Throws on a bad file. */
  tlsCheck(options: NativeTlsOptions): string;
  /** wire.cc detect(): 24, 32, or 0 (undecided). */
  detectFormat(bytes: Uint8Array, pageSize: number): WireFormatCode;
  /**
   * page_hashes.cc: the SHA-256 of every page of a file (the last may be partial) and of the whole file, read and
   * hashed on a worker thread; pageSize 0: the whole-file hash alone (empty `hashes`). Rejects with the errno error.
   */
  hashPages(file: string, pageSize: number): Promise<NativePageHashes>;
  pageSize: number;
}

/** The declared surface, for the test that checks it against the loaded binding. */
export const NATIVE_CLASSES = {
  PageServer: ['addFile', 'addTask', 'listen', 'start', 'stop', 'stats', 'writePages', 'ackUpload', 'release', 'startRelay', 'releaseRelay'],
  LazyPages: ['start', 'setTasks', 'stop', 'stats', 'socketPath', 'error'],
} as const satisfies { [C in 'PageServer' | 'LazyPages']: readonly (keyof InstanceType<NativeAddon[C]>)[] };
export const NATIVE_FUNCTIONS = ['notify', 'probeHost', 'tcpListening', 'tlsCheck', 'detectFormat', 'hashPages'] as const satisfies readonly (keyof NativeAddon)[];
export const NATIVE_VALUES = ['constants', 'pageSize'] as const satisfies readonly (keyof NativeAddon)[];

// Compile-time: the lists above name every member of the interfaces (a member added to one and not the other
// fails to compile here).
type Missing<All, Listed> = Exclude<All, Listed>;
const everyExport: Missing<keyof NativeAddon, keyof typeof NATIVE_CLASSES | (typeof NATIVE_FUNCTIONS)[number] | (typeof NATIVE_VALUES)[number]> extends never
  ? true
  : false = true;
const everyPageServerMethod: Missing<keyof PageServer, (typeof NATIVE_CLASSES.PageServer)[number]> extends never ? true : false = true;
const everyLazyPagesMethod: Missing<keyof LazyPages, (typeof NATIVE_CLASSES.LazyPages)[number]> extends never ? true : false = true;
void [everyExport, everyPageServerMethod, everyLazyPagesMethod];

const require = createRequire(import.meta.url);
let cached: NativeAddon | undefined;

function addonPath(): string {
  return path.join(repoRoot(), 'build', 'Release', 'lazyd_native.node');
}

/** The addon, loaded once. Throws one line when it is not built. */
export function loadNative(): NativeAddon {
  if (cached) return cached;
  const candidate = addonPath();
  if (!existsSync(candidate)) {
    throw new Error(`native addon not built: ${candidate} is missing — run \`npm install\` (or \`npm run build:native\`)`);
  }
  cached = require(candidate) as NativeAddon;
  return cached;
}
