// Configuration files in criu's style: one long option per line, without the leading dashes, its value (if any)
// after white space; '#' starts a comment; blank lines are skipped.
//
//   # /etc/lazyd/lazyd.conf
//   page-server
//   images-dir /var/lib/ckpt
//   port 9876
//   metrics-address 127.0.0.1:9101
//   no-staging
//
// The daemon (`lazyd --page-server`) reads /etc/lazyd/lazyd.conf when it exists (as criu reads
// /etc/criu/default.conf) unless the command line says --no-default-config; the criu drop-ins (`lazyd page-server`,
// `lazyd lazy-pages`) do not, since their callers write criu's whole command line. Every command reads the file of
// --config FILE. Later files override earlier ones and the command line overrides both. One file may hold the
// options of several commands: each command takes those it accepts; a name no command knows is an error naming
// the file and line.
import fs from 'node:fs';
import { flagName } from '../config/flag.js';
import { DEFAULT_CONFIG_FILE, type Role } from '../config/flags.js';

export { DEFAULT_CONFIG_FILE };

export interface ConfigEntry {
  name: string;
  value?: string;
  file: string;
  line: number;
}

export function parseConfig(text: string, file: string): ConfigEntry[] {
  const entries: ConfigEntry[] = [];
  text.split('\n').forEach((raw, index) => {
    const line = index + 1;
    const stripped = raw.replace(/(^|\s)#.*$/, '').trim();
    if (!stripped) return;
    const match = /^(\S+)(?:\s+(.*))?$/.exec(stripped)!;
    let name = match[1];
    let value = match[2]?.trim();
    const eq = name.indexOf('=');
    if (eq > 0 && value === undefined) {
      value = name.slice(eq + 1);
      name = name.slice(0, eq);
    }
    if (name.startsWith('-')) {
      throw new Error(`${file}:${line}: "${name}": write the long option without its leading dashes (e.g. "images-dir /var/lib/ckpt")`);
    }
    if (value !== undefined && /^".*"$|^'.*'$/.test(value)) value = value.slice(1, -1);
    entries.push({ name, value, file, line });
  });
  return entries;
}

export function readConfigFile(file: string): ConfigEntry[] {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    throw new Error(`--config ${file}: cannot read it (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}) — check the path`);
  }
  return parseConfig(text, file);
}

/** The options of one command, as yargs knows them (keys include aliases; booleans may be negated with no-). */
export interface OptionTable {
  keys: Set<string>;
  booleans: Set<string>;
  /** Every spelling of an option (long name, aliases) → its long name. */
  canonical: Map<string, string>;
}

/** A role's options as the config files see them (src/config/flags.ts); --config itself is not one. */
export function optionTable(role: Role): OptionTable {
  const keys = new Set<string>();
  const booleans = new Set<string>();
  const canonical = new Map<string, string>();
  for (const [key, f] of Object.entries(role.flags)) {
    const name = flagName(key);
    if (name === 'config') continue;
    keys.add(name);
    canonical.set(name, name);
    if (f.alias) {
      keys.add(f.alias);
      canonical.set(f.alias, name);
    }
    if (f.type === 'boolean') booleans.add(name);
  }
  return { keys, booleans, canonical };
}

/** Where the config file options come from for this run, and the --config value found on the command line. */
export function extractConfigFlag(argv: readonly string[]): { args: string[]; config?: string } {
  const args: string[] = [];
  let config: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') {
      args.push(...argv.slice(i));
      break;
    }
    if (arg === '--config') {
      config = argv[++i];
      if (config === undefined) throw new Error('--config needs a file name');
      continue;
    }
    if (arg.startsWith('--config=')) {
      config = arg.slice('--config='.length);
      continue;
    }
    args.push(arg);
  }
  return { args, config };
}

/** The long names the command line sets (any spelling: -D, --images-dir=x, --no-staging, -v4...). */
function namedOnCommandLine(argv: readonly string[], table: OptionTable): Set<string> {
  const named = new Set<string>();
  for (const arg of argv) {
    if (arg === '--') break;
    let key: string | undefined;
    if (arg.startsWith('--')) key = arg.slice(2).split('=')[0];
    else if (/^-v\d*$|^-v+$/.test(arg)) key = 'verbosity';
    else if (/^-[A-Za-z]/.test(arg)) key = arg[1];
    if (!key) continue;
    if (key.startsWith('no-') && table.canonical.has(key.slice(3))) key = key.slice(3);
    named.add(table.canonical.get(key) ?? key);
  }
  return named;
}

/**
 * Turns config entries into command-line arguments for `command`: entries for options of other commands are left
 * out, unknown ones are an error, and options the command line sets win (they are dropped from the files).
 */
export function configArguments(
  entries: readonly ConfigEntry[],
  command: string,
  tables: ReadonlyMap<string, OptionTable>,
  argv: readonly string[],
): string[] {
  const table = tables.get(command);
  if (!table) return [];
  const chosen = new Map<string, string[]>();
  for (const entry of entries) {
    if (entry.name === 'config') throw new Error(`${entry.file}:${entry.line}: a config file cannot name another (--config)`);
    let name = entry.name;
    let negated = false;
    const anyKnows = (n: string) => [...tables.values()].some((t) => t.keys.has(n));
    if (!anyKnows(name) && name.startsWith('no-') && anyKnows(name.slice(3))) {
      name = name.slice(3);
      negated = true;
    }
    if (name === 'verbosity') {
      if (entry.value !== undefined && !/^\d$/.test(entry.value)) {
        throw new Error(`${entry.file}:${entry.line}: verbosity takes a level 0..4, not "${entry.value}"`);
      }
      chosen.set('verbosity', [entry.value === undefined ? '--verbosity' : `--verbosity=${entry.value}`]);
      continue;
    }
    if (!anyKnows(name)) {
      throw new Error(`${entry.file}:${entry.line}: unknown option "${entry.name}" — see \`lazyd --help\` and \`lazyd <command> --help\``);
    }
    if (!table.keys.has(name)) continue;  // another command's option
    const canonical = table.canonical.get(name) ?? name;
    if (table.booleans.has(canonical)) {
      if (entry.value !== undefined && !/^(true|false|yes|no|on|off|1|0)$/i.test(entry.value)) {
        throw new Error(`${entry.file}:${entry.line}: ${name} is a switch: give no value, or true/false`);
      }
      const off = negated !== (entry.value !== undefined && /^(false|no|off|0)$/i.test(entry.value));
      chosen.set(canonical, [off ? `--no-${canonical}` : `--${canonical}`]);
    } else {
      if (negated) throw new Error(`${entry.file}:${entry.line}: "${entry.name}": only switches can be negated with no-`);
      if (entry.value === undefined) throw new Error(`${entry.file}:${entry.line}: ${name} needs a value`);
      chosen.set(canonical, [`--${canonical}`, entry.value]);
    }
  }
  const named = namedOnCommandLine(argv, table);
  const out: string[] = [];
  for (const [name, args] of chosen) if (!named.has(name)) out.push(...args);
  return out;
}
