#!/usr/bin/env node
// Rewrites the flag tables of README.md (between <!-- flags:ID --> and <!-- /flags -->) from the flags' table,
// src/config/flags.ts. Run it after changing a flag: `npm run build && node scripts/write-flag-tables.mjs`
// (test/unit/config.test.ts fails until README.md matches).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const compiled = path.join(root, 'dist', 'src', 'config', 'markdown.js');
if (!fs.existsSync(compiled)) {
  process.stderr.write(`write-flag-tables: ${compiled} is missing — run \`npm run build\` first\n`);
  process.exit(1);
}
const { withFlagTables } = await import(compiled);
const file = path.join(root, 'README.md');
const before = fs.readFileSync(file, 'utf8');
const after = withFlagTables(before);
if (after === before) {
  process.stdout.write('README.md: flag tables already up to date\n');
} else {
  fs.writeFileSync(file, after);
  process.stdout.write('README.md: flag tables rewritten\n');
}
