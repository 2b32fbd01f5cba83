#!/usr/bin/env bash
# Coverage-guided fuzzing, bounded in time (not part of `npm test`):
#   wire_fuzz     native/fuzz/wire_fuzz.cc      the page_server_iov header codec and autodetection (libFuzzer)
#   session_fuzz  native/fuzz/session_fuzz.cc   LazySession / UploadSession fed a client stream (libFuzzer)
#   page_client_fuzz  native/fuzz/page_client_fuzz.cc  the lazy-pages daemon's PageClient reading a hostile page
#                                               server's replies (libFuzzer)
#   handshake_fuzz    native/fuzz/handshake_fuzz.cc    a hostile restore hand-over on lazy-pages.socket (libFuzzer)
#   images        test/fuzz/images.fuzz.ts      the TypeScript CRIU image parsers (mutation fuzzing, run-images.ts;
#                                               Jazzer.js cannot run on bookworm's glibc — see run-images.ts)
# The native targets run under ASan + UBSan. Seeds come from the real recorded CRIU streams and images in
# test/fixtures. Usage: scripts/fuzz.sh [seconds per target, default 300] [target ...]
# Prints each target's executions and coverage; exits non-zero if any target finds a crash, a hang or a
# broken invariant (the reproducer is left in fuzz-out/<target>/).
set -uo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-300}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(wire_fuzz session_fuzz page_client_fuzz handshake_fuzz images)
FIXTURES="$PWD/test/fixtures"
[ -d "$FIXTURES/criu-4.1.1" ] && [ -d "$FIXTURES/criu-4.2.1" ] ||
  { echo "fuzz.sh: $FIXTURES/criu-4.1.1 or criu-4.2.1 is missing (regenerate with scripts/record-fixtures.sh)" >&2; exit 2; }
OUT="$PWD/fuzz-out"
mkdir -p "$OUT"

# clang with libFuzzer (Debian bookworm: clang 14 + libclang-rt-14-dev). Only this script needs them, so they
# are installed here rather than by scripts/setup.sh (the default suite and CI do not fuzz).
if ! command -v clang++ >/dev/null || ! echo 'extern "C" int LLVMFuzzerTestOneInput(const char*, unsigned long){return 0;}' |
    clang++ -x c++ -fsanitize=fuzzer - -o /dev/null 2>/dev/null; then
  echo "fuzz.sh: installing clang and libFuzzer (apt: clang libclang-rt-14-dev)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends clang libclang-rt-14-dev >/dev/null ||
    { echo "fuzz.sh: cannot install clang/libFuzzer" >&2; exit 2; }
fi

build_native() {
  local target="$1"
  clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -Inative/core $(pkg-config --cflags gnutls) $(find native/core -name '*.cc' | sort) "native/fuzz/$target.cc" \
    -o "$OUT/$target.bin" \
    $(pkg-config --libs gnutls) -lpthread
}

seed_native() {
  local target="$1" corpus="$OUT/$target/corpus"
  mkdir -p "$corpus"
  for v in 4.1.1 4.2.1; do
    cp -f "$FIXTURES/criu-$v/remote-lazy/client-to-server.bin" "$corpus/seed-lazy-$v"
    # The upload streams are 1.1 MiB; their first 64 KiB hold OPEN2, the first ADD_Fs and payload.
    head -c 65536 "$FIXTURES/criu-$v/upload/client-to-server.bin" >"$corpus/seed-upload-$v"
  done
  if [ "$target" = session_fuzz ]; then
    # Requests that reach the fuzz checkpoint's own pages (session_fuzz.cc): GETs in both layouts, then CLOSE.
    python3 - "$corpus" <<'EOF'
import struct, sys, os
d = sys.argv[1]
def g24(nr, va, pid): return struct.pack('<IIQQ', 7, nr, va, pid)
def g32(nr, va, pid): return struct.pack('<IIQQQ', 7, 0xdeadbeef, nr, va, pid)
close24 = struct.pack('<IIQQ', 0x1023, 0, 0, 0)
close32 = close24 + bytes(8)
open(os.path.join(d, 'seed-get24'), 'wb').write(g24(4, 0x7f0000000000, 1) + g24(2, 0x7f0000300000, 1) + g24(16, 0x7e0000000000, 3) + close24)
open(os.path.join(d, 'seed-get32'), 'wb').write(g32(4, 0x7f0000000000, 1) + g32(1, 0x7e0000001000, 3) + close32)
up = struct.pack('<IIQQ', 4, 0, 0, (5 << 8) | 1) + struct.pack('<IIQQ', (6 << 16) | 6, 2, 0x7f0000000000, (5 << 8) | 1) + bytes(8192) + close24
open(os.path.join(d, 'seed-upload24'), 'wb').write(up)
EOF
  fi
}

