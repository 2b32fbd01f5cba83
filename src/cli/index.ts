// lazyd's command line. Flag names mirror criu's, so a tool that runs `criu page-server --lazy-pages ...` or
// `criu lazy-pages ...` can run lazyd with the same arguments. Options may also come from config files in criu's
// style (src/cli/config-file.ts): for the daemon /etc/lazyd/lazyd.conf unless --no-default-config, then for any
// command --config FILE; the command line wins.
import fs from 'node:fs';
import { normalizeCriuArgv } from './criu-argv.js';
import { daemonRequest, runDaemon } from './daemonize.js';
import { configArguments, DEFAULT_CONFIG_FILE, extractConfigFlag, optionTable, readConfigFile, type OptionTable } from './config-file.js';
import { argvProblem, roleOf } from './role-argv.js';
import { fastGiven } from './fast-argv.js';
import type { CommandHandlers, Parsed } from './yargs-cli.js';
import { tlsOptionsFrom } from './tls-options.js';
import { AGENT, CHECK, FAILOVER, LAZY_PAGES, MIGRATE, REPLICATE, PAGE_SERVER, PAGE_SERVER_DROPIN, ROLES, STAGING_ACTIONS, STAGING_COMMAND } from '../config/flags.js';
import { resolveValues } from '../config/resolve.js';

/** Each command's options, for the config files: what a command accepts, its switches, and its aliases. */
export function optionTables(): Map<string, OptionTable> {
  return new Map(ROLES.map((role) => [role.command, optionTable(role)]));
}

/** The command line with the config files' options added (those the command line does not set itself). */
function withConfigFiles(argv: readonly string[]): string[] {
  const { args, config } = extractConfigFlag(argv);
  const noDefault = args.includes('--no-default-config') || args.includes('--default-config=false');
  const command = roleOf(args).command;
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
  const role = roleOf(args);
  const problem = argvProblem(args, role);
  if (problem) {
    process.stderr.write(`lazyd: ${problem}\n`);
    return 1;
  }
  const daemon = daemonRequest(merged);
  if (daemon && !args.includes('--help')) return runDaemon(daemon);
  let exitCode = 0;
  const tlsWarn = (message: string) => process.stderr.write(`lazyd: warning: ${message}\n`);
  // What the command line gave, by camelCase key; the verbosity comes from criu's -v forms.
  const given = (a: object): Record<string, unknown> => ({ ...a, verbosity: verbosityGiven ? verbosity : undefined });

  // Each command's module is loaded when that command runs: a restore waits for `lazyd lazy-pages` to start, so
  // it does not pay for the page server's, staging's or the metrics' modules (README "Benchmarks": start-up).
  const handlers: CommandHandlers = {
    async pageServerDropin(a) {
      const values = resolveValues(PAGE_SERVER_DROPIN, given(a));
      if (!values.lazyPages) {
        throw new Error(
          'page-server without --lazy-pages receives uploads from `criu dump --page-server`; ' +
            'the drop-in does not — run `lazyd --page-server` (staging) for uploads, or add --lazy-pages to serve the images of -D',
        );
      }
      const tls = tlsOptionsFrom(values, values.address, tlsWarn);
      const { runPageServer } = await import('../commands/page-server.js');
      exitCode = await runPageServer({ mode: 'criu', values, tls });
    },
    async lazyPages(a) {
      const values = resolveValues(LAZY_PAGES, given(a));
      const tls = tlsOptionsFrom(values, values.address, tlsWarn);
      const { runLazyPages } = await import('../commands/lazy-pages.js');
      exitCode = await runLazyPages({ values, tls });
    },
    async staging(a: Parsed) {
      const values = resolveValues(STAGING_COMMAND, given(a));
      const { runStaging } = await import('../commands/staging.js');
      exitCode = await runStaging({ action: a.action!, controlSocket: values.controlSocket!, id: a.id, pid: values.pid, json: values.json, relay: values });
    },
    async check(a) {
      const values = resolveValues(CHECK, given(a));
      const { runCheck } = await import('../commands/check.js');
      exitCode = runCheck({ json: values.json });
    },
    async migrate(a) {
      const values = resolveValues(MIGRATE, given(a));
      const { runMigrate } = await import('../commands/migrate.js');
      exitCode = await runMigrate(values);
    },
    async agent(a) {
      const values = resolveValues(AGENT, given(a));
      const { runAgent } = await import('../commands/agent.js');
      exitCode = await runAgent(values);
    },
    async replicate(a) {
      const values = resolveValues(REPLICATE, given(a));
      const { runReplicate } = await import('../commands/replicate.js');
      exitCode = await runReplicate(a.what as string | undefined, values);
    },
    async failover(a) {
      const values = resolveValues(FAILOVER, given(a));
      const { runFailover } = await import('../commands/failover.js');
      exitCode = await runFailover(a.replica as string | undefined, values);
    },
    async daemon(a) {
      const values = resolveValues(PAGE_SERVER, given(a));
      if (!values.pageServer) throw new Error('nothing to do: pass --page-server (see --help)');
      const tls = tlsOptionsFrom(values, values.address, tlsWarn);
      const { runPageServer } = await import('../commands/page-server.js');
      exitCode = await runPageServer({ mode: 'serve', values, tls });
    },
  };

  try {
    const fast = role === LAZY_PAGES ? fastGiven(role, args) : undefined;
    if (fast) await handlers.lazyPages(fast);
    else await (await import('./yargs-cli.js')).runYargs(args, handlers);
  } catch (error) {
    process.stderr.write(`lazyd: ${(error as Error).message}\n`);
    return 1;
  }
  return exitCode;
}
