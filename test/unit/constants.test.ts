// The C++ and TypeScript protocol constants agree: src/protocol/constants.ts against the addon's `constants`
// export (wire.cc kConstants) and, so the check means something before the addon is built, against the text of
// native/core/wire/wire.h (its constexpr lines) and native/core/wire/wire.cc (the kConstants list).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as TS from '../../src/protocol/constants.js';
import { CONSTANTS } from '../../src/protocol/constants.js';
import { loadNative } from '../../src/native.js';

function findRepoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'native'))) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`constants.test: no directory with package.json and native/ above ${dir}`);
    dir = parent;
  }
}

const ROOT = findRepoRoot();
const WIRE_H = path.join(ROOT, 'native', 'core', 'wire', 'wire.h');
const WIRE_CC = path.join(ROOT, 'native', 'core', 'wire', 'wire.cc');
const TS_EXPORTS = TS as unknown as Record<string, unknown>;

// ---- a tiny evaluator for the integer constant expressions in wire.h ----

type Token = { kind: 'num'; value: bigint } | { kind: 'id'; name: string } | { kind: 'op'; op: string };

function tokenize(expr: string): Token[] {
  const tokens: Token[] = [];
  const re = /\s*(?:(0[xX][0-9a-fA-F]+|\d+)[uUlL]*|([A-Za-z_]\w*)|(<<|>>|[|&^+\-*/%()~]))/y;
  let pos = 0;
  while (pos < expr.length) {
    if (/^\s*$/.test(expr.slice(pos))) break;
    re.lastIndex = pos;
    const m = re.exec(expr);
    if (!m) throw new Error(`cannot tokenize "${expr}" at "${expr.slice(pos)}"`);
    if (m[1] !== undefined) tokens.push({ kind: 'num', value: BigInt(m[1]) });
    else if (m[2] !== undefined) tokens.push({ kind: 'id', name: m[2] });
    else tokens.push({ kind: 'op', op: m[3]! });
    pos = re.lastIndex;
  }
  return tokens;
}

const BINARY: Array<Record<string, (a: bigint, b: bigint) => bigint>> = [
  { '|': (a, b) => a | b },
  { '^': (a, b) => a ^ b },
  { '&': (a, b) => a & b },
  { '<<': (a, b) => a << b, '>>': (a, b) => a >> b },
  { '+': (a, b) => a + b, '-': (a, b) => a - b },
  { '*': (a, b) => a * b, '/': (a, b) => a / b, '%': (a, b) => a % b },
];

/** Evaluates a C integer constant expression over already-known names (as unbounded integers). */
function evaluate(expr: string, known: ReadonlyMap<string, bigint>): bigint {
  const tokens = tokenize(expr);
  let i = 0;
  const peekOp = (): string | undefined => {
    const t = tokens[i];
    return t?.kind === 'op' ? t.op : undefined;
  };
  const level = (n: number): bigint => {
    if (n === BINARY.length) return unary();
    let left = level(n + 1);
    for (let op = peekOp(); op !== undefined && op in BINARY[n]!; op = peekOp()) {
      i++;
      left = BINARY[n]![op]!(left, level(n + 1));
    }
    return left;
  };
  const unary = (): bigint => {
    const t = tokens[i++];
    if (!t) throw new Error(`unexpected end of "${expr}"`);
    if (t.kind === 'num') return t.value;
    if (t.kind === 'id') {
      const v = known.get(t.name);
      if (v === undefined) throw new Error(`"${expr}" uses ${t.name}, which is not a constexpr defined above it`);
      return v;
    }
    if (t.op === '(') {
      const v = level(0);
      if (peekOp() !== ')') throw new Error(`missing ) in "${expr}"`);
      i++;
      return v;
    }
    if (t.op === '-') return -unary();
    if (t.op === '~') return ~unary();
    throw new Error(`unexpected "${t.op}" in "${expr}"`);
  };
  const value = level(0);
  if (i !== tokens.length) throw new Error(`trailing tokens in "${expr}"`);
  return value;
}

