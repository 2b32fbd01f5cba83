// The full command line through yargs: every command, --help, and yargs' own errors. src/cli/index.ts loads this
// module only when the drop-in fast path (src/cli/fast-argv.ts) does not take the command line: importing yargs
// costs ~60-150 ms of start-up, and a restore waits for `lazyd lazy-pages` to be ready.
import yargs from 'yargs';
import { addFlags } from './yargs-options.js';
import { AGENT, CHECK, FAILOVER, LAZY_PAGES, MIGRATE, PAGE_SERVER, PAGE_SERVER_DROPIN, REPLICATE, REPLICATE_ACTIONS, STAGING_ACTIONS, STAGING_COMMAND } from '../config/flags.js';

/** What yargs parsed for a command (camelCase keys; positionals of `staging` as action and id). */
export type Parsed = Record<string, unknown> & { action?: (typeof STAGING_ACTIONS)[number]; id?: number };

/** What each command does with what yargs parsed (src/cli/index.ts runs them; tests capture them). */
export interface CommandHandlers {
  pageServerDropin(parsed: Parsed): Promise<void>;
  lazyPages(parsed: Parsed): Promise<void>;
  staging(parsed: Parsed): Promise<void>;
  check(parsed: Parsed): Promise<void>;
  migrate(parsed: Parsed): Promise<void>;
  agent(parsed: Parsed): Promise<void>;
  replicate(parsed: Parsed): Promise<void>;
  failover(parsed: Parsed): Promise<void>;
  daemon(parsed: Parsed): Promise<void>;
}

/** Parses `args` and runs the command's handler. Throws an Error whose message is the one line to print. */
export async function runYargs(args: readonly string[], handlers: CommandHandlers): Promise<void> {
  const parser = yargs([...args])
    .scriptName('lazyd')
    .usage('$0 --page-server -D <images> [--port 9876]   serve a checkpoint lazily to any number of restores')
    .command(
      'page-server',
      "criu's `page-server --lazy-pages`, drop-in: one session, then exit",
      (y) => addFlags(y, PAGE_SERVER_DROPIN.flags),
      (a) => handlers.pageServerDropin(a),
    )
    .command(
      'lazy-pages',
      "the destination daemon of `criu restore --lazy-pages` (criu's `lazy-pages`, drop-in)",
      (y) => addFlags(y, LAZY_PAGES.flags),
      (a) => handlers.lazyPages(a),
    )
    .command(
      'staging <action> [id]',
      'list or release the checkpoints a running `lazyd --page-server --control-socket PATH` holds, or relay one from `criu dump --lazy-pages`',
      (y) =>
        addFlags(y, STAGING_COMMAND.flags)
          .positional('action', { choices: STAGING_ACTIONS, describe: 'list the staged checkpoints, release one, or relay a lazy dump into the daemon' })
          .positional('id', { type: 'number', describe: 'release: the checkpoint id (as list shows it)' }),
      (a) => handlers.staging(a),
    )
    .command(
      'check',
      'report whether this host can run each role (page server, staging, lazy-pages) and how to fix it',
      (y) => addFlags(y, CHECK.flags),
      (a) => handlers.check(a),
    )
    .command(
      'migrate',
      'move a running process tree to the host of a `lazyd agent`, post-copy, in one command',
      (y) => addFlags(y, MIGRATE.flags),
      (a) => handlers.migrate(a),
    )
    .command(
      'agent',
      'the destination service of `lazyd migrate`: receives migrations and restores them lazily',
      (y) => addFlags(y, AGENT.flags),
      (a) => handlers.agent(a),
    )
    .command(
      'replicate [what]',
      'checkpoint a running process tree into a standby `lazyd agent` every --interval (`status`: the standby\'s replicas)',
      (y) => addFlags(y, REPLICATE.flags).positional('what', { choices: REPLICATE_ACTIONS, describe: 'run (the default) or status' }),
      (a) => handlers.replicate(a),
    )
    .command(
      'failover <replica>',
      "restore a replica's last committed epoch on its standby, lazily from the standby's own images",
      (y) => addFlags(y, FAILOVER.flags).positional('replica', { type: 'string', describe: 'the replica id (as `lazyd replicate status` lists it)' }),
      (a) => handlers.failover(a),
    )
    .command('$0', 'run the lazyd daemon', (y) => addFlags(y, PAGE_SERVER.flags), (a) => handlers.daemon(a))
    .strictOptions()
    .help()
    .version(false)
    .fail((message, error) => {
      throw error ?? new Error(message);
    });
  await parser.parseAsync();
}
