// lazyd's command line. Flag names mirror criu's, so a tool that runs `criu page-server --lazy-pages ...` or
// `criu lazy-pages ...` can run lazyd with the same arguments. Options may also come from config files in criu's
// style (src/cli/config-file.ts): for the daemon /etc/lazyd/lazyd.conf unless --no-default-config, then for any
// command --config FILE; the command line wins.
import fs from 'node:fs';
import yargs, { type Argv } from 'yargs';
import { normalizeCriuArgv } from './criu-argv.js';
import { daemonRequest, runDaemon } from './daemonize.js';
import { configArguments, DEFAULT_CONFIG_FILE, extractConfigFlag, readConfigFile, type OptionTable } from './config-file.js';
import { DEFAULT_VERBOSITY, LOG_FORMATS } from '../log.js';

/** The serve-mode daemon logs one line per session start and end: info (-v3) unless -v says otherwise. */
export const DAEMON_VERBOSITY = 3;
import { tlsFlags, tlsOptionsFrom } from './tls-options.js';

function commonOptions<T>(y: Argv<T>) {
  return tlsFlags(y)
    .option('images-dir', { alias: 'D', type: 'string', default: '.', describe: 'CRIU images directory' })
    .option('work-dir', { alias: 'W', type: 'string', describe: 'work directory (default: the images dir)' })
    .option('log-file', { alias: 'o', type: 'string', describe: 'log file, relative to the work dir (criu -o); SIGHUP reopens it' })
    .option('log-format', {
      choices: LOG_FORMATS,
      default: 'auto' as const,
      describe: 'json or text (criu\'s lines); auto: text for the criu drop-ins, for the daemon text on a terminal and json otherwise',
    })
    .option('address', { type: 'string', describe: 'numeric IPv4/IPv6 address to listen on or connect to' })
    .option('port', { type: 'number', describe: 'TCP port' })
    .option('status-fd', { type: 'number', describe: "write one '\\0' byte to this fd when ready, then close it" })
    .option('pidfile', { type: 'string', describe: 'write the pid to this file (relative: in the work dir)' })
    .option('daemon', { alias: 'd', type: 'boolean', describe: 'run in the background once ready (as criu -d)' })
    .option('default-config', { type: 'boolean', default: true, describe: `the daemon reads ${DEFAULT_CONFIG_FILE} (--no-default-config: not)` })
    .option('config', { type: 'string', describe: 'read options from this file (criu style: one long option per line)' })
    .option('metrics-address', { type: 'string', describe: 'serve Prometheus metrics on HOST:PORT at /metrics (default: off)' })
    .option('criu-abi', {
      type: 'string',
      describe: 'page-server header layout: auto, 4.1 (24-byte headers) or 4.2 (32-byte)',
      default: 'auto',
    })
    .option('max-request-pages', { type: 'number', default: 65536, describe: 'largest GET served, in pages' })
    .option('max-sessions', { type: 'number', default: 1024, describe: 'concurrent sessions; more are refused' })
    .option('stall-timeout', { type: 'number', default: 30, describe: 'seconds a peer may leave a reply unread' })
    .option('idle-timeout', { type: 'number', default: 300, describe: 'page server: seconds a session may send nothing with no reply pending (0: never)' })
    .option('max-inflight', { type: 'number', default: 64, describe: 'page server: unanswered requests per session before its socket is no longer read' })
    .option('max-session-bytes', { type: 'number', default: 67108864, describe: 'page server: unsent reply bytes per session before its socket is no longer read' })
    .option('drain-timeout', { type: 'number', default: 10, describe: 'seconds SIGTERM waits for replies in flight' });
}

const pageServerDropinOptions = <T>(y: Argv<T>) => commonOptions(y).option('lazy-pages', { type: 'boolean', default: false });

const lazyPagesOptions = <T>(y: Argv<T>) =>
  commonOptions(y)
    .option('page-server', { type: 'boolean', default: false, describe: 'fetch lazy pages from --address:--port' })
    .option('on-failure', {
      choices: ['kill', 'keep'] as const,
      describe: 'restored tasks whose pages can never be completed: kill (SIGKILL, default) or keep (missing pages read as zeros)',
    })
    .option('rstf-timeout', { type: 'number', describe: 'seconds from the last task hand-over to RSTF (default 60, 0: no limit)' })
    .option('metrics-linger', { type: 'number', default: 0, describe: 'seconds to keep serving /metrics after the restore ended' });

