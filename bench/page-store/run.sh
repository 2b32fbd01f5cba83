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
g++ -std=c++17 -O2 -Wall -Wextra -Wno-unused-parameter -pthread -I"$core" -o "$out" \
  "$root/bench/page-store/bench.cc" "$core/page_store.cc" "$core/pipe_store.cc" "$core/memfd_store.cc" "$core/wire.cc"
exec "$out" "$@"
