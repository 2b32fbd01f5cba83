#!/usr/bin/env -S -u NODE_EXTRA_CA_CERTS node
// The shebang starts node without NODE_EXTRA_CA_CERTS: node reads that CA bundle at start-up (~50-100 ms here),
// and `lazyd lazy-pages` must be ready quickly (a restore waits for it, inside the downtime). Dropping it is
// safe: lazyd never uses node's TLS (its --tls is GnuTLS in the native addon, with criu's own CA flags), and the
// only programs it starts are itself (-d) and criu (`lazyd check`), which do not read it. `node bin/lazyd.js`
// keeps the variable, and the cost.
// lazyd's entry point: the compiled control plane lives in dist/ (built by `npm install` / `npm run build`).
import { main } from '../dist/src/cli/index.js';

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    process.stderr.write(`lazyd: ${error?.stack ?? error}\n`);
    process.exit(1);
  },
);
