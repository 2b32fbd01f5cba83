#!/usr/bin/env bash
# Builds and runs the page-store micro-benchmark (see bench.cc for what is measured).
#   bench/page-store/run.sh            full run (~1 min)
#   bench/page-store/run.sh --quick    a tenth of the iterations
#   bench/page-store/run.sh --gets | --append
#   bench/page-store/run.sh --gets --store memfd    only the GET rows whose store name contains "memfd"
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${TMPDIR:-/tmp}/lazyd-page-store-bench"
core="$root/native/core"
here="$root/bench/page-store"
# The stores and what they need of the core; the pipe store (an upload over PagePipes) lives here, next to the benchmark.
g++ -std=c++17 -O2 -Wall -Wextra -Wno-unused-parameter -pthread -I"$core" -I"$here" -o "$out" \
  "$here/bench.cc" "$here/pipe_store.cc" "$core/staging/page_pipes.cc" "$core/staging/page_store.cc" "$core/staging/memfd_store.cc" "$core/wire/wire.cc"
exec "$out" "$@"
