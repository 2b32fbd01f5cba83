#!/usr/bin/env node
// lazyd's entry point: the compiled control plane lives in dist/ (built by `npm install` / `npm run build`).
import { main } from '../dist/src/cli/index.js';

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    process.stderr.write(`lazyd: ${error?.stack ?? error}\n`);
    process.exit(1);
  },
);
