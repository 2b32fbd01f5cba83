#!/usr/bin/env bash
# lazyd's test suite (`npm test`): the native core's ctest executables, then the unit and end-to-end tests with
# node's test runner. End-to-end tests use real CRIU 4.1.1 and 4.2.1 (scripts/install-criu.sh), real processes
# and userfaultfd, so this needs root; it fails loudly rather than skipping anything.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "npm test: needs root (CRIU dump/restore and userfaultfd); run it as root, e.g. sudo npm test" >&2
  exit 1
fi
if [ ! -f build/Release/lazyd_native.node ]; then
  echo "npm test: the native addon is not built; run npm install (or npm run build:native) first" >&2
  exit 1
fi

npm run build --silent
cmake --build build -j2 >/dev/null
echo "== native core tests (ctest)"
ctest --test-dir build --output-on-failure
echo "== unit and end-to-end tests (node --test)"
node --test --test-concurrency=1 --test-timeout=600000 dist/test/unit/ dist/test/e2e/