const stagingOptions = <T>(y: Argv<T>) =>
  y
    .positional('action', { choices: ['list', 'release'] as const, describe: 'list the staged checkpoints, or release one' })
    .positional('id', { type: 'number', describe: 'release: the checkpoint id (as list shows it)' })
    .option('control-socket', { type: 'string', demandOption: true, describe: "the daemon's --control-socket" })
    .option('pid', { type: 'number', describe: 'release: the checkpoint that holds this pid' })
    .option('json', { type: 'boolean', default: false, describe: 'list: print the JSON answer as it is' });

const checkOptions = <T>(y: Argv<T>) =>
  y
    .option('json', { type: 'boolean', default: false, describe: 'print the report as JSON' })
    .option('default-config', { type: 'boolean', default: true, describe: `read ${DEFAULT_CONFIG_FILE} (--no-default-config: do not)` })
    .option('config', { type: 'string', describe: 'read options from this file' });

const serveOptions = <T>(y: Argv<T>) =>
  commonOptions(y)
    .option('page-server', { type: 'boolean', default: false, describe: 'serve the checkpoint of -D over TCP' })
    .option('lazy-pages', { type: 'boolean', default: false, describe: 'accepted for criu compatibility' })
    .option('staging', { type: 'boolean', default: true, describe: 'accept `criu dump --page-server` uploads on the same port and serve them lazily' })
    .option('staging-dir', { type: 'string', describe: 'where staged uploads write pagemap-N.img/pages-N.img (default: -D; give criu dump the same -D)' })
    .option('staging-max-bytes', { type: 'number', default: 1073741824, describe: 'memory cap for staged and uploading pages; an upload over it is refused (the dump fails, CRIU resumes the tasks)' })
    .option('staging-restores', { type: 'number', default: 0, describe: 'release a staged checkpoint after N completed restores (0: never)' })
    .option('staging-ttl', { type: 'number', default: 0, describe: 'release a staged checkpoint S seconds after staging (0: never)' })
    .option('persist', { type: 'boolean', default: false, describe: 'also write lazy pages to pages-N.img (PE_LAZY|PE_PRESENT), like criu page-server' })
    .option('control-socket', { type: 'string', describe: 'unix socket for `lazyd staging list|release` (default: none)' });

/** Each command's options, for the config files: what a command accepts, its switches, and its aliases. */
export function optionTables(): Map<string, OptionTable> {
  const builders: [string, (y: Argv) => Argv<any>][] = [
    ['page-server', pageServerDropinOptions],
    ['lazy-pages', lazyPagesOptions],
    ['staging', stagingOptions],
    ['check', checkOptions],
    ['$0', serveOptions],
  ];
  const tables = new Map<string, OptionTable>();
  for (const [command, build] of builders) {
    const o = (build(yargs([])) as any).getOptions();
    const canonical = new Map<string, string>();
    for (const key of Object.keys(o.key)) canonical.set(key, key);
    for (const [name, aliases] of Object.entries(o.alias as Record<string, string[]>)) {
      canonical.set(name, name);
      for (const alias of aliases) canonical.set(alias, name);
    }
    const keys = new Set(Object.keys(o.key).filter((k) => k !== 'help' && k !== 'version' && k !== 'config'));
    tables.set(command, { keys, booleans: new Set(o.boolean as string[]), canonical });
  }
  return tables;
}

const COMMANDS = ['page-server', 'lazy-pages', 'staging', 'check'];

/** The command line with the config files' options added (those the command line does not set itself). */
function withConfigFiles(argv: readonly string[]): string[] {
  const { args, config } = extractConfigFlag(argv);
  const noDefault = args.includes('--no-default-config') || args.includes('--default-config=false');
  const command = COMMANDS.includes(args[0]) ? args[0] : '$0';
  const files: string[] = [];
  // The default file configures the daemon; the criu drop-ins run with the command line their caller wrote.
  if (command === '$0' && !noDefault && fs.existsSync(DEFAULT_CONFIG_FILE)) files.push(DEFAULT_CONFIG_FILE);
  if (config !== undefined) files.push(config);
  if (!files.length) return args;
  const entries = files.flatMap((file) => readConfigFile(file));
  const extra = configArguments(entries, command, optionTables(), args);
  const end = args.indexOf('--');
  return end < 0 ? [...args, ...extra] : [...args.slice(0, end), ...extra, ...args.slice(end)];
}

