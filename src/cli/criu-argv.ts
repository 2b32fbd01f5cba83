// criu's getopt spellings that yargs does not read the same way, rewritten before yargs sees them:
//   -v, -vv, -vvv  raise the verbosity by one each; -vN and --verbosity=N set it; --verbosity alone raises it
//   -Dpath, -Wpath, -opath (value glued to a short option) become "-D path" etc.
// The verbosity is returned apart, because it is an accumulator, not a plain option.
import { DEFAULT_VERBOSITY, ROLES } from '../config/flags.js';

/** The one-letter flags that take a value (-D, -W, -o), as the tables define them. */
const SHORT_WITH_VALUE = new Set(
  ROLES.flatMap((r) => Object.values(r.flags)).flatMap((f) => (f.alias && f.type !== 'boolean' && !f.criuArgv ? [f.alias] : [])),
);

export interface CriuArgv {
  args: string[];
  verbosity: number;
  /** Whether any -v form was given (the daemon's default level differs from criu's). */
  verbosityGiven: boolean;
}

export function normalizeCriuArgv(argv: readonly string[]): CriuArgv {
  const args: string[] = [];
  let verbosity: number = DEFAULT_VERBOSITY;
  let verbosityGiven = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--') {
      args.push(...argv.slice(i));
      break;
    }
    let match: RegExpMatchArray | null;
    if ((match = arg.match(/^-(v+)$/))) {
      verbosity += match[1].length;
      verbosityGiven = true;
    } else if ((match = arg.match(/^-v(\d+)$/)) || (match = arg.match(/^--verbosity=(\d+)$/))) {
      verbosity = Number(match[1]);
      verbosityGiven = true;
    } else if (arg === '--verbosity') {
      verbosity += 1;
      verbosityGiven = true;
    } else if ((match = arg.match(/^-([A-Za-z])(.+)$/)) && SHORT_WITH_VALUE.has(match[1]) && !match[2].startsWith('=')) {
      args.push(`-${match[1]}`, match[2]);
    } else {
      args.push(arg);
    }
  }
  return { args, verbosity, verbosityGiven };
}
