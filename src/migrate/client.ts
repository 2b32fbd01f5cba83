// `lazyd migrate`: moves a running process tree to the host of a `lazyd agent`, post-copy (README "Migrating a
// process"). The sequence, and where the point of no return is:
//   1. connect to the agent (TLS with --tls), exchange CRIU versions; check both hosts (CRIU runs, userfaultfd
//      works on the destination, the destination's CRIU can restore the source's images, this host has the
//      memory for the relay's copy of the pages); the relay's page server listens, its address goes with hello,
//      and the agent starts its lazy-pages engine — nothing frozen yet;
//   1b. with --pre-copy where the kernel tracks dirty memory: `criu pre-dump` iterations, each streamed to the
//      agent (src/migrate/pre-copy.ts); the tasks run on between them, a failure here leaves them running;
//   2. `criu dump --lazy-pages` on loopback (src/migrate/lazy-dump.ts), on top of the last iteration with
//      --track-mem --prev-images-dir: the tree is frozen from here;
//   3. relay staging in this process (src/migrate/relay-source.ts) pulls every lazy page from the dump into
//      memory and serves the destination's lazy-pages daemon from there; it holds the dump's CLOSE;
//   4. meanwhile the images (without the lazy pages: small) are streamed to the agent, with the relay's
//      lazyd-link.json when the agent takes it; its lazy-pages engine (started on hello, before the freeze) reads
//      them when `criu restore --lazy-pages` hands over, and opens with the lazyd link (docs/protocol.md §7);
//   5. the agent reports the restored pid: the point of no return. The relay may now CLOSE the dump (at once if
//      it holds every page): the dump exits 0 and kills the originals, which stayed frozen until then. The
//      destination's missing pages keep coming from this process's memory until the agent says all are present.
// Every failure before the CLOSE went out — the agent refuses or fails, the copy breaks, the restore fails,
// the link drops (no byte for twice --link-timeout), a signal — resets the dump's connection: CRIU resumes the
// originals (docs/protocol.md §1.7). The agent, for its part, kills the restored copy when it loses the link for
// one --link-timeout (lazy-pages' --on-failure kill), so the two never run at once.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls, { type SecureContextOptions } from 'node:tls';
import { Channel, CHANNEL_VERSION, type AgentMessage } from './channel.js';
import { criuFeature, imageCompatibility, probeCriu, type CriuHost } from './criu-host.js';
import { criuLogErrors, startLazyDump, type LazyDump } from './lazy-dump.js';
import { pagesInParent, preCopy, runPreDump, sendIteration, type PreCopyResult } from './pre-copy.js';
import { describeStop, PRE_COPY_LIMITS, type PreCopyLimits } from './pre-copy-rules.js';
import { RelaySource } from './relay-source.js';
import { memAvailableBytes, treeResidentBytes } from './source-memory.js';
import { EXIT, MigrationProgress, type MigrationReport, type Stage } from './report.js';
import type { NativeTlsOptions } from '../native.js';
import { waitForListen } from '../staging/listen-watch.js';
import { resetDump } from '../staging/relay.js';
import { LINK_FILE_NAME, LINK_VERSION } from '../link/capability-file.js';

/** How long a failed page connection waits for the agent's own report of why (see the session-end handler). */
const AGENT_REPORT_GRACE_MS = 1000;

