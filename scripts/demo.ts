// `npm run demo`: a post-copy migration between two hosts made of network namespaces (10.77.0.1 → 10.77.0.2,
// test/harness/netns.ts) with `lazyd migrate`, the way a user runs it:
//
//   1. start `lazyd agent` on the destination, and the self-verifying workload (64 MiB by default) on the source
//   2. `lazyd migrate --pid PID --to 10.77.0.2:PORT` on the source: its progress and its report
//   3. the workload, now on the destination, verifies all of its memory against its pre-migration checksum
//
// `--loopback` runs the older demo instead, the lower-level commands on loopback:
//   1. build and start the self-verifying workload (64 MiB by default)
//   2. criu dump it (a plain dump: its pages stay in the images)
//   3. serve the images with lazyd --page-server
//   4. lazyd lazy-pages --page-server + criu restore --lazy-pages: the workload resumes at once, and its memory
//      arrives from lazyd's page server while it runs (--daemon criu uses criu lazy-pages instead)
//   5. wait until every page is present and the workload has verified all of its memory
//
// Usage: node dist/scripts/demo.js [--mib N] [--criu 4.1.1|4.2.1] [--keep]
//        node dist/scripts/demo.js --loopback [--mib N] [--criu 4.1.1|4.2.1] [--server lazyd|criu|lazyd-dropin] [--daemon lazyd|criu] [--keep]
// Needs root and CRIU installed by scripts/install-criu.sh. Exits non-zero on any failure.
import fs from 'node:fs';
import path from 'node:path';
import { readServedSessions, type ServedSessions } from '../test/harness/session-log.js';
import { createTwoHosts } from '../test/harness/netns.js';
import { runMigrate, startAgent, startSourceWorkload, stopSourceWorkload, verifyRunning } from '../test/harness/agent.js';
import { formatReport } from '../src/migrate/report.js';
import {
  checkHost,
  CRIU_VERSIONS,
  isCriuVersion,
  runLazyMigration,
  SERVER_KINDS,
  type CriuVersion,
  type MigrationResult,
  type ServerKind,
  type DaemonKind,
  DAEMON_KINDS,
  findCriu,
  withRunDir,
} from '../test/harness/index.js';

interface DemoOptions {
  mib: number;
  criu: CriuVersion;
  server: ServerKind;
  daemon: DaemonKind;
  keep: boolean;
  loopback: boolean;
}

const USAGE =
  `usage: node dist/scripts/demo.js [--mib N] [--criu ${CRIU_VERSIONS.join('|')}] [--keep]            lazyd migrate between two namespaces\n` +
  `       node dist/scripts/demo.js --loopback [--mib N] [--criu ${CRIU_VERSIONS.join('|')}] [--server ${SERVER_KINDS.join('|')}] [--daemon ${DAEMON_KINDS.join('|')}] [--keep]`;

function parseArgs(argv: string[]): DemoOptions {
  const options: DemoOptions = { mib: 64, criu: '4.2.1', server: 'lazyd', daemon: 'lazyd', keep: false, loopback: false };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split(/=(.*)/s, 2);
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new Error(`${flag} needs a value\n${USAGE}`);
      return v;
    };
    switch (flag) {
      case '--mib': {
        const mib = Number(value());
        if (!Number.isInteger(mib) || mib < 1) throw new Error(`--mib must be a whole number of MiB >= 1\n${USAGE}`);
        options.mib = mib;
        break;
      }
      case '--criu': {
        const v = value();
        if (!isCriuVersion(v)) throw new Error(`--criu must be one of ${CRIU_VERSIONS.join(', ')}\n${USAGE}`);
        options.criu = v;
        break;
      }
      case '--server': {
        const v = value();
        if (!(SERVER_KINDS as readonly string[]).includes(v)) throw new Error(`--server must be one of ${SERVER_KINDS.join(', ')}\n${USAGE}`);
        options.server = v as ServerKind;
        break;
      }
      case '--daemon': {
        const v = inline ?? argv[++i];
        if (!(DAEMON_KINDS as readonly string[]).includes(v)) throw new Error(`--daemon must be one of ${DAEMON_KINDS.join(', ')}\n${USAGE}`);
        options.daemon = v as DaemonKind;
        break;
      }
      case '--keep':
        options.keep = true;
        break;
      case '--loopback':
        options.loopback = true;
        break;
      case '-h':
      case '--help':
        process.stdout.write(USAGE + '\n');
        process.exit(0);
      // eslint-disable-next-line no-fallthrough
      default:
        throw new Error(`unknown argument ${argv[i]}\n${USAGE}`);
    }
  }
  return options;
}


