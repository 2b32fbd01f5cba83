// `npm run demo`: a post-copy migration on loopback, end to end, with real CRIU around lazyd.
//
//   1. build and start the self-verifying workload (64 MiB by default)
//   2. criu dump it (a plain dump: its pages stay in the images)
//   3. serve the images with lazyd --page-server
//   4. lazyd lazy-pages --page-server + criu restore --lazy-pages: the workload resumes at once, and its memory
//      arrives from lazyd's page server while it runs (--daemon criu uses criu lazy-pages instead)
//   5. wait until every page is present and the workload has verified all of its memory
//
// Usage: node dist/scripts/demo.js [--mib N] [--criu 4.1.1|4.2.1] [--server lazyd|criu|lazyd-dropin] [--daemon lazyd|criu] [--keep]
// Needs root and CRIU installed by scripts/install-criu.sh. Exits non-zero on any failure.
import { readServedSessions, type ServedSessions } from '../test/harness/session-log.js';
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
} from '../test/harness/index.js';

interface DemoOptions {
  mib: number;
  criu: CriuVersion;
  server: ServerKind;
  daemon: DaemonKind;
  keep: boolean;
}

const USAGE = `usage: node dist/scripts/demo.js [--mib N] [--criu ${CRIU_VERSIONS.join('|')}] [--server ${SERVER_KINDS.join('|')}] [--daemon ${DAEMON_KINDS.join('|')}] [--keep]`;

function parseArgs(argv: string[]): DemoOptions {
  const options: DemoOptions = { mib: 64, criu: '4.2.1', server: 'lazyd', daemon: 'lazyd', keep: false };
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

async function main(): Promise<number> {
  const options = parseArgs(process.argv.slice(2));
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
