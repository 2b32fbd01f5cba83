// A role's flags (src/config/flags.ts) as yargs options, for parsing and --help. yargs gets no defaults and no
// choices: src/config/resolve.ts applies both (a default may depend on the environment or on --tls, and a bad
// value is one line naming the flag), so --help shows each default as text.
import type { Argv, Options } from 'yargs';
import { defaultText, flagName, meaning, type Flag, type Flags } from '../config/flag.js';

function helpText(f: Flag): string {
  const choices = f.type === 'string' && f.choices ? ` [choices: ${f.choices.join(', ')}]` : '';
  return meaning(f) + choices;
}

/** What yargs is told about one flag. */
export function yargsOption(f: Flag): Options {
  const option: Options = { type: f.type, describe: helpText(f) };
  if (f.alias) option.alias = f.alias;
  const shown = defaultText(f);
  if (shown !== undefined && !f.required) option.defaultDescription = shown.replace(/`|\*\*/g, '');
  if (f.required) option.demandOption = true;
  return option;
}

export function addFlags<T>(y: Argv<T>, flags: Flags): Argv<T> {
  let out = y;
  for (const [key, f] of Object.entries(flags)) out = out.option(flagName(key), yargsOption(f)) as Argv<T>;
  return out;
}
