// Soak: one long-running `lazyd --page-server` serves a real `criu dump` of the self-verifying workload to
// back-to-back lazy restores — `lazyd lazy-pages` and `criu lazy-pages` alternately, each with real
// `criu restore --lazy-pages`, each restored workload verified by its own passes (every page against the dump's
// checksum) — while hostile clients hammer the same port: every malformed session of the hostile suite
// (test/harness/hostile.ts), aimed at this checkpoint and checking every byte they are served, bursts of idle
// connections, and one-byte-per-second readers. Reports restores, pages verified, errors, and the daemon's RSS
// and fd count at start and end; exits 1 on any failure, a served byte that is wrong, or growth beyond bounds.
// Not part of `npm test`: scripts/soak.sh [minutes].
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  checkHost,
  checkpointWorkload,
  findCriu,
  lazyRestore,
  startPageServer,
  withRunDir,
  type CriuVersion,
  type DaemonKind,
} from '../harness/index.js';
import {
  PAGE,
  daemonUsage,
  fdsBackTo,
  idleConnections,
  makeAttacks,
  slowReader,
  type DaemonUsage,
  type Served,
  type Target,
} from '../harness/hostile.js';
import { readPagemap, PE_LAZY, PE_PRESENT } from '../../src/images/index.js';

const args = process.argv.slice(2);
const arg = (name: string, fallback: string) => {
  const at = args.indexOf(`--${name}`);
  return at >= 0 && args[at + 1] ? args[at + 1] : fallback;
};
const minutes = Number(arg('minutes', '5'));
const version = arg('criu', '4.2.1') as CriuVersion;
const mib = Number(arg('mib', '32'));
/** The daemon may grow this much from its RSS after the first restore (JIT, heap and allocator warm-up). */
const RSS_GROWTH_BOUND_KIB = Number(arg('rss-bound-mib', '32')) * 1024;
const STALL_S = 3;
const IDLE_S = 5;

