// Loads the native addon (built by cmake-js into build/Release, or by node-gyp into build/Release too).
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { repoRoot } from './paths.js';

const require = createRequire(import.meta.url);

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type NativeAddon = any;

let cached: NativeAddon | undefined;

export function loadNative(): NativeAddon {
  if (cached) return cached;
  const candidate = path.join(repoRoot(), 'build', 'Release', 'lazyd_native.node');
  if (!existsSync(candidate)) {
    throw new Error(`native addon not built: ${candidate} is missing — run \`npm install\` (or \`npm run build:native\`)`);
  }
  cached = require(candidate);
  return cached;
}
