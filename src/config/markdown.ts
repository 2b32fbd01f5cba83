// The README's flag tables, made from the flags' table (./flags.ts). Each sits between two markers in README.md:
//
//   <!-- flags:page-server -->
//   | flag | default | meaning |
//   ...
//   <!-- /flags -->
//
// scripts/write-flag-tables.mjs writes them; test/unit/config.test.ts fails when README.md holds anything else.
// Not loaded by any command.
import { defaultText, flagName, meaning, type Flag, type Flags } from './flag.js';
import { AGENT, CHECK, FAILOVER, FLAG_GROUPS, LAZY_PAGES, MIGRATE, PAGE_SERVER, PAGE_SERVER_DROPIN, REPLICATE, STAGING_COMMAND, type Role } from './flags.js';

export interface FlagTable {
  /** The marker's name: <!-- flags:ID -->. */
  id: string;
  role: Role;
  /** The flags it lists, by key, in the table's order. */
  keys: string[];
  /** The default column's header. */
  defaultHeader?: string;
}

const keysOf = (...groups: object[]) => groups.flatMap((g) => Object.keys(g));
const shownElsewhere = new Set(keysOf(FLAG_GROUPS.STAGING, FLAG_GROUPS.ACCESS, FLAG_GROUPS.TLS, FLAG_GROUPS.TLS_SERVER));
const tlsKeys = new Set(keysOf(FLAG_GROUPS.TLS));

export const README_TABLES: readonly FlagTable[] = [
  { id: 'page-server', role: PAGE_SERVER, keys: Object.keys(PAGE_SERVER.flags).filter((k) => !shownElsewhere.has(k)) },
  // The drop-in takes the daemon's flags but staging's; the table lists those that differ.
  {
    id: 'page-server-dropin',
    role: PAGE_SERVER_DROPIN,
    keys: Object.keys(PAGE_SERVER_DROPIN.flags).filter((k) => (PAGE_SERVER_DROPIN.flags as Flags)[k] !== (PAGE_SERVER.flags as Flags)[k]),
  },
  { id: 'staging', role: PAGE_SERVER, keys: keysOf(FLAG_GROUPS.STAGING) },
  { id: 'access', role: PAGE_SERVER, keys: keysOf(FLAG_GROUPS.ACCESS) },
  { id: 'tls', role: PAGE_SERVER, keys: keysOf(FLAG_GROUPS.TLS, FLAG_GROUPS.TLS_SERVER), defaultHeader: "default (criu's)" },
  { id: 'lazy-pages', role: LAZY_PAGES, keys: Object.keys(LAZY_PAGES.flags).filter((k) => !tlsKeys.has(k)) },
  { id: 'staging-command', role: STAGING_COMMAND, keys: Object.keys(STAGING_COMMAND.flags) },
  { id: 'check', role: CHECK, keys: Object.keys(CHECK.flags) },
  // The TLS file flags are the page server's (the 'tls' table); --tls itself says more here.
  { id: 'migrate', role: MIGRATE, keys: Object.keys(MIGRATE.flags).filter((k) => k === 'tls' || !tlsKeys.has(k)) },
  { id: 'agent', role: AGENT, keys: Object.keys(AGENT.flags).filter((k) => k === 'tls' || !tlsKeys.has(k)) },
  { id: 'replicate', role: REPLICATE, keys: Object.keys(REPLICATE.flags).filter((k) => k === 'tls' || !tlsKeys.has(k)) },
  { id: 'failover', role: FAILOVER, keys: Object.keys(FAILOVER.flags).filter((k) => k === 'tls' || !tlsKeys.has(k)) },
];

const cell = (text: string) => text.replace(/\|/g, '\\|');

/** The flag column: `-D, --images-dir DIR`, `--staging` / `--no-staging`, `-vN`, `--verbosity=N`. */
function flagCell(key: string, f: Flag): string {
  const name = flagName(key);
  if (f.criuArgv) return `\`-${f.alias}${f.arg ?? ''}\`, \`--${name}=${f.arg ?? ''}\``;
  if (f.type === 'boolean' && f.default === true) return `\`--${name}\` / \`--no-${name}\``;
  const spelled = (f.alias ? `-${f.alias}, ` : '') + `--${name}` + (f.arg ? ` ${f.arg}` : '');
  return `\`${spelled}\``;
}

export function renderTable(table: FlagTable): string {
  const rows = table.keys.map((key) => {
    const f = table.role.flags[key];
    if (!f) throw new Error(`flag table ${table.id}: ${table.role.title} has no flag ${key}`);
    const shown = defaultText(f, (text) => `\`${text}\``) ?? '–';
    return `| ${cell(flagCell(key, f))} | ${cell(shown)} | ${cell(meaning(f, true))} |`;
  });
  return [`| flag | ${table.defaultHeader ?? 'default'} | meaning |`, '|---|---|---|', ...rows].join('\n');
}

const BLOCK = /<!-- flags:([a-z-]+) -->\n[\s\S]*?<!-- \/flags -->/g;

/** The ids of the tables README.md holds, in order. */
export function tablesIn(readme: string): string[] {
  return [...readme.matchAll(BLOCK)].map((m) => m[1]);
}

/** README.md with every table block rewritten from the flags; throws when a block is missing or unknown. */
export function withFlagTables(readme: string): string {
  const found = tablesIn(readme);
  for (const table of README_TABLES) {
    if (!found.includes(table.id)) throw new Error(`README.md has no <!-- flags:${table.id} --> … <!-- /flags --> block`);
  }
  return readme.replace(BLOCK, (_block, id: string) => {
    const table = README_TABLES.find((t) => t.id === id);
    if (!table) throw new Error(`README.md: <!-- flags:${id} --> names no flag table (known: ${README_TABLES.map((t) => t.id).join(', ')})`);
    return `<!-- flags:${id} -->\n${renderTable(table)}\n<!-- /flags -->`;
  });
}
