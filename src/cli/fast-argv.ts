// The drop-in's command line without yargs: `criu lazy-pages`'s argv, as tools that drive criu write it, read
// through the same flag table (src/config/flags.ts) yargs is given. Only the plain forms are taken here, each with
// the value yargs makes of it: `--name value`, `--name=value`, `-D value` (criu's glued `-Dvalue` was split by
// src/cli/criu-argv.ts), `--switch`, `--no-switch`, `-d`. Anything else (--help, a flag given twice, a value
// that starts with "-" or is empty, a number yargs would coerce in its own way, `--switch=false`, a positional,
// `--`) returns undefined, and the command line goes through yargs (src/cli/yargs-cli.ts), so --help and every
// message stay yargs' own. test/unit/fast-argv.test.ts checks that both give the same values for every flag.
import { flagName, type Flag } from '../config/flag.js';
import type { Role } from '../config/flags.js';

// Numbers as yargs reads them for a number flag (Number(text)), limited to the spellings where that is plain.
const PLAIN_NUMBER = /^\d+(\.\d+)?$/;

interface Spelling {
  key: string;
  flag: Flag;
  /** --no-<switch>. */
  negated: boolean;
}

function spellings(role: Role): Map<string, Spelling> {
  const out = new Map<string, Spelling>();
  for (const [key, f] of Object.entries(role.flags)) {
    // criu's argv forms (-v4, -vv) are read by src/cli/criu-argv.ts; one left over here is yargs' to report.
    if (f.criuArgv) continue;
    out.set(`--${flagName(key)}`, { key, flag: f, negated: false });
    if (f.alias) out.set(`-${f.alias}`, { key, flag: f, negated: false });
    if (f.type === 'boolean') out.set(`--no-${flagName(key)}`, { key, flag: f, negated: true });
  }
  return out;
}

function valueOf(f: Flag, text: string | undefined): unknown {
  if (text === undefined || text === '' || text.startsWith('-')) return undefined;
  if (f.type === 'number') return PLAIN_NUMBER.test(text) ? Number(text) : undefined;
  if (f.type === 'string') return text;
  return undefined;
}

/**
 * What the command line gives the role's flags, by camelCase key, as yargs would parse it; undefined when it has
 * any form this parser leaves to yargs. `args` starts with the command's name (`lazy-pages ...`).
 */
export function fastGiven(role: Role, args: readonly string[]): Record<string, unknown> | undefined {
  if (role.command === '$0' || args[0] !== role.command || (role.positionals ?? 0) > 0) return undefined;
  const known = spellings(role);
  const given: Record<string, unknown> = {};
  for (let i = 1; i < args.length; i++) {
    const arg = args[i];
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const spelled = eq > 0 ? arg.slice(0, eq) : arg;
    const found = known.get(spelled);
    if (!found || found.key in given) return undefined;
    const { key, flag: f, negated } = found;
    if (f.type === 'boolean') {
      if (eq > 0) return undefined;
      given[key] = !negated;
      continue;
    }
    const value = valueOf(f, eq > 0 ? arg.slice(eq + 1) : args[++i]);
    if (value === undefined) return undefined;
    given[key] = value;
  }
  return given;
}
