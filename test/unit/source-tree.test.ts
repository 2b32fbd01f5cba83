// The product's source tree stands alone: no module under src/ imports from test/, bench/ or scripts/ (the test,
// benchmark and demo tooling, which the published package does not hold), nor from anywhere else outside src/;
// the shared protocol constants are defined once in src/, in src/protocol/constants.ts (which constants.test.ts
// checks against the native ones); and the package's `files` list ships the product without that tooling.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { repoRoot } from '../../src/paths.js';
import { CONSTANTS } from '../../src/protocol/constants.js';

const ROOT = repoRoot();
const SRC = path.join(ROOT, 'src');
const TOOLING = ['test', 'bench', 'scripts'];
const CONSTANTS_FILE = path.join(SRC, 'protocol', 'constants.ts');

function tsFilesUnder(dir: string): string[] {
  return fs
    .readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts'))
    .map((e) => path.join(e.parentPath, e.name))
    .sort();
}

const rel = (file: string): string => path.relative(ROOT, file);

/** What is wrong with the relative imports (static, `export … from`, `import()`, `require()`) of one module under src/. */
function importProblems(file: string, text: string): string[] {
  const problems: string[] = [];
  for (const { fileName: specifier } of ts.preProcessFile(text, true, true).importedFiles) {
    if (!specifier.startsWith('.')) continue; // a package or node: builtin
    const target = path.resolve(path.dirname(file), specifier);
    const inside = path.relative(SRC, target);
    if (!inside.startsWith('..') && !path.isAbsolute(inside)) continue;
    const top = path.relative(ROOT, target).split(path.sep)[0];
    const what = TOOLING.includes(top)
      ? `${top}/ is test, benchmark or demo tooling, which the product must not need`
      : 'it is outside src/, so the published package does not hold it';
    problems.push(`${rel(file)} imports '${specifier}' (${rel(target)}): ${what}; move what the product needs into src/`);
  }
  return problems;
}

test('source tree: the import check itself flags an import from test/, bench/ or scripts/ and passes one inside src/', () => {
  const file = path.join(SRC, 'commands', 'example.ts');
  const offending = [
    `import { x } from '../../test/harness/index.js';`,
    `export * from '../../bench/lib/host.js';`,
    `const m = await import('../../scripts/demo.js');`,
    `import '../../package.json';`,
  ].join('\n');
  const found = importProblems(file, offending);
  assert.equal(found.length, 4, found.join('\n'));
  assert.match(found[0]!, /test\/ is test, benchmark or demo tooling/);
  assert.match(found[1]!, /bench\/ is test/);
  assert.match(found[2]!, /scripts\/ is test/);
  assert.match(found[3]!, /outside src\//);
  assert.deepEqual(importProblems(file, `import { log } from '../log.js';\nimport yargs from 'yargs';\nimport fs from 'node:fs';`), []);
});

test('source tree: no module under src/ imports from test/, bench/, scripts/ or anywhere else outside src/', () => {
  const files = tsFilesUnder(SRC);
  assert.ok(files.includes(path.join(SRC, 'cli', 'index.ts')), `expected the product's sources under ${SRC}`);
  const problems = files.flatMap((file) => importProblems(file, fs.readFileSync(file, 'utf8')));
  assert.deepEqual(problems, []);
});

test('source tree: each shared protocol constant is defined once in src/, in src/protocol/constants.ts', () => {
  const names = Object.keys(CONSTANTS);
  assert.ok(names.includes('PE_LAZY') && names.includes('PE_PRESENT') && names.includes('PE_PARENT'));
  const definition = new RegExp(`\\b(?:const|let|var)\\s+(${names.join('|')})\\s*[:=]`, 'g');
  const copies: string[] = [];
  for (const file of tsFilesUnder(SRC)) {
    if (file === CONSTANTS_FILE) continue;
    for (const m of fs.readFileSync(file, 'utf8').matchAll(definition)) {
      copies.push(`${rel(file)} defines ${m[1]}: import it from src/protocol/constants.ts instead`);
    }
  }
  assert.deepEqual(copies, []);
});

test('source tree: the package (npm pack, files list) holds the product and none of the test, benchmark or demo tooling', () => {
  const cli = path.join(ROOT, 'dist', 'src', 'cli', 'index.js');
  assert.ok(fs.existsSync(cli), `${rel(cli)} is missing: run npm run build first`);
  const pack = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(pack.status, 0, `npm pack --dry-run failed: ${pack.stderr}`);
  const packed = new Set((JSON.parse(pack.stdout) as Array<{ files: Array<{ path: string }> }>)[0]!.files.map((f) => f.path));

  const forbidden = [...packed].filter(
    (p) =>
      TOOLING.some((dir) => p.startsWith(`${dir}/`) || p.startsWith(`dist/${dir}/`)) ||
      /^native\/(tests|fuzz)\//.test(p) ||
      p.startsWith('src/') ||
      p.endsWith('.map'),
  );
  assert.deepEqual(forbidden, [], 'packed files that the product does not run');

  // Everything the product runs and builds from on install: the entry point, every compiled module of src/, the
  // native sources (the addon is built at install) with their build files, and the service files.
  const compiled = tsFilesUnder(SRC).map((f) => path.join('dist', 'src', path.relative(SRC, f)).replace(/\.ts$/, '.js'));
  const native = fs
    .readdirSync(path.join(ROOT, 'native'), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => rel(path.join(e.parentPath, e.name)))
    .filter((p) => !/^native\/(tests|fuzz)\//.test(p));
  const needed = ['package.json', 'README.md', 'bin/lazyd.js', 'CMakeLists.txt', 'binding.gyp', 'packaging/lazyd.service', ...compiled, ...native];
  assert.deepEqual(needed.filter((p) => !packed.has(p)), [], 'files the product needs that the package lacks');
});