seed_page_client() {
  local corpus="$OUT/page_client_fuzz/corpus"
  mkdir -p "$corpus"
  # A settings byte (bit 0: the 32-byte layout; bit 1: end with CLOSE; bit 4: HELLO first), then the replies real page servers sent:
  # criu dump --lazy-pages's recorded stream (first 256 KiB: its first replies whole), for both CRIU versions.
  printf '\x02' >"$corpus/seed-4.1.1"; head -c 262144 "$FIXTURES/criu-4.1.1/remote-lazy/server-to-client.bin" >>"$corpus/seed-4.1.1"
  printf '\x03' >"$corpus/seed-4.2.1"; head -c 262144 "$FIXTURES/criu-4.2.1/remote-lazy/server-to-client.bin" >>"$corpus/seed-4.2.1"
  python3 - "$corpus" <<'PY'
import struct, sys, os
d = sys.argv[1]
def r24(nr, va, pid, fill): return struct.pack('<IIQQ', (4 << 16) | 6, nr, va, pid) + bytes([fill]) * (nr * 4096)
def r32(nr, va, pid, fill): return struct.pack('<IIQQQ', (4 << 16) | 6, 0, nr, va, pid) + bytes([fill]) * (nr * 4096)
open(os.path.join(d, 'seed-two24'), 'wb').write(b'\x02' + r24(2, 0x7f0000000000, 1, 1) + r24(1, 0x7f0000010000, 1, 2) + bytes(4))
open(os.path.join(d, 'seed-two32'), 'wb').write(b'\x07' + r32(3, 0x7f0000000000, 9, 3) + r32(1, 0x7e0000000000, 9, 4) + bytes(4))
# Bit 4: the session opens with the lazyd link's HELLO; the stream starts with its reply (docs/protocol.md §7):
# a grant (checkpoint 2) followed by replies, and a refusal (-EACCES).
def hello(status, cp): return struct.pack('<IIQiIQ', 0x4c5a4b48, 1, 1, status, 0, cp)
open(os.path.join(d, 'seed-hello-grant'), 'wb').write(b'\x12' + hello(0, 2) + r24(2, 0x7f0000000000, 1, 5) + bytes(4))
open(os.path.join(d, 'seed-hello-refused'), 'wb').write(b'\x13' + hello(-13, 0) + r32(1, 0x7f0000000000, 1, 6))
PY
}

seed_handshake() {
  local corpus="$OUT/handshake_fuzz/corpus"
  mkdir -p "$corpus"
  # First byte: the expected task count (mod 9); then steps (native/fuzz/handshake_fuzz.cc): 1 = a pid and its
  # fd, 7 = RSTF, 3 = EOF, 0x0c = 4 raw bytes (here a zombie's -pid), 0x0a = a data byte with 2 fds.
  printf '\x02\x01\x2a\x00\x01\x2b\x00\x07\x03' >"$corpus/seed-two-tasks"
  printf '\x02\x01\x2a\x00\x0c\xf0\xff\xff\xff\x07\x03' >"$corpus/seed-task-and-zombie"
  printf '\x01\x0c\x05\x00\x00\x00\x0a\x07\x03' >"$corpus/seed-two-fds"
  printf '\x03\x01\x2a\x00\x07\x03' >"$corpus/seed-early-rstf"
}

