// Each command accepts only its own flags. Before yargs parses the command line, every flag in it is looked up in
// the command's table (src/config/flags.ts): a flag of another command is one line naming the command(s) that take
// it, an unknown flag or command is named as such. The command line here is the one criu's spellings were already
// rewritten in (src/cli/criu-argv.ts: -v4, -Dpath).
import { flagName, type Flag } from '../config/flag.js';
import { ROLES, type Role } from '../config/flags.js';

const DAEMON = ROLES.find((r) => r.command === '$0')!;

/** The role a command line runs: its first word names the command, or it is the daemon form. */
export function roleOf(args: readonly string[]): Role {
  return ROLES.find((r) => r.command !== '$0' && r.command === args[0]) ?? DAEMON;
}

function byName(role: Role, name: string): [string, Flag] | undefined {
  const entry = Object.entries(role.flags).find(([key]) => flagName(key) === name || key === name);
  if (entry) return entry;
  // --no-staging: a switch turned off.
  if (name.startsWith('no-')) {
    const negated = byName(role, name.slice(3));
    if (negated && negated[1].type === 'boolean') return negated;
  }
  return undefined;
}

function byAlias(role: Role, letter: string): [string, Flag] | undefined {
  return Object.entries(role.flags).find(([, f]) => f.alias === letter);
}

function titles(roles: readonly Role[]): string {
  const names = roles.map((r) => r.title);
  return names.length > 1 ? `${names.slice(0, -1).join(', ')} and ${names.at(-1)}` : names[0];
}

function helpOf(role: Role): string {
  return role.command === '$0' ? '`lazyd --help`' : `\`lazyd ${role.command} --help\``;
}

function foreign(spelled: string, role: Role, find: (r: Role) => unknown): string {
  const owners = ROLES.filter((r) => r !== role && find(r));
  if (owners.length) return `${spelled} is a flag of ${titles(owners)}, not of ${role.title}`;
  return `unknown flag ${spelled} for ${role.title}: see ${helpOf(role)}`;
}

function commandList(): string {
  return ROLES.filter((r) => r.command !== '$0').map((r) => r.command).join(', ');
}

/** The one line for the first flag or argument the role does not take, or undefined when every one is its own. */
export function argvProblem(args: readonly string[], role: Role): string | undefined {
  let positionals = 0;
  const positional = (word: string): string | undefined => {
    positionals++;
    if (positionals <= (role.positionals ?? 0)) return undefined;
    if (role.command !== '$0') return `unexpected argument "${word}": ${role.title} takes none there (see ${helpOf(role)})`;
    if (ROLES.some((r) => r.command === word)) return `${word}: the command comes first (lazyd ${word} ...)`;
    return `unknown command "${word}": lazyd's commands are ${commandList()}; the daemon is \`lazyd --page-server\` (see \`lazyd --help\`)`;
  };
  for (let i = role.command === '$0' ? 0 : 1; i < args.length; i++) {
    const arg = args[i];
    if (arg === '--') {
      for (const word of args.slice(i + 1)) {
        const problem = positional(word);
        if (problem) return problem;
      }
      break;
    }
    if (arg.startsWith('--')) {
      const [name, ...inline] = arg.slice(2).split('=');
      if (name === 'help') continue;
      const found = byName(role, name);
      if (!found) return foreign(`--${name}`, role, (r) => byName(r, name));
      const f = found[1];
      if (f.type !== 'boolean' && inline.length === 0) i++;
      else if (f.type === 'boolean' && inline.length === 0 && (args[i + 1] === 'true' || args[i + 1] === 'false')) i++;
      continue;
    }
    if (/^-[A-Za-z]/.test(arg)) {
      for (let c = 1; c < arg.length; c++) {
        const letter = arg[c];
        const found = byAlias(role, letter);
        if (!found) return foreign(`-${letter}`, role, (r) => byAlias(r, letter));
        if (found[1].type !== 'boolean') {
          if (c === arg.length - 1) i++;  // its value is the next word; otherwise the rest of this one
          break;
        }
      }
      continue;
    }
    const problem = positional(arg);
    if (problem) return problem;
  }
  return undefined;
}
