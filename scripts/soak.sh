#!/usr/bin/env bash
# Soak (not part of `npm test`): back-to-back real lazy restores through one long-running lazyd page server,
# `lazyd lazy-pages` and `criu lazy-pages` alternately, every restored workload verified, while hostile clients
# hammer the same port (test/soak/soak.ts). Needs root and CRIU (scripts/install-criu.sh).
# Usage: scripts/soak.sh [minutes, default 5] [--criu 4.1.1|4.2.1] [--mib N]
# Prints restores done, pages verified, errors, and the daemon's RSS and fd count at start and end; exits 1 on
# any failure, any wrongly served byte, fds not back to the start, or RSS growth beyond --rss-bound-mib (32).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-5}"
shift || true
npm run build --silent
exec node dist/test/soak/soak.js --minutes "$MINUTES" "$@"