function report(result: MigrationResult, served: ServedSessions | undefined, options: DemoOptions): string {
  const ms = (value: number) => `${value.toFixed(0)} ms`;
  const mainPasses = result.passes[0];
  const lines = [
    '',
    'What happened',
    `  checkpoint        criu ${result.criuVersion} dump took ${ms(result.dumpMs)}: ${result.dataPages} data pages, ` +
      `${result.lazyPagesInImages} pages marked lazy in the images${result.dumpAttempts > 1 ? ` (dump attempt ${result.dumpAttempts})` : ''}`,
    `  page server       ${result.server} ready after ${ms(result.serverStartMs)}` +
      (served ? `; served ${served.pages} pages (${(served.bytes / 1048576).toFixed(1)} MiB) in ${served.gets} GETs, ${served.sessions} session(s)` : ''),
    `  lazy-pages        ${options.daemon} lazy-pages installed ${result.lazyPages.copied} of ${result.lazyPages.total} lazy pages`,
    `  time to resume    ${ms(result.restoreMs)} (criu restore --lazy-pages -d returned; the workload was running)`,
    `  all pages present ${ms(result.pagesInstalledMs)} after the restore began (${options.daemon} lazy-pages logged its last page; ` +
      `it exited 0 at ${ms(result.allPagesMs)})`,
    `  downtime          ${ms(result.resumeGapMs)} without a heartbeat (dump, server start, image copy, restore); after resume: max gap ` +
      `${result.heartbeat.maxGapMs.toFixed(1)} ms, p99 ${result.heartbeat.p99GapMs.toFixed(1)} ms`,
    `  verification      OK: ${result.passesWhileLazy} clean passes while pages were arriving, ${mainPasses.length} clean passes ` +
      `over all ${mainPasses[0]?.ok ?? 0} pages afterwards, checksum ${mainPasses.at(-1)?.sum} (same as before the dump)`,
    `  total             ${ms(result.totalMs)}${options.keep ? `; files kept in ${result.runDir}` : ''}`,
  ];
  return lines.join('\n');
}

/** The default demo: `lazyd agent` on the destination namespace, `lazyd migrate` on the source one. */
async function migrateDemo(options: DemoOptions): Promise<number> {
  const started = performance.now();
  const say = (message: string) =>
    process.stdout.write(`[${((performance.now() - started) / 1000).toFixed(2).padStart(6)}s] ${message}\n`);
  process.stdout.write(
    `lazyd demo: lazyd migrate of a ${options.mib} MiB workload from 10.77.0.1 to 10.77.0.2 (two network namespaces, CRIU ${options.criu})\n`,
  );
  checkHost([options.criu]);
  const criu = findCriu(options.criu);
  const hosts = createTwoHosts({ id: `demo${process.pid % 1000}` });
  try {
    return await withRunDir(
      'demo-migrate',
      async (runDir, onCleanup) => {
        const agent = await startAgent({ netns: hosts.destination, criu: criu.path, stateDir: path.join(runDir, 'agent') });
        onCleanup(() => agent.stop());
        say(`dst# lazyd agent --listen ${agent.address}:0 --criu ${criu.path}   (listening on port ${agent.port})`);
        const source = await startSourceWorkload(path.join(runDir, 'w'), { mib: options.mib, order: 'random', seed: 2024, threads: 1 }, hosts.source);
        onCleanup(() => stopSourceWorkload(source));
        say(`src: the workload runs as pid ${source.workload.pid}, verifying its memory (checksum ${source.sums[0]})`);
        say(`src# lazyd migrate --pid ${source.workload.pid} --to ${agent.address}:${agent.port} --criu ${criu.path}`);
        const run = runMigrate({ netns: hosts.source, pid: source.workload.pid, agent, criu: criu.path, dumpDir: path.join(runDir, 'dump') });
        let shown = 0;
        const show = setInterval(() => {
          for (const event of run.events.slice(shown)) say(`    ${JSON.stringify(event)}`);
          shown = run.events.length;
        }, 100);
        const { code, report } = await run.finished.finally(() => clearInterval(show));
        for (const event of run.events.slice(shown)) say(`    ${JSON.stringify(event)}`);
        process.stdout.write(formatReport(report) + '\n');
        if (code !== 0) throw new Error(`lazyd migrate exited ${code}`);
        onCleanup(() => process.kill(report.restoredPid!, 'SIGKILL'));
        const passes = await verifyRunning(source, report.restoredPid!);
        say(
          `dst: the workload runs as pid ${report.restoredPid}; ${passes[0].length} clean passes over all ${passes[0][0]?.ok ?? 0} pages, ` +
            `checksum ${passes[0].at(-1)?.sum} (the same as before the migration)`,
        );
        if (options.keep) say(`files kept in ${runDir}`);
        fs.writeFileSync(path.join(runDir, 'report.json'), JSON.stringify(report, null, 2));
        return 0;
      },
      options.keep,
    );
  } finally {
    hosts.destroy();
  }
}

async function main(): Promise<number> {
  const options = parseArgs(process.argv.slice(2));
  if (!options.loopback) return migrateDemo(options);
  const started = performance.now();
  const say = (message: string) =>
    process.stdout.write(`[${((performance.now() - started) / 1000).toFixed(2).padStart(6)}s] ${message}\n`);

  process.stdout.write(
    `lazyd demo: post-copy migration of a ${options.mib} MiB workload on loopback ` +
      `(CRIU ${options.criu}, page server: ${options.server}, lazy-pages daemon: ${options.daemon})\n`,
  );
  checkHost([options.criu]);
  let served: ServedSessions | undefined;
  const result = await runLazyMigration({
    criuVersion: options.criu,
    server: options.server,
    daemon: options.daemon,
    workload: { mib: options.mib, order: 'random', seed: 2024, threads: 1 },
    keep: options.keep,
    progress: say,
    afterFinish: (server) => {
      served = readServedSessions(server.logFile);
    },
  });
  say('done');
  process.stdout.write(report(result, served, options) + '\n');
  return 0;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    process.stderr.write(`\ndemo FAILED: ${(error as Error).message ?? error}\n`);
    process.exit(1);
  },
);