/** Every `constexpr <integer type> NAME = expr;` of wire.h, in order, evaluated. */
function parseWireH(): Map<string, bigint> {
  assert.ok(fs.existsSync(WIRE_H), `${WIRE_H} is missing`);
  const text = fs.readFileSync(WIRE_H, 'utf8');
  const values = new Map<string, bigint>();
  const re = /^\s*constexpr\s+(?:u?int(?:8|16|32|64)_t|size_t|unsigned|int)\s+([A-Z][A-Z0-9_]*)\s*=\s*([^;]+);/gm;
  for (const m of text.matchAll(re)) {
    const name = m[1]!;
    assert.ok(!values.has(name), `wire.h defines ${name} twice`);
    values.set(name, evaluate(m[2]!, values));
  }
  // Every constexpr line must have been understood: none may hide from the comparison.
  const constexprLines = text.split('\n').filter((l) => /^\s*constexpr\b/.test(l) && !/\(/.test(l.split('=')[0]!));
  assert.equal(values.size, constexprLines.length, `unparsed constexpr lines in wire.h:\n${constexprLines.join('\n')}`);
  return values;
}

/** The names in wire.cc's kConstants initializer, in order. */
function parseKConstants(): string[] {
  assert.ok(fs.existsSync(WIRE_CC), `${WIRE_CC} is missing`);
  const text = fs.readFileSync(WIRE_CC, 'utf8');
  const m = /kConstants\[\]\s*=\s*\{([\s\S]*?)\};/.exec(text);
  assert.ok(m, 'wire.cc: no kConstants[] initializer found');
  const names = [...m[1]!.matchAll(/LAZYD_NAMED\(\s*(\w+)\s*\)/g)].map((x) => x[1]!);
  assert.ok(names.length > 0, 'wire.cc: kConstants lists no LAZYD_NAMED entries');
  return names;
}

const sorted = (names: Iterable<string>) => [...names].sort();

test('evaluator sanity: the C expressions used in wire.h', () => {
  const known = new Map([['A', 4n], ['B', 16n], ['C', 6n]]);
  assert.equal(evaluate('(A << B) | C', known), 0x40006n);
  assert.equal(evaluate('4u * 1024 * 1024', known), 4194304n);
  assert.equal(evaluate('0x1023', known), 0x1023n);
  assert.equal(evaluate('1 + 2 * 3', known), 7n);
  assert.throws(() => evaluate('UNKNOWN + 1', known), /UNKNOWN/);
});

test('CONSTANTS is frozen and holds the exported shared constants', () => {
  assert.ok(Object.isFrozen(CONSTANTS));
  for (const [name, value] of Object.entries(CONSTANTS)) {
    assert.equal(TS_EXPORTS[name], value, `CONSTANTS.${name} equals the export ${name}`);
    assert.ok(
      typeof value === 'bigint' ? value >= 2n ** 53n : Number.isSafeInteger(value) && value >= 0,
      `${name}: a non-negative safe integer, or a bigint of 2^53 and above`,
    );
  }
});

test('wire.cc kConstants and TS CONSTANTS have the same names, and wire.h gives them the same values', () => {
  const header = parseWireH();
  const kNames = parseKConstants();
  assert.equal(new Set(kNames).size, kNames.length, 'kConstants lists a name twice');
  assert.deepEqual(sorted(Object.keys(CONSTANTS)), sorted(kNames));
  for (const name of kNames) {
    assert.ok(header.has(name), `kConstants names ${name}, which is not a constexpr of wire.h`);
    assert.equal(BigInt(CONSTANTS[name]!), header.get(name), `${name}: TypeScript vs wire.h`);
  }
});

test('every constexpr of wire.h has a TypeScript export with the same name and value', () => {
  const header = parseWireH();
  assert.ok(header.size >= 20, `only ${header.size} constexprs parsed from wire.h`);
  assert.equal(header.get('PS_IOV_GET'), 7n);
  assert.equal(header.get('GET_REPLY_CMD'), 0x40006n);
  assert.equal(header.get('PID_MAX_LIMIT'), 4194304n);
  for (const [name, value] of header) {
    const ts = TS_EXPORTS[name];
    assert.ok(typeof ts === 'number' || typeof ts === 'bigint', `src/protocol/constants.ts does not export ${name}`);
    assert.equal(BigInt(ts), value, `${name}: TypeScript ${String(ts)} vs wire.h ${value}`);
  }
});

test('every constexpr of wire.h is listed in wire.cc kConstants', () => {
  const header = parseWireH();
  const listed = new Set(parseKConstants());
  assert.deepEqual([...header.keys()].filter((n) => !listed.has(n)), []);
});

test('the addon exports the same constants as TypeScript (needs build/Release/lazyd_native.node)', () => {
  const native = loadNative(); // throws "native addon not built: ..." until the addon is built
  const constants = native.constants as Record<string, unknown>;
  assert.ok(constants && typeof constants === 'object', 'the addon has no `constants` object');
  assert.deepEqual(sorted(Object.keys(constants)), sorted(Object.keys(CONSTANTS)), 'the same names');
  for (const [name, ts] of Object.entries(CONSTANTS)) {
    const value = constants[name];
    assert.ok(typeof value === 'number' || typeof value === 'bigint', `addon constants.${name} is a ${typeof value}`);
    if (typeof value === 'number') assert.ok(Number.isSafeInteger(value), `addon constants.${name} = ${value} is not exact`);
    assert.equal(BigInt(value), BigInt(ts), `${name}: addon ${String(value)} vs TypeScript ${String(ts)}`);
  }
});

test('TypeScript-only constants: uffd events and features, legacy dst_id types', () => {
  assert.deepEqual(
    [TS.UFFD_EVENT_PAGEFAULT, TS.UFFD_EVENT_FORK, TS.UFFD_EVENT_REMAP, TS.UFFD_EVENT_REMOVE, TS.UFFD_EVENT_UNMAP],
    [0x12, 0x13, 0x14, 0x15, 0x16],
  );
  assert.deepEqual(
    [TS.UFFD_FEATURE_EVENT_FORK, TS.UFFD_FEATURE_EVENT_REMAP, TS.UFFD_FEATURE_EVENT_REMOVE, TS.UFFD_FEATURE_EVENT_UNMAP],
    [2, 4, 8, 64],
  );
  assert.deepEqual(TS.PS_TYPE_LEGACY_PID, [10, 11, 16, 17]);
  assert.deepEqual(TS.PS_TYPE_LEGACY_SHMEM, [27, 28, 29, 32, 33, 34]);
  for (const name of Object.keys(TS_EXPORTS)) {
    if (name.startsWith('UFFD_')) assert.ok(!(name in CONSTANTS), `${name} is TypeScript-only`);
  }
});