export async function main(argv: readonly string[]): Promise<number> {
  let merged: string[];
  try {
    merged = withConfigFiles(argv);
  } catch (error) {
    process.stderr.write(`lazyd: ${(error as Error).message}\n`);
    return 1;
  }
  const { args, verbosity, verbosityGiven } = normalizeCriuArgv(merged);
  const daemon = daemonRequest(merged);
  if (daemon && !args.includes('--help')) return runDaemon(daemon);
  let exitCode = 0;
  const tlsWarn = (message: string) => process.stderr.write(`lazyd: warning: ${message}\n`);
  // Each command's module is loaded when that command runs: a restore waits for `lazyd lazy-pages` to start, so
  // it does not pay for the page server's, staging's or the metrics' modules (README "Benchmarks": start-up).
  const serve = (mode: 'serve' | 'criu') => async (a: any) => {
    const { runPageServer } = await import('../commands/page-server.js');
    exitCode = await runPageServer({
      mode,
      imagesDir: a.imagesDir,
      workDir: a.workDir,
      address: a.address,
      port: a.port,
      statusFd: a.statusFd,
      pidfile: a.pidfile,
      logFile: a.logFile,
      logFormat: a.logFormat,
      verbosity: verbosityGiven || mode === 'criu' ? verbosity : DAEMON_VERBOSITY,
      metricsAddress: a.metricsAddress,
      criuAbi: a.criuAbi,
      maxSessions: a.maxSessions,
      maxRequestPages: a.maxRequestPages,
      stallTimeoutSeconds: a.stallTimeout,
      idleTimeoutSeconds: a.idleTimeout,
      maxInflight: a.maxInflight,
      maxSessionBytes: a.maxSessionBytes,
      drainSeconds: a.drainTimeout,
      staging: a.staging,
      stagingDir: a.stagingDir,
      stagingMaxBytes: a.stagingMaxBytes,
      stagingRestores: a.stagingRestores,
      stagingTtlSeconds: a.stagingTtl,
      persist: a.persist,
      controlSocket: a.controlSocket,
      tls: tlsOptionsFrom(a, a.address, tlsWarn),
      tlsHandshakeTimeoutSeconds: a.tlsHandshakeTimeout,
    });
  };

  const parser = yargs(args)
    .scriptName('lazyd')
    .usage('$0 --page-server -D <images> [--port 9876]   serve a checkpoint lazily to any number of restores')
    .command('page-server', "criu's `page-server --lazy-pages`, drop-in: one session, then exit", pageServerDropinOptions, async (a) => {
      if (!a.lazyPages) {
        throw new Error(
          'page-server without --lazy-pages receives uploads from `criu dump --page-server`; ' +
            'the drop-in does not — run `lazyd --page-server` (staging) for uploads, or add --lazy-pages to serve the images of -D',
        );
      }
      await serve('criu')(a);
    })
    .command(
      'lazy-pages',
      "the destination daemon of `criu restore --lazy-pages` (criu's `lazy-pages`, drop-in)",
      lazyPagesOptions,
      async (a) => {
        const { runLazyPages } = await import('../commands/lazy-pages.js');
        exitCode = await runLazyPages({
          imagesDir: a.imagesDir,
          workDir: a.workDir,
          pageServer: a.pageServer,
          address: a.address,
          port: a.port,
          statusFd: a.statusFd,
          pidfile: a.pidfile,
          logFile: a.logFile,
          logFormat: a.logFormat,
          verbosity,
          metricsAddress: a.metricsAddress,
          metricsLingerSeconds: a.metricsLinger,
          criuAbi: a.criuAbi,
          stallTimeoutSeconds: a.stallTimeout,
          onFailure: a.onFailure,
          rstfTimeoutSeconds: a.rstfTimeout,
          tls: tlsOptionsFrom(a, a.address, tlsWarn),
        });
      },
    )
    .command(
      'staging <action> [id]',
      'list or release the checkpoints a running `lazyd --page-server --control-socket PATH` holds',
      stagingOptions,
      async (a) => {
        const { runStaging } = await import('../commands/staging.js');
        exitCode = await runStaging({ action: a.action!, controlSocket: a.controlSocket, id: a.id, pid: a.pid, json: a.json });
      },
    )
    .command('check', 'report whether this host can run each role (page server, staging, lazy-pages) and how to fix it', checkOptions, async (a) => {
      const { runCheck } = await import('../commands/check.js');
      exitCode = runCheck({ json: a.json });
    })
    .command('$0', 'run the lazyd daemon', serveOptions, async (a) => {
      if (!a.pageServer) throw new Error('nothing to do: pass --page-server (see --help)');
      await serve('serve')(a);
    })
    .strictOptions()
    .help()
    .version(false)
    .fail((message, error) => {
      throw error ?? new Error(message);
    });

  try {
    await parser.parseAsync();
  } catch (error) {
    process.stderr.write(`lazyd: ${(error as Error).message}\n`);
    return 1;
  }
  return exitCode;
}

export { DEFAULT_VERBOSITY };
