#!/usr/bin/env bash
# Records the CRIU test vectors the tests read (test/fixtures/criu-<version>/) from the real CRIU 4.1.1 and 4.2.1
# that scripts/install-criu.sh installs: a plain dump, a remote lazy restore and a page-server upload per version,
# each checked (see test/fixtures/README.md). Not part of `npm test`; run it as root on the machine the tests run on
# when a new CRIU version or a change of the workload needs new vectors, then commit test/fixtures/.
#   scripts/record-fixtures.sh [--keep] [version ...]     (default: 4.1.1 4.2.1; --keep keeps the scratch dirs and logs)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "record-fixtures.sh: needs root (criu dump and restore); run it as root" >&2
  exit 1
fi
# criu and crit (which cross-checks every recorded pagemap) of both versions; a no-op once installed.
bash scripts/install-criu.sh --with-crit >/dev/null
npm run build --silent
# One recording at a time: the workload runs from the fixed directory /srv/lazyd-fixtures.
mkdir -p /srv
exec 9>/srv/lazyd-fixtures.lock
flock -n 9 || { echo "record-fixtures.sh: another recording holds /srv/lazyd-fixtures.lock" >&2; exit 1; }
node dist/test/fixtures/record/main.js "$@"
