// The repository needs nothing beside it: no file may point at the folder that used to sit next to the checkout
// or at the test vectors that lived there (the two strings of FORBIDDEN). The vectors are recorded into
// test/fixtures by scripts/record-fixtures.sh. Only documents that tell the project's history may name the old
// place.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { repoRoot } from '../../src/paths.js';

// Spelled in pieces, so that this file does not match itself.
const FORBIDDEN = [['..', 'shared'].join('/'), ['shared', 'testdata'].join('/')];

/** Documents about the project's history, which may say where things used to be. */
const HISTORY_DOCS = [/^CHANGELOG(\.md)?$/, /^docs\/history\//];

/** Without git (an unpacked archive): what is not the repository's own content. */
const NOT_CONTENT = new Set(['.git', 'node_modules', 'build', 'dist', 'fuzz-out']);

/** The repository's files: git's tracked and not-ignored ones, or, without git, the tree minus NOT_CONTENT. */
function repositoryFiles(root: string): string[] {
  try {
    const listed = execFileSync('git', ['-C', root, 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    return listed.split('\0').filter((f) => f && fs.existsSync(path.join(root, f)) && fs.statSync(path.join(root, f)).isFile());
  } catch {
    return walk(root);
  }
}

function walk(dir: string, rel = ''): string[] {
  const out: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const relPath = rel ? `${rel}/${entry.name}` : entry.name;
    if (!rel && (NOT_CONTENT.has(entry.name) || entry.name.startsWith('build-'))) continue;
    if (entry.isDirectory()) out.push(...walk(path.join(dir, entry.name), relPath));
    else if (entry.isFile()) out.push(relPath);
  }
  return out;
}

test('no file of the repository refers to a folder beside the checkout', () => {
  const root = repoRoot();
  const files = repositoryFiles(root);
  assert.ok(files.includes('package.json') && files.some((f) => f.startsWith('test/fixtures/criu-')), `not the repository: ${root}`);
  const offenders: string[] = [];
  for (const file of files) {
    if (HISTORY_DOCS.some((re) => re.test(file))) continue;
    const text = fs.readFileSync(path.join(root, file)).toString('latin1');
    for (const needle of FORBIDDEN) {
      let at = text.indexOf(needle);
      while (at >= 0) {
        offenders.push(`${file}:${text.slice(0, at).split('\n').length}: ${needle}`);
        at = text.indexOf(needle, at + 1);
      }
    }
  }
  assert.deepEqual(offenders, [], 'files that reach outside the repository (the test vectors are in test/fixtures)');
});
