// The source tree's layering: no import runs from a role's module up into the command line (src/cli/), only
// src/native.ts loads the addon, and nothing untyped crosses the addon boundary.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { repoRoot } from '../../src/paths.js';

const src = path.join(repoRoot(), 'src');
const ROLE_DIRS = ['page-server', 'lazy-pages', 'staging', 'images', 'metrics'];

function tsFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const full = path.join(dir, entry.name);
    return entry.isDirectory() ? tsFiles(full) : entry.name.endsWith('.ts') ? [full] : [];
  });
}

/** Every module a file imports (static, re-exported or dynamic), as written. */
function imports(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  return [...text.matchAll(/(?:\bfrom\s+|\bimport\s*\(\s*|^\s*import\s+)['"]([^'"]+)['"]/gm)].map((m) => m[1]);
}

test("no role module imports from src/cli/", () => {
  const cli = path.join(src, 'cli') + path.sep;
  const upward: string[] = [];
  for (const dir of ROLE_DIRS) {
    const files = tsFiles(path.join(src, dir));
    assert.ok(files.length > 0, `src/${dir} has modules`);
    for (const file of files) {
      for (const specifier of imports(file)) {
        if (!specifier.startsWith('.')) continue;
        const target = path.resolve(path.dirname(file), specifier);
        if (target.startsWith(cli)) upward.push(`${path.relative(repoRoot(), file)} imports ${specifier}`);
      }
    }
  }
  assert.deepEqual(upward, []);
});

test('the import scanner sees the forms used in the tree', () => {
  const sample = path.join(src, 'commands', 'lazy-pages.ts');
  assert.ok(imports(sample).includes('../native.js'));
  assert.ok(imports(path.join(src, 'cli', 'index.ts')).includes('../commands/lazy-pages.js'), 'dynamic import()');
});

test('only src/native.ts loads the addon, and no module that uses it types anything as any', () => {
  const loaders: string[] = [];
  const untyped: string[] = [];
  for (const file of tsFiles(src)) {
    const text = fs.readFileSync(file, 'utf8');
    const rel = path.relative(repoRoot(), file);
    if (rel !== path.join('src', 'native.ts') && /lazyd_native|\.node['"]|createRequire/.test(text)) loaders.push(rel);
    const usesAddon = rel === path.join('src', 'native.ts') || imports(file).some((s) => /(^|\/)native\.js$/.test(s));
    if (usesAddon && /:\s*any\b|\bas any\b|<any>|\bany\[\]/.test(text)) untyped.push(rel);
  }
  assert.deepEqual(loaders, []);
  assert.deepEqual(untyped, []);
});