export interface MigrateOptions {
  pid: number;
  to: { host: string; port: number };
  criu: string;
  tls?: SecureContextOptions;
  /** The same credentials for the native page server that serves the destination's pages (files, as --tls-*). */
  nativeTls?: NativeTlsOptions;
  /** Check that the agent's certificate names --to's host (criu's CN check); false: --tls-no-cn-verify. */
  tlsVerifyName: boolean;
  linkTimeoutMs: number;
  /** Where the relay's page server listens for the destination's daemon (0 picks a free one). */
  pagePort: number;
  preCopy: boolean;
  /** The stop rules of the pre-dump iterations (default PRE_COPY_LIMITS). */
  preCopyLimits?: PreCopyLimits;
  /** Where the dump's images go (a fresh directory under it); kept after a failure. */
  workDir: string;
  keepImages: boolean;
  pageSize: number;
  progress: MigrationProgress;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

class Failure extends Error {}

async function connectAgent(options: MigrateOptions): Promise<net.Socket> {
  const { host, port } = options.to;
  return new Promise<net.Socket>((resolve, reject) => {
    const fail = (error: Error) => reject(new Failure(`cannot reach the agent at ${host}:${port}: ${error.message}`));
    if (options.tls) {
      const socket = tls.connect({
        host,
        port,
        ...options.tls,
        rejectUnauthorized: true,
        ...(net.isIP(host) ? {} : { servername: host }),
        // --tls-no-cn-verify: the chain is still checked, the name is not (as criu).
        ...(options.tlsVerifyName ? {} : { checkServerIdentity: () => undefined }),
      });
      socket.once('secureConnect', () => {
        socket.removeListener('error', fail);
        resolve(socket);
      });
      socket.once('error', (error) => fail(new Error(`TLS: ${error.message}`)));
    } else {
      const socket = net.connect(port, host);
      socket.once('connect', () => {
        socket.removeListener('error', fail);
        resolve(socket);
      });
      socket.once('error', fail);
    }
  });
}

/** Waits for the next agent message of one of the given types; a refusal, failure or a closed channel throws. */
function nextMessage<T extends AgentMessage['t']>(channel: Channel, types: T[], what: string): Promise<Extract<AgentMessage, { t: T }>> {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      channel.off('message', onMessage);
      channel.off('error', onError);
      channel.off('close', onClose);
    };
    const onMessage = (message: AgentMessage) => {
      if ((types as string[]).includes(message.t)) {
        cleanup();
        resolve(message as Extract<AgentMessage, { t: T }>);
      } else if (message.t === 'refuse') {
        cleanup();
        reject(new Failure(`the agent refused the migration: ${message.reason}`));
      } else if (message.t === 'failed') {
        cleanup();
        reject(new Failure(`the destination failed at ${message.stage}: ${message.reason}`));
      }
    };
    const onError = (error: Error) => {
      cleanup();
      reject(new Failure(`${what}: ${error.message}`));
    };
    const onClose = () => {
      cleanup();
      reject(new Failure(`${what}: the agent closed the control connection`));
    };
    channel.on('message', onMessage);
    channel.on('error', onError);
    channel.on('close', onClose);
  });
}