seed_images() {
  local corpus="$OUT/images/corpus"
  mkdir -p "$corpus"
  # The first byte picks the parser (test/fuzz/images.fuzz.ts): 0 pagemap, 1 pstree, 2 mm, 3 core, 4 inventory.
  for v in 4.1.1 4.2.1; do
    local dir="$FIXTURES/criu-$v/plain-dump/images"
    { printf '\x00'; cat "$dir/pagemap-1.img"; } >"$corpus/pagemap-$v"
    { printf '\x01'; cat "$dir/pstree.img"; } >"$corpus/pstree-$v"
    { printf '\x02'; cat "$dir/mm-1.img"; } >"$corpus/mm-$v"
    { printf '\x03'; cat "$dir/core-1.img"; } >"$corpus/core-$v"
    { printf '\x04'; cat "$dir/inventory.img"; } >"$corpus/inventory-$v"
    { printf '\x00'; cat "$FIXTURES/criu-$v/upload/page-server-images/pagemap-1.img"; } >"$corpus/pagemap-upload-$v"
  done
}

failed=0
summary=()
for target in "${TARGETS[@]}"; do
  log="$OUT/$target.log"
  mkdir -p "$OUT/$target"
  echo "== $target: ${SECONDS_PER_TARGET}s"
  case "$target" in
    wire_fuzz | session_fuzz | page_client_fuzz | handshake_fuzz)
      build_native "$target" || { echo "fuzz.sh: building $target failed" >&2; exit 2; }
      case "$target" in
        page_client_fuzz) seed_page_client ;;
        handshake_fuzz) seed_handshake ;;
        *) seed_native "$target" ;;
      esac
      max_len=65536
      [ "$target" = page_client_fuzz ] && max_len=300000  # a few replies of up to 64 pages each
      (cd "$OUT/$target" && "$OUT/$target.bin" -max_total_time="$SECONDS_PER_TARGET" -max_len="$max_len" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 corpus) >"$log" 2>&1
      rc=$?
      execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
      cov=$(grep -E '^#[0-9]+.*cov:' "$log" | tail -1 | grep -o 'cov: [0-9]*' | grep -o '[0-9]*')
      feat=$(grep -E '^#[0-9]+.*ft:' "$log" | tail -1 | grep -o 'ft: [0-9]*' | grep -o '[0-9]*')
      ;;
    images)
      npx tsc -p tsconfig.json >/dev/null || { echo "fuzz.sh: tsc failed" >&2; exit 2; }
      seed_images
      node --max-old-space-size=1024 dist/test/fuzz/run-images.js "$SECONDS_PER_TARGET" "$OUT/images/corpus" "$OUT/images" >"$log" 2>&1
      rc=$?
      execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
      cov="n/a (not coverage-guided)"
      feat="n/a"
      ;;
    *)
      echo "fuzz.sh: unknown target $target (wire_fuzz, session_fuzz, page_client_fuzz, handshake_fuzz, images)" >&2
      exit 2
      ;;
  esac
  corpus_n=$(ls "$OUT/$target/corpus" | wc -l)
  if [ "$rc" -ne 0 ] || grep -qE '^==[0-9]+==ERROR|SUMMARY: .*Sanitizer|deadly signal|run-images: uncaught|crash-|timeout-|oom-' "$log"; then
    verdict="FAILED (exit $rc; see $log and $OUT/$target/crash-*)"
    failed=1
  else
    verdict="ok"
  fi
  line="$target: ${execs:-?} executions in ${SECONDS_PER_TARGET}s, coverage ${cov:-?} edges / ${feat:-?} features, corpus $corpus_n inputs — $verdict"
  echo "$line"
  summary+=("$line")
done
echo "== summary"
printf '%s\n' "${summary[@]}"
exit $failed
