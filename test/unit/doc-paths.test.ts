// Every path into the repository that the README, docs/ or a comment names exists: a file moves, its mentions
// move with it (the native re-layout left two dozen pointing at native/core/<file> that had gone to a folder).
// A mention is a token starting with one of the top-level folders below; `{a,b}` and a trailing `.*` expand.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { repoRoot } from '../../src/paths.js';

const TOP = ['src', 'native', 'test', 'bench', 'scripts', 'docs', 'packaging', '.ci'];
const MENTION = new RegExp(`(?<![\\w./-])(?:${TOP.map((t) => t.replace('.', '\\.')).join('|')})/[\\w./{},*@-]*[\\w}*]`, 'g');
/** Files whose mentions are data or history, not pointers: recorded fixtures and their transcripts. */
const SKIP = [/^test\/fixtures\/criu-/, /^bench\/results\//, /^package-lock\.json$/];
/** Placeholders a text uses on purpose (a file name to fill in). */
const PLACEHOLDER = /<|>|\bN\b|XXXX|\.\.\./;

function files(): string[] {
  const listed = execFileSync('git', ['-C', repoRoot(), 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], { encoding: 'utf8' });
  return listed.split('\0').filter((f) => f && !SKIP.some((re) => re.test(f)) && /\.(md|ts|mjs|cc|h|c|sh|txt|json|conf|service)$|^\.ci\//.test(f));
}

function expand(mention: string): string[] {
  const brace = /\{([^{}]*)\}/.exec(mention);
  if (brace) return brace[1].split(',').flatMap((alt) => expand(mention.slice(0, brace.index) + alt + mention.slice(brace.index + brace[0].length)));
  return [mention.replace(/[.,]+$/, '')];
}

function exists(candidate: string): boolean {
  if (candidate.endsWith('.*')) {
    const dir = path.join(repoRoot(), path.dirname(candidate));
    const stem = path.basename(candidate).slice(0, -2);
    return fs.existsSync(dir) && fs.readdirSync(dir).some((f) => f.startsWith(stem + '.'));
  }
  if (candidate.includes('*')) return true; // a glob pattern, not a pointer
  // A mention of a build output (dist/...) is not checked; a .js mention of a test points at its .ts source.
  const rel = candidate.replace(/\.js$/, '.ts');
  if (fs.existsSync(path.join(repoRoot(), candidate)) || fs.existsSync(path.join(repoRoot(), rel))) return true;
  // A module named without its extension (native/core/staging/memfd_store): its .h/.cc/.ts exists.
  return !path.extname(candidate) && exists(`${candidate}.*`);
}

function existsPrefix(candidate: string): boolean {
  const dir = path.join(repoRoot(), path.dirname(candidate));
  return fs.existsSync(dir) && fs.readdirSync(dir).some((f) => f.startsWith(path.basename(candidate)));
}

test('every repository path the docs and comments mention exists', () => {
  const missing: string[] = [];
  for (const file of files()) {
    const text = fs.readFileSync(path.join(repoRoot(), file), 'utf8');
    for (const match of text.matchAll(MENTION)) {
      const mention = match[0];
      if (PLACEHOLDER.test(text.slice(match.index, match.index + mention.length + 3))) continue;
      // A name built in code ('test/fixtures/criu-' + version): some entry of that folder starts with it.
      const prefix = text[match.index + mention.length] === '-';
      for (const candidate of expand(mention)) if (!(prefix ? existsPrefix(`${candidate}-`) : exists(candidate))) missing.push(`${file}: ${candidate}`);
    }
  }
  assert.deepEqual([...new Set(missing)], [], 'paths that do not exist (moved or misspelt)');
});
