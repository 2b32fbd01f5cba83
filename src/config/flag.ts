// What one command-line flag is: its type, default, unit, validation, help text and the native option it sets.
// The flags themselves are in ./flags.ts; this file holds their shape and the rules every flag follows (how a
// value is checked, how a default reads). Data only: no yargs, no logger, so loading it costs nothing at start-up.

export type Unit = 'seconds' | 'bytes' | 'pages';

/** The native option a flag sets: `key` in the options object of the addon's PageServer or LazyPages. */
export interface NativeTarget {
  key: string;
  /** The native value is the flag's times this (seconds → milliseconds: 1000). */
  scale?: number;
  /** Or the native value is computed from the flag's (e.g. --criu-abi 4.2 → format 32). */
  convert?: (value: string) => number;
}

interface FlagCommon {
  /** --help's text, and the README's unless `doc` says more. */
  describe: string;
  /** The README's text (Markdown), when it says more than --help. */
  doc?: string;
  /** A one-letter alias (-D). */
  alias?: string;
  /** The value's name in the README (F, N, HOST:PORT). */
  arg?: string;
  /** How the default reads when it is not a plain value ("the images dir", "all addresses"). */
  defaultText?: string;
  /** An environment variable read when the flag is not given (before the default). */
  env?: string;
  /** The native option this flag sets. */
  native?: NativeTarget;
  /** Parsed by criu's argv rules (src/cli/criu-argv.ts) before yargs sees the command line (-v4, -vv). */
  criuArgv?: true;
  /** The command cannot run without it. */
  required?: true;
}

export interface NumberFlag extends FlagCommon {
  type: 'number';
  default?: number;
  /** The default while TLS is on (see Role.tlsOn). */
  tlsDefault?: number;
  unit?: Unit;
  min?: number;
  max?: number;
  /** Fractions are accepted (otherwise whole numbers only). */
  fraction?: true;
  /** What 0 means ("never", "no limit"). */
  zero?: string;
}

export interface StringFlag extends FlagCommon {
  type: 'string';
  default?: string;
  choices?: readonly string[];
  /** A check beyond choices: the text after "expected" when the value is bad, or undefined when it is good. */
  check?: (value: string) => string | undefined;
}

export interface BooleanFlag extends FlagCommon {
  type: 'boolean';
  default?: boolean;
}

export type Flag = NumberFlag | StringFlag | BooleanFlag;
export type Flags = Record<string, Flag>;

/** Keeps a flag's literal types (its default, its choices), so that Values<> knows which flags always have a value. */
export function flag<const F extends Flag>(spec: F): F {
  return spec;
}

type ValueOf<F> = F extends { type: 'number' }
  ? F extends { default: number }
    ? number
    : number | undefined
  : F extends { type: 'boolean' }
    ? F extends { default: boolean }
      ? boolean
      : boolean | undefined
    : F extends { choices: readonly (infer C)[] }
      ? F extends { default: string }
        ? C
        : C | undefined
      : F extends { default: string }
        ? string
        : string | undefined;

/** The values of a command's flags once resolved (given, from the environment, or the default), by camelCase key. */
export type Values<F> = { -readonly [K in keyof F]: ValueOf<F[K]> };

/** A flag's long name from its key: maxSessionBytes → max-session-bytes. */
export function flagName(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

/** The flag as a user writes it: --max-inflight, or -D, --images-dir. */
export function spelling(key: string, f: Flag): string {
  return (f.alias ? `-${f.alias}, ` : '') + `--${flagName(key)}`;
}

const KIB = 1024;

export function formatBytes(bytes: number): string {
  for (const [unit, size] of [['GiB', KIB ** 3], ['MiB', KIB ** 2], ['KiB', KIB]] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size} ${unit}`;
  }
  return `${bytes} bytes`;
}

function formatNumber(f: NumberFlag, value: number): string {
  if (value === 0 && f.zero) return `0 (${f.zero})`;
  if (f.unit === 'bytes') return formatBytes(value);
  if (f.unit === 'seconds') return `${value} s`;
  return String(value);
}

/** The default as --help and the README show it ("64 MiB", "30 s", "on"), or undefined when there is none. */
export function defaultText(f: Flag, quote: (text: string) => string = (t) => t): string | undefined {
  if (f.defaultText !== undefined) return f.defaultText;
  if (f.required) return 'required';
  let text: string | undefined;
  if (f.type === 'boolean') text = f.default === undefined ? undefined : f.default ? 'on' : 'off';
  else if (f.type === 'string') text = f.default === undefined ? undefined : quote(f.default);
  else {
    text = f.default === undefined ? undefined : formatNumber(f, f.default);
    if (f.tlsDefault !== undefined) text = `${text ?? '–'}; with --tls ${formatNumber(f, f.tlsDefault)}`;
  }
  return text;
}

/** What the flag does, for --help (plain) or the README (`doc` when it has one); says what 0 means unless 0 is the default. */
export function meaning(f: Flag, readme = false): string {
  const text = readme ? (f.doc ?? f.describe) : f.describe;
  return f.type === 'number' && f.zero && f.default !== 0 ? `${text} (0: ${f.zero})` : text;
}

/** What a flag accepts, as the end of a one-line error ("a whole number >= 1", "one of auto, json, text"). */
export function acceptsText(f: Flag): string {
  if (f.type === 'boolean') return 'true or false';
  if (f.type === 'string') return f.choices ? `one of ${f.choices.join(', ')}` : 'a value';
  const kind = f.fraction ? 'a number' : 'a whole number';
  if (f.min !== undefined && f.max !== undefined) return `${kind} from ${f.min} to ${f.max}`;
  if (f.min !== undefined) return `${kind} >= ${f.min}`;
  if (f.max !== undefined) return `${kind} <= ${f.max}`;
  return kind;
}

/** Why a value is bad for this flag ("expected a whole number >= 1"), or undefined when it is good. */
export function valueProblem(f: Flag, value: unknown): string | undefined {
  if (f.type === 'boolean') return typeof value === 'boolean' ? undefined : `expected ${acceptsText(f)}`;
  if (f.type === 'string') {
    if (typeof value !== 'string') return `expected ${acceptsText(f)}`;
    if (f.choices && !f.choices.includes(value)) return `expected ${acceptsText(f)}`;
    const custom = f.check?.(value);
    return custom === undefined ? undefined : `expected ${custom}`;
  }
  const ok =
    typeof value === 'number' &&
    Number.isFinite(value) &&
    (f.fraction || Number.isInteger(value)) &&
    (f.min === undefined || value >= f.min) &&
    (f.max === undefined || value <= f.max);
  return ok ? undefined : `expected ${acceptsText(f)}`;
}

/** The one line for a bad value: "--max-inflight 0: expected a whole number >= 1". */
export function badValueLine(key: string, f: Flag, value: unknown, from?: string): string {
  const where = from ? `${from} (--${flagName(key)})` : `--${flagName(key)} ${String(value)}`;
  return `${where}: ${valueProblem(f, value)}`;
}

/** The native value of a flag's value: scaled or converted, as its NativeTarget says. */
export function nativeValue(f: Flag, value: unknown): number | boolean | string | undefined {
  if (!f.native || value === undefined) return undefined;
  if (f.native.convert) return f.native.convert(String(value));
  if (f.native.scale !== undefined) return Number(value) * f.native.scale;
  return value as number | boolean | string;
}
