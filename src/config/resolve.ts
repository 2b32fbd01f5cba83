// A command's flag values, from what the command line (and the config files) gave: the value given, else the
// flag's environment variable, else its TLS default while TLS is on, else its default; each checked against the
// flag (one line naming the flag and what it accepts). And the native options objects those values make.
import { badValueLine, nativeValue, valueProblem, type Flag, type Flags, type Values } from './flag.js';
import type { LAZY_PAGES, PAGE_SERVER, PAGE_SERVER_DROPIN, Role } from './flags.js';
import type { LazyPagesFlagOptions, PageServerFlagOptions, WireFormatCode } from '../native.js';

function fromText(f: Flag, text: string): unknown {
  if (f.type === 'number') return Number(text);
  if (f.type === 'boolean') return /^(1|true|yes|on)$/i.test(text) ? true : /^(0|false|no|off)$/i.test(text) ? false : text;
  return text;
}

/**
 * The values of a role's flags. `given` holds what yargs parsed, by camelCase key (undefined: not given).
 * Throws an Error whose message is the one line for the first bad value.
 */
export function resolveValues<F extends Flags>(
  role: Role<F>,
  given: Readonly<Record<string, unknown>>,
  env: NodeJS.ProcessEnv = process.env,
): Values<F> {
  const tlsOn = role.tlsOn ? role.tlsOn(given) : given.tls === true;
  const values: Record<string, unknown> = {};
  for (const [key, f] of Object.entries(role.flags)) {
    let value = given[key];
    let from: string | undefined;
    let shown: unknown = value;
    const text = f.env !== undefined ? env[f.env] : undefined;
    if (value === undefined && text !== undefined && text !== '') {
      value = fromText(f, text);
      from = `${f.env}=${text}`;
    }
    if (value === undefined && tlsOn && f.type === 'number') value = f.tlsDefault;
    if (value === undefined) value = f.default;
    if (value !== undefined && valueProblem(f, value) !== undefined) {
      if (shown === undefined) shown = value;
      throw new Error(badValueLine(key, f, shown, from));
    }
    values[key] = value;
  }
  return values as Values<F>;
}

/** Checks values set by hand (not through resolveValues): the one line for the first bad one, or undefined. */
export function valuesProblem(flags: Flags, values: Readonly<Record<string, unknown>>): string | undefined {
  for (const [key, value] of Object.entries(values)) {
    const f = flags[key];
    if (f && value !== undefined && valueProblem(f, value) !== undefined) return badValueLine(key, f, value);
  }
  return undefined;
}

/** The native options a role's flag values set (converted to the native units), and the role's fixed ones. */
export function nativeOptions(role: Role, values: Readonly<Record<string, unknown>>): Record<string, number | boolean | string> {
  const out: Record<string, number | boolean | string> = {};
  for (const [key, f] of Object.entries(role.flags)) {
    const value = nativeValue(f, values[key]);
    if (f.native && value !== undefined) out[f.native.key] = value;
  }
  return { ...out, ...role.fixedNative };
}

/** Every native option key a role's flags (and its fixed options) set. */
export function nativeKeys(role: Role): string[] {
  const keys = Object.values(role.flags).flatMap((f) => (f.native ? [f.native.key] : []));
  return [...new Set([...keys, ...Object.keys(role.fixedNative ?? {})])];
}

/** The role's values when nothing is given (no command line, no environment). */
export function defaultValues<F extends Flags>(role: Role<F>): Values<F> {
  return resolveValues(role, {}, {});
}

/** The native PageServer's flag options for `lazyd --page-server` or the drop-in (keys: test/unit/config.test.ts). */
export function pageServerOptions(
  role: typeof PAGE_SERVER | typeof PAGE_SERVER_DROPIN,
  values: Readonly<Record<string, unknown>>,
): PageServerFlagOptions {
  return nativeOptions(role, values) as unknown as PageServerFlagOptions;
}

/** The native LazyPages' flag options; format 0 (--criu-abi auto) is for the command to decide from the images. */
export function lazyPagesOptions(
  role: typeof LAZY_PAGES,
  values: Readonly<Record<string, unknown>>,
): LazyPagesFlagOptions & { format: WireFormatCode } {
  return nativeOptions(role, values) as unknown as LazyPagesFlagOptions & { format: WireFormatCode };
}