export async function migrate(options: MigrateOptions): Promise<MigrationReport> {
  const { progress } = options;
  const destination = `${options.to.host}:${options.to.port}`;
  const stages: Stage[] = [];
  let stageStart = performance.now();
  const stage = (name: string) => {
    const now = performance.now();
    stages.push({ name, ms: now - stageStart });
    stageStart = now;
  };
  const report: MigrationReport = {
    outcome: 'untouched',
    exitCode: EXIT.untouched,
    message: '',
    pid: options.pid,
    destination,
    criu: {},
    bytes: { images: 0, pages: 0, requests: 0, control: 0, total: 0 },
    stages,
  };
  let channel: Channel | undefined;
  let dump: LazyDump | undefined;
  let relay: RelaySource | undefined;
  let imagesDir: string | undefined;
  let tracking = false;
  let iterations: PreCopyResult | undefined;
  const iterationDirs: string[] = [];
  let restoredAt: number | undefined;
  let dumpExitedAt: number | undefined;
  const onSignal = (signal: NodeJS.Signals) => abortWith(new Failure(`interrupted by ${signal}`));
  // Set once the destination has every page: from then on only the dump's own end counts.
  let finishing = false;
  let rejectAborted: (error: Error) => void = () => undefined;
  const aborted = new Promise<never>((_, reject) => (rejectAborted = reject));
  const abortWith = (error: Error) => {
    if (!finishing) rejectAborted(error);
  };
  aborted.catch(() => undefined);
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const race = <T>(promise: Promise<T>) => Promise.race([promise, aborted]);

  try {
    // ---- 1. both hosts, before anything is frozen
    progress.update({ phase: 'check' });
    if (!pidAlive(options.pid)) throw new Failure(`no process ${options.pid} on this host — pass the pid of the tree's root (--pid)`);
    const source: CriuHost = probeCriu(options.criu);
    report.criu.source = source.version;
    if (options.preCopy) {
      const missing = criuFeature(options.criu, 'mem_dirty_track');
      if (missing !== undefined) {
        report.preCopy = `not available: this kernel does not track dirty memory (criu check --feature mem_dirty_track: ${missing}); post-copy alone`;
        progress.note(`--pre-copy: this kernel does not track dirty memory (criu check --feature mem_dirty_track fails); migrating with post-copy alone`);
      } else {
        tracking = true;
      }
    }
    // The relay keeps a copy of the lazy pages here until the destination has them all.
    const resident = treeResidentBytes(options.pid);
    const available = memAvailableBytes();
    if (resident > available) {
      throw new Failure(
        `the tree of pid ${options.pid} has ${(resident / 1048576).toFixed(0)} MiB resident and this host ${(available / 1048576).toFixed(0)} MiB available: ` +
          'the source holds a copy of the lazy pages until the destination has them — free memory here first',
      );
    }
    const socket = await race(connectAgent(options));
    channel = new Channel(socket);
    channel.keepAlive(2 * options.linkTimeoutMs);
    channel.on('error', (error: Error) => abortWith(new Failure(`the control connection to ${destination} failed: ${error.message}`)));
    channel.on('close', () => abortWith(new Failure(`the agent at ${destination} closed the control connection`)));
    // The relay's page server listens now: the agent starts its lazy-pages engine on hello, before the freeze.
    const localAddress = socket.localAddress!.replace(/^::ffff:/, '');
    relay = new RelaySource({
      listenAddress: localAddress,
      listenPort: options.pagePort,
      peerAddress: socket.remoteAddress!,
      tls: options.nativeTls ? { ...options.nativeTls, peerName: '' } : undefined,
      maxBytes: available,
      stallTimeoutMs: 2 * options.linkTimeoutMs,
    });
    let pagePort: number;
    try {
      pagePort = relay.listen();
    } catch (error) {
      throw new Failure((error as Error).message);
    }
    relay.on('refused', (why: string) => progress.note(`refused ${why}`));
    const welcome = nextMessage(channel, ['welcome'], 'waiting for the agent');
    channel.send({
      t: 'hello',
      v: CHANNEL_VERSION,
      criuVersion: source.version,
      pageSize: options.pageSize,
      linkTimeoutMs: options.linkTimeoutMs,
      pid: options.pid,
      pageServer: { address: localAddress, port: pagePort },
    });
    const hello = await race(welcome);
    report.criu.destination = hello.criuVersion;
    if (hello.v !== CHANNEL_VERSION) throw new Failure(`the agent speaks migration protocol ${hello.v}, this lazyd ${CHANNEL_VERSION} — run the same lazyd version on both hosts`);
    if (hello.pageSize !== options.pageSize) throw new Failure(`page size ${options.pageSize} here, ${hello.pageSize} on the destination: CRIU images cannot move between them`);
    if (hello.uffd) throw new Failure(`the destination cannot restore lazily: ${hello.uffd}`);
    const mismatch = imageCompatibility(source.version, hello.criuVersion);
    if (mismatch) throw new Failure(mismatch);
    stage('check');

    fs.mkdirSync(options.workDir, { recursive: true });
    imagesDir = fs.mkdtempSync(path.join(options.workDir, `migrate-${options.pid}-`));

    // ---- 1b. pre-dump iterations: the tasks run on between them (a failure here leaves them running)
    if (tracking) {
      const limits = options.preCopyLimits ?? PRE_COPY_LIMITS;
      const ch = channel;
      iterations = await preCopy({
        imagesDir,
        pageSize: options.pageSize,
        limits,
        dump: (dir, parent) => {
          iterationDirs.push(dir);
          progress.update({ phase: 'pre-copy', iteration: iterationDirs.length });
          return race(runPreDump(options.criu, options.pid, dir, parent)).catch((error: Error) => Promise.reject(new Failure(error.message)));
        },
        send: async (n, dir) => {
          const bytes = await race(sendIteration(ch, n, dir, () => nextMessage(ch, ['pre-dump-stored'], `waiting for the agent to store pre-dump ${n}`)));
          report.bytes.images += bytes;
          return bytes;
        },
        onIteration: (it) =>
          progress.note(
            `pre-dump ${it.n}: ${it.pagesWritten} pages written (${((it.pagesWritten * options.pageSize) / 1048576).toFixed(1)} MiB) ` +
              `in ${it.dumpMs.toFixed(0)} ms, on the destination ${it.sendMs.toFixed(0)} ms later`,
          ),
      });
      const written = iterations.iterations.map((it) => it.pagesWritten);
      report.preCopyIterations = iterations.iterations;
      report.preCopyStop = iterations.stop;
      report.preCopy = `${written.length} iteration${written.length > 1 ? 's' : ''} (pages written ${written.join(', ')}); stopped: ${describeStop(iterations.stop, written, limits)}`;
      progress.note(`pre-copy: ${report.preCopy}; the final lazy dump follows on top of ${iterations.parent}`);
      stage('pre-copy');
    }

    // ---- 2. the freeze: from here a failure is a rollback
    progress.update({ phase: 'dump' });
    const dumpArgs = iterations ? ['--track-mem', '--prev-images-dir', iterations.parent] : [];
    dump = await race(startLazyDump(options.criu, options.pid, imagesDir, dumpArgs));
    report.outcome = 'rolled-back';
    report.exitCode = EXIT.rolledBack;
    const frozenAt = dump.startedAt;
    stages.push({ name: 'dump', ms: dump.readyAt - stageStart });
    stageStart = dump.readyAt;
    void dump.exited.then((code) => {
      dumpExitedAt = performance.now();
      if (relay?.released && code === 0) progress.note(`criu dump had its CLOSE and exited 0: the original pid ${options.pid} is gone, the process runs on the destination only`);
      // Exit 0 after release(): the dump answered the relay's CLOSE (its relay-done event may come after this).
      if (!(relay?.released && code === 0)) abortWith(new Failure(`criu dump exited (${code}) before the migration was complete: ${criuLogErrors(dump!.logFile)}`));
      return code;
    });

    // ---- 3. the relay: every lazy page into this process, the CLOSE held
    await race(waitForListen('127.0.0.1', dump.port, 10000));
    relay.once('held', () => {
      report.heldMs = performance.now() - frozenAt;
      const mib = ((relay!.pagesTotal * options.pageSize) / 1048576).toFixed(1);
      progress.note(
        `all ${relay!.pagesTotal} lazy pages (${mib} MiB) held here ${report.heldMs.toFixed(0)} ms after the freeze; ` +
          (restoredAt === undefined ? 'the original stays frozen until the destination\'s restore succeeds' : 'criu dump gets its CLOSE now'),
      );
    });
    void relay.end().then((end) => {
      if (!end.ok) abortWith(new Failure(end.reason));
    });
    const plan = await race(relay.start(imagesDir, dump.port).catch((error: Error) => Promise.reject(new Failure(error.message))));
    const lazyPages = plan.pages;
    report.lazyPages = lazyPages;
    if (plan.note) progress.note(plan.note);
    // The destination's page connection failing before every page is there. When the agent's restore fails its
    // lazy-pages resets this connection before the agent has seen criu restore exit, so the agent's `failed`
    // (which names the cause) comes a moment after the reset: it wins if it comes within AGENT_REPORT_GRACE_MS.
    relay.on('session-end', (end: { ok: boolean; message: string }) => {
      if (end.ok) return;
      const failure = new Failure(`the destination's page connection failed: ${end.message}`);
      setTimeout(() => abortWith(failure), AGENT_REPORT_GRACE_MS).unref();
    });

    // ---- 4. the images, and the relay's lazyd-link.json to an agent that takes it (docs/protocol.md §7)
    progress.update({ phase: 'copy' });
    if (relay.linkWarning) progress.note(relay.linkWarning);
    const linkFiles = relay.linkFile && hello.link === LINK_VERSION ? [LINK_FILE_NAME] : [];
    if (relay.linkFile && !linkFiles.length) {
      progress.note(`the agent does not take ${LINK_FILE_NAME} (an earlier lazyd): its lazy-pages speaks plain CRIU, without per-page checksums`);
    }
    const final = await race(channel.sendImages(imagesDir, linkFiles));
    report.bytes.images += final.bytes;
    stage('copy');
    progress.update({ phase: 'restore' });
    const restoredMessage = nextMessage(channel, ['restored'], 'waiting for the restore');
    // Waited for from now on: a small tree can have every page before `restored` is read, and the agent's `done`
    // then comes in the same chunk, before an await on `restored` could go on.
    const done = nextMessage(channel, ['done'], 'waiting for the last pages');
    done.catch(() => undefined); // a failure is seen through `restored` (or through the race below)
    channel.send({ t: 'restore', files: final.files, bytes: final.bytes, preDumps: iterations?.iterations.length ?? 0 });
    const restored = await race(restoredMessage);

    // ---- 5. the point of no return: the restore succeeded on the destination
    restoredAt = performance.now();
    report.restoredPid = restored.pid;
    report.downtimeMs = restoredAt - frozenAt;
    relay.release();
    stage('restore');
    const ticker = setInterval(() => progress.update({ phase: 'pages', present: Math.min(relay!.traffic().pages, lazyPages), total: lazyPages }), 100);
    try {
      await race(done);
    } finally {
      clearInterval(ticker);
    }
    finishing = true;
    report.allPagesMs = performance.now() - frozenAt;
    progress.update({ phase: 'pages', present: lazyPages, total: lazyPages });
    stage('pages');
    // For the report only, read once the process runs on the destination: a failure to read is no failure of the migration.
    if (iterations) report.pagesInParent = await pagesInParent(imagesDir, options.pageSize).catch(() => undefined);

    // ---- 6. the dump had the CLOSE (after the restore, once every page was held): it killed the originals
    progress.update({ phase: 'finish' });
    const end = await relay.end();
    if (!end.ok) throw new Failure(end.reason);
    const code = await dump.exited;
    report.frozenMs = (dumpExitedAt ?? performance.now()) - frozenAt;
    stage('finish');
    if (code !== 0) {
      report.outcome = 'lost';
      report.exitCode = EXIT.lost;
      report.message = `lazyd migrate: criu dump exited ${code} after its CLOSE (${criuLogErrors(dump.logFile)}); check pid ${options.pid} here and pid ${restored.pid} on ${options.to.host}`;
    } else {
      report.outcome = 'migrated';
      report.exitCode = EXIT.migrated;
      report.message = `lazyd migrate: pid ${options.pid} now runs on ${options.to.host} as pid ${restored.pid}; the original is gone`;
    }
    channel.send({ t: 'bye' });
    channel.end();
  } catch (error) {
    const reason = (error as Error).message;
    if (!dump) {
      report.outcome = 'untouched';
      report.exitCode = EXIT.untouched;
      report.message = iterationDirs.length
        ? `lazyd migrate: ${reason}; only pre-dumps had run (each let the tasks run on), pid ${options.pid} runs on here as before`
        : `lazyd migrate: ${reason}; nothing was frozen, pid ${options.pid} runs on here as before`;
    } else if (relay?.outcome?.ok) {
      if (dumpExitedAt !== undefined) report.frozenMs = dumpExitedAt - dump.startedAt;
      report.outcome = 'lost';
      report.exitCode = EXIT.lost;
      report.message = `lazyd migrate: ${reason} after the dump had its CLOSE; the original is gone — check pid ${report.restoredPid ?? '?'} on ${options.to.host}`;
    } else {
      progress.update({ phase: 'rollback' });
      // A reset, never an EOF: CRIU resumes the originals.
      if (relay?.started) relay.abort(reason);
      else await resetDump('127.0.0.1', dump.port);
      const code = await dump.exited;
      report.frozenMs = (dumpExitedAt ?? performance.now()) - dump.startedAt;
      const alive = pidAlive(options.pid);
      report.outcome = alive ? 'rolled-back' : 'lost';
      report.exitCode = alive ? EXIT.rolledBack : EXIT.lost;
      const after = restoredAt !== undefined ? ` after the restore had succeeded (the destination kills its copy: lazy-pages --on-failure kill)` : '';
      report.message = alive
        ? `lazyd migrate: ${reason}${after}; rolled back: criu dump resumed pid ${options.pid} on this host (dump exit ${code})`
        : `lazyd migrate: ${reason}${after}; criu dump exited ${code} and pid ${options.pid} is gone here: ${criuLogErrors(dump.logFile)}`;
    }
    if (channel && !channel.isClosed) {
      channel.send({ t: 'abort', reason });
      channel.end();
    }
  } finally {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    progress.stop();
  }
  if (relay) {
    const traffic = relay.traffic();
    report.pagesServed = traffic.pages;
    report.bytes.pages = traffic.bytesOut;
    report.bytes.requests = traffic.bytesIn;
    await relay.stop(); // after every session-end event
    if (relay.linkedSessions || relay.stockSessions) report.pageLink = relay.stockSessions ? 'criu' : 'lazyd';
  }
  if (channel) report.bytes.control = channel.bytesIn + channel.bytesOut - report.bytes.images;
  report.bytes.total = report.bytes.images + report.bytes.pages + report.bytes.requests + report.bytes.control;
  if (imagesDir && report.outcome === 'migrated' && !options.keepImages) {
    for (const dir of [imagesDir, ...iterationDirs]) fs.rmSync(dir, { recursive: true, force: true });
  } else if (imagesDir && report.outcome !== 'migrated') {
    report.message += ` (images and dump.log kept in ${imagesDir}${iterationDirs.length ? `, the pre-dumps beside it in ${path.basename(imagesDir)}.pre-1..${iterationDirs.length}` : ''})`;
  }
  return report;
}

/** The default place for the dump's images. */
export function defaultWorkDir(): string {
  return path.join(os.tmpdir(), 'lazyd-migrate');
}