function log(message: string): void {
  process.stdout.write(`[soak ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

/** The largest lazy entry with data of the dump's first task, with its bytes from the pages image. */
async function servedRange(imagesDir: string): Promise<Served> {
  const file = fs.readdirSync(imagesDir).filter((n) => /^pagemap-\d+\.img$/.test(n)).sort()[0];
  if (!file) throw new Error(`no pagemap image in ${imagesDir}`);
  const pid = BigInt(file.match(/\d+/)![0]);
  const pagemap = await readPagemap(path.join(imagesDir, file));
  const lazy = pagemap.entries.filter((e) => (e.flags & (PE_LAZY | PE_PRESENT)) === (PE_LAZY | PE_PRESENT));
  if (lazy.length === 0) throw new Error(`${file}: no lazy entry with data`);
  const entry = lazy.reduce((a, b) => (b.nrPages > a.nrPages ? b : a));
  const pages = Math.min(entry.nrPages, 1024);
  // The range ends where the entry ends (the clamping attack relies on it): take its last `pages` pages.
  const start = entry.vaddr + BigInt((entry.nrPages - pages) * PAGE);
  const fd = fs.openSync(pagemap.pagesPath, 'r');
  const bytes = Buffer.alloc(pages * PAGE);
  fs.readSync(fd, bytes, 0, bytes.length, Number(entry.pagesOffset!) + (entry.nrPages - pages) * PAGE);
  fs.closeSync(fd);
  return { pid, start, pages, page: (i) => bytes.subarray(i * PAGE, (i + 1) * PAGE) };
}

interface HostileTally {
  sessions: number;
  pagesChecked: number;
  idleConnections: number;
  slowReaders: number;
  errors: string[];
}

/** Hostile clients, round after round, until stop is aborted. */
async function hammer(served: Served, target: Target, stop: AbortSignal, tally: HostileTally): Promise<void> {
  const attacks = makeAttacks(served);
  let round = 0;
  while (!stop.aborted) {
    round++;
    const work: Promise<unknown>[] = attacks.map(async (attack) => {
      try {
        const outcome = await attack.run(target);
        tally.pagesChecked += outcome.pagesChecked;
      } catch (error) {
        tally.errors.push(`attack "${attack.name}": ${(error as Error).message}`);
      }
      tally.sessions++;
    });
    if (round % 3 === 0) {
      work.push(
        (async () => {
          const sockets = await idleConnections(target, 200);
          tally.idleConnections += sockets.length;
          await sleep(1000);
          sockets.forEach((s) => s.destroy());
        })().catch((error) => tally.errors.push(`idle connections: ${(error as Error).message}`)),
      );
    }
    if (round % 5 === 0) {
      work.push(
        slowReader(served, target, (STALL_S + 2) * 1000, stop).then(
          () => tally.slowReaders++,
          (error) => tally.errors.push(`slow reader: ${(error as Error).message}`),
        ),
      );
    }
    await Promise.all(work);
    await sleep(200);
  }
}

async function main(): Promise<number> {
  checkHost([version]);
  const criu = findCriu(version);
  const deadline = performance.now() + minutes * 60_000;
  return withRunDir('soak', async (runDir, onCleanup) => {
    log(`criu ${version}, workload ${mib} MiB, ${minutes} min; run dir ${runDir}`);
    const checkpoint = await checkpointWorkload({ criu, runDir, workload: { mib }, onCleanup, progress: log });
    const served = await servedRange(checkpoint.imagesDir);
    const server = await startPageServer({
      kind: 'lazyd',
      imagesDir: checkpoint.imagesDir,
      verbosity: 2,
      extraArgs: ['--stall-timeout', String(STALL_S), '--idle-timeout', String(IDLE_S)],
    });
    onCleanup(() => server.kill());
    const target: Target = { host: server.address, port: server.port };
    const atStart = daemonUsage(server.pid);
    log(`lazyd --page-server pid ${server.pid} on ${server.address}:${server.port}: RSS ${atStart.rssKiB} KiB, ${atStart.fds} fds`);

    const stop = new AbortController();
    const tally: HostileTally = { sessions: 0, pagesChecked: 0, idleConnections: 0, slowReaders: 0, errors: [] };
    const hostile = hammer(served, target, stop.signal, tally);

    const daemons: DaemonKind[] = ['lazyd', 'criu'];
    const restores = { done: 0, byDaemon: { lazyd: 0, criu: 0 } as Record<DaemonKind, number>, lazyPages: 0, pagesVerified: 0, passes: 0 };
    const errors: string[] = [];
    let afterFirst: DaemonUsage | undefined;
    for (let i = 0; performance.now() < deadline; i++) {
      const daemon = daemons[i % 2];
      const name = `dst-${i}`;
      try {
        const restored = await lazyRestore({ checkpoint, server: { address: server.address, port: server.port }, daemon, name, onCleanup, passes: 2 });
        if (restored.lazyPages.copied !== restored.lazyPages.total) {
          throw new Error(`${restored.lazyPages.copied} of ${restored.lazyPages.total} lazy pages installed`);
        }
        const passes = restored.passes[0];
        if (passes.length < 2 || passes.some((p) => p.ok !== checkpoint.dataPages || p.bad !== 0)) {
          throw new Error(`verify passes ${JSON.stringify(passes.map((p) => ({ ok: p.ok, bad: p.bad })))}, want ok ${checkpoint.dataPages}`);
        }
        restores.done++;
        restores.byDaemon[daemon]++;
        restores.lazyPages += restored.lazyPages.total;
        restores.pagesVerified += passes.reduce((sum, p) => sum + p.ok, 0);
        restores.passes += passes.length;
        if (i === 0) afterFirst = daemonUsage(server.pid);
        if (restores.done % 5 === 0) {
          const now = daemonUsage(server.pid);
          log(`${restores.done} restores, hostile sessions ${tally.sessions}, daemon RSS ${now.rssKiB} KiB, ${now.fds} fds`);
        }
      } catch (error) {
        errors.push(`restore ${i} (${daemon} lazy-pages): ${(error as Error).message.split('\n')[0]}`);
        log(errors[errors.length - 1]);
      }
      fs.rmSync(path.join(runDir, name), { recursive: true, force: true });
    }
    stop.abort();
    await hostile;
    // Every hostile and restore session is over: the daemon must be back to its own fds.
    let fdsSettled = true;
    await fdsBackTo(server.pid, atStart.fds, (IDLE_S + STALL_S + 5) * 1000).catch((error) => {
      fdsSettled = false;
      errors.push(`fds: ${(error as Error).message}`);
    });
    const atEnd = daemonUsage(server.pid);
    const alive = server.proc.running;
    await server.finish(15_000).catch((error) => errors.push(`the page server did not exit cleanly: ${(error as Error).message}`));

    const baseline = afterFirst ?? atStart;
    const rssGrowth = atEnd.rssKiB - baseline.rssKiB;
    if (!alive) errors.push('the page server died');
    if (rssGrowth > RSS_GROWTH_BOUND_KIB) errors.push(`RSS grew by ${rssGrowth} KiB after the first restore (bound ${RSS_GROWTH_BOUND_KIB} KiB)`);
    if (restores.done === 0) errors.push('no restore completed');
    const allErrors = [...errors, ...tally.errors];
    const report = {
      minutes,
      criu: version,
      workloadMiB: mib,
      restores: restores.done,
      restoresByDaemon: restores.byDaemon,
      lazyPagesInstalled: restores.lazyPages,
      pagesVerified: restores.pagesVerified,
      verifyPasses: restores.passes,
      hostileSessions: tally.sessions,
      hostilePagesChecked: tally.pagesChecked,
      idleConnections: tally.idleConnections,
      slowReaders: tally.slowReaders,
      errors: allErrors.length,
      daemon: {
        rssKiB: { start: atStart.rssKiB, afterFirstRestore: baseline.rssKiB, end: atEnd.rssKiB },
        fds: { start: atStart.fds, end: atEnd.fds, settled: fdsSettled },
      },
    };
    console.log(JSON.stringify(report, null, 2));
    for (const error of allErrors.slice(0, 20)) console.log(`error: ${error}`);
    log(
      `${restores.done} restores (lazyd ${restores.byDaemon.lazyd}, criu ${restores.byDaemon.criu}), ${restores.pagesVerified} pages verified, ` +
        `${tally.sessions} hostile sessions, ${allErrors.length} errors; daemon RSS ${atStart.rssKiB} -> ${atEnd.rssKiB} KiB, fds ${atStart.fds} -> ${atEnd.fds}`,
    );
    return allErrors.length ? 1 : 0;
  });
}

main().then(
  (code) => process.exit(code),
  (error) => {
    console.error(`soak: ${(error as Error).stack ?? error}`);
    process.exit(1);
  },
);
