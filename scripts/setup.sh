#!/usr/bin/env bash
# One-time set-up on a fresh Debian machine, as root: build tools, CRIU 4.1.1 and 4.2.1 in a private prefix
# (scripts/install-criu.sh), and the npm packages (which build the native addon and the TypeScript).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

need=()
# script (a pty), setpriv (a dropped capability) and systemd-analyze (the unit files: `verify`, and `security
# --offline=true` for their exposure scores; both work without systemd running) are for the ops tests.
for tool in cmake g++ gcc make python3 ip patchelf script setpriv systemd-analyze pkg-config openssl iptables; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
# GnuTLS headers for --tls (the native core links libgnutls, as criu does); openssl makes the tests' certificates.
pkg-config --exists gnutls 2>/dev/null || need+=(libgnutls28-dev)
# The benchmark's network delay (bench/netdelay) needs libnetfilter_queue (the kernel here has no sch_netem).
[ -f /usr/include/libnetfilter_queue/libnetfilter_queue.h ] || need+=(libnetfilter-queue-dev)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends cmake g++ gcc make python3 iproute2 patchelf ca-certificates \
    bsdutils util-linux systemd pkg-config libgnutls28-dev openssl iptables libnetfilter-queue-dev >/dev/null
fi

bash scripts/install-criu.sh

if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
