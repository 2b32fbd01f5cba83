#!/usr/bin/env bash
# install-criu.sh: install real CRIU 4.1.x and 4.2.x side by side in a private prefix.
#
# Why: lazyd is tested against the CRIU versions users actually run (Debian
# trixie ships 4.1.x, sid 4.2.x), and bookworm's own criu 3.17 does not work on
# current kernels. Newer criu packages need a newer libc than bookworm has, and
# upgrading the system libc (or adding trixie/sid to /etc/apt) is not an option.
# So, for each version, this script:
#   1. runs apt with a fully private configuration (own sources list, lists,
#      cache and an empty dpkg status; the system's /etc/apt is never read or
#      written) against Debian's signed archive, verified with the Debian
#      archive keyring;
#   2. downloads criu, libcompel1 and the closure of their library
#      dependencies (including that suite's libc6) and unpacks them with
#      `dpkg -x` into $PREFIX/<version>/root (nothing is "installed");
#   3. copies the criu binary to $PREFIX/<version>/criu with its ELF
#      interpreter and DT_RPATH pointing into that root, so it runs with the
#      suite's own libc and libraries (DT_RPATH, unlike RUNPATH, also applies
#      to the libraries' own dependencies).
#
# Layout (PREFIX defaults to /opt/lazyd-criu, override with LAZYD_CRIU_PREFIX):
#   $PREFIX/4.1.1/{root/,criu,VERSION,debs/}   VERSION = Debian package version
#   $PREFIX/4.1 -> 4.1.1                       slot link by major.minor
#   $PREFIX/bin/criu-4.1.1 -> ../4.1.1/criu
#   $PREFIX/.apt/<suite>/                      private apt state
# A second run finds working binaries and only prints the summary, ending with
# one line per version: "criu 4.1.1: /opt/lazyd-criu/4.1.1/criu".
#
# --with-crit also installs crit, CRIU's image decoder, of the same Debian
# version (python3-pycriu, unpacked into $PREFIX/<version>/crit-root and run
# by $PREFIX/<version>/crit with the system python3 and python3-protobuf).
# Only scripts/record-fixtures.sh needs it (to cross-check the pagemaps it
# records); the tests do not.
#
# Environment:
#   LAZYD_CRIU_PREFIX     install prefix (default /opt/lazyd-criu)
#   LAZYD_DEBIAN_MIRROR   Debian mirror (default http://deb.debian.org/debian)
#   LAZYD_CRIU_FORCE=1    reinstall even if the binaries already work
#
# Needs root (apt, patchelf install). Runs non-interactively (CI).
set -euo pipefail

PREFIX=${LAZYD_CRIU_PREFIX:-/opt/lazyd-criu}
MIRROR=${LAZYD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
FORCE=${LAZYD_CRIU_FORCE:-0}
WITH_CRIT=0
ARCH=amd64
MULTIARCH=x86_64-linux-gnu
SYSTEM_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# Slots: "<major.minor>:<suites to look in, in order of preference>".
SLOTS=(
  "4.1:trixie trixie-updates"
  "4.2:sid forky trixie-backports"
)

log() { printf '[install-criu] %s\n' "$*" >&2; }
die() { printf '[install-criu] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- host tools

ensure_host_tools() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (uses apt-get and writes $PREFIX)"
  [[ $(dpkg --print-architecture) == "$ARCH" ]] || die "only $ARCH hosts are supported"
  local missing=()
  command -v patchelf >/dev/null || missing+=(patchelf)
  if [[ $WITH_CRIT == 1 ]] && ! /usr/bin/python3 -c 'import google.protobuf' 2>/dev/null; then
    missing+=(python3 python3-protobuf)
  fi
  if [[ $MIRROR == https:* && ! -e /etc/ssl/certs/ca-certificates.crt ]]; then
    missing+=(ca-certificates)
  fi
  ((${#missing[@]} == 0)) && return 0
  log "installing host tools with the system apt: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -qy --no-install-recommends "${missing[@]}" </dev/null >&2; then
    apt-get update -q >&2 </dev/null
    apt-get install -qy --no-install-recommends "${missing[@]}" </dev/null >&2
  fi
}

# ---------------------------------------------------------------- private apt

# Usage: setup_private_apt NAME KEYRING SUITE...
# Writes $PREFIX/.apt/NAME/apt.conf; echo its path. The file is passed via
# APT_CONFIG, which apt reads *before* anything in /etc/apt, so pointing
# Dir::Etc::main/parts elsewhere isolates it from the system configuration.
setup_private_apt() {
  local name=$1 keyring=$2 suite
  shift 2
  local d=$PREFIX/.apt/$name
  mkdir -p "$d/parts" "$d/prefs" "$d/state/lists/partial" "$d/cache/archives/partial"
  [[ -e $d/state/status ]] || : >"$d/state/status"
  # apt drops privileges to _apt for downloads; let it write its own dirs.
  if id _apt >/dev/null 2>&1; then
    chown -R _apt "$d/state/lists" "$d/cache/archives"
  fi
  for suite in "$@"; do
    printf 'deb [arch=%s signed-by=%s] %s %s main\n' "$ARCH" "$keyring" "$MIRROR" "$suite"
  done >"$d/sources.list"
  cat >"$d/apt.conf" <<EOF
// Private apt configuration for lazyd's CRIU install ($name).
Dir::Etc::main "/dev/null";
Dir::Etc::parts "$d/parts";
Dir::Etc::sourcelist "$d/sources.list";
Dir::Etc::sourceparts "-";
Dir::Etc::preferences "/dev/null";
Dir::Etc::preferencesparts "$d/prefs";
Dir::Etc::trusted "/dev/null";
Dir::Etc::trustedparts "$d/prefs";
Dir::State "$d/state";
Dir::State::status "$d/state/status";
Dir::Cache "$d/cache";
APT::Architecture "$ARCH";
APT::Architectures { "$ARCH"; };
APT::Get::Assume-Yes "true";
Acquire::Languages "none";
Acquire::Retries "3";
// Signatures are always verified (signed-by above). Valid-Until is not:
// the mirror reachable from CI may serve a frozen snapshot of the archive.
Acquire::Check-Valid-Until "false";
EOF
  echo "$d/apt.conf"
}

papt() { APT_CONFIG=$APT_CONF "$@" </dev/null; }

# apt-get update for $suite; falls back to a newer Debian keyring when the
# installed one cannot verify the suite (sid gets signed by new keys first).
update_suite() {
  local suite=$1
  APT_CONF=$(setup_private_apt "$suite" "$SYSTEM_KEYRING" "$suite")
  papt apt-get update -q >&2 && return 0
  log "$suite: cannot be verified with $SYSTEM_KEYRING, trying a newer keyring"
  local newer
  newer=$(newer_keyring) || return 1
  APT_CONF=$(setup_private_apt "$suite" "$newer" "$suite")
  papt apt-get update -q >&2
}

# Fetch the newest debian-archive-keyring of trixie (stable), whose archive is
# verified with the system keyring (a chain of trust from bookworm's keys),
# and echo the path of the keyring it ships.
newer_keyring() {
  local d=$PREFIX/.apt/keyring
  local k=$d/root/usr/share/keyrings/debian-archive-keyring.gpg
  rm -rf "$d" && mkdir -p "$d/deb" || return 1
  id _apt >/dev/null 2>&1 && chown _apt "$d/deb"
  APT_CONF=$(setup_private_apt keyring-src "$SYSTEM_KEYRING" trixie trixie-updates) &&
    papt apt-get update -q >&2 &&
    (cd "$d/deb" && papt apt-get download debian-archive-keyring >&2) &&
    dpkg -x "$d"/deb/debian-archive-keyring_*.deb "$d/root" &&
    [[ -s $k ]] || return 1
  echo "$k"
}

candidate_version() {  # Debian version apt would pick for package $1
  papt apt-cache policy "$1" | awk '/Candidate:/ { print $2 }' | grep -v '(none)' || true
}

upstream_of() {  # 1:4.2.1-1+b1 -> 4.2.1
  local v=${1#*:}
  echo "${v%-*}"
}

# Library closure of the given packages: follows Depends/Pre-Depends, keeping
# only library packages (lib*, zlib1g: the shared objects the binary loads;
# check_libraries verifies nothing is missing), sorted.
library_closure() {
  local -A seen=()
  local queue=("$@") pkg dep
  while ((${#queue[@]})); do
    pkg=${queue[0]}
    queue=("${queue[@]:1}")
    [[ -n ${seen[$pkg]:-} ]] && continue
    seen[$pkg]=1
    while read -r dep; do
      [[ ($dep == lib* || $dep == zlib1g) && $dep != *-dev ]] || continue
      [[ -z ${seen[$dep]:-} ]] && queue+=("$dep")
    done < <(papt apt-cache depends --no-recommends --no-suggests --no-conflicts \
               --no-breaks --no-replaces --no-enhances "$pkg" |
             awk '$1 ~ /^\|?(Pre)?Depends:$/ && $2 !~ /^</ { sub(/:.*/, "", $2); print $2 }')
  done
  printf '%s\n' "${!seen[@]}" | sort
}

# ---------------------------------------------------------------- unpack + patch

# Packages' symlinks are meant for /, so an absolute one would escape the
# root; re-point it (relatively, the root gets renamed) at the same path
# inside the root.
fix_absolute_symlinks() {
  local root=$1 link target
  while IFS= read -r -d '' link; do
    target=$(realpath -m --relative-to="${link%/*}" "$root$(readlink "$link")")
    ln -sfn "$target" "$link"
  done < <(find "$root" -type l -lname '/*' -print0)
}

find_interpreter() {
  local root=$1 f
  for f in usr/lib/$MULTIARCH/ld-linux-x86-64.so.2 lib/$MULTIARCH/ld-linux-x86-64.so.2 \
           usr/lib64/ld-linux-x86-64.so.2 lib64/ld-linux-x86-64.so.2; do
    [[ -e $root/$f ]] && { readlink -f "$root/$f"; return 0; }
  done
  die "no ld-linux-x86-64.so.2 in $root"
}

library_path() {  # colon-separated lib dirs present in the root
  local root=$1 d out=()
  for d in usr/lib/$MULTIARCH lib/$MULTIARCH usr/lib lib; do
    [[ -d $root/$d ]] && out+=("$root/$d")
  done
  (IFS=:; echo "${out[*]}")
}

patch_binary() {
  local vdir=$1 root=$1/root
  local src=$root/usr/sbin/criu
  [[ -x $src ]] || die "criu binary missing from $root"
  cp "$src" "$vdir/criu.new"
  patchelf --set-interpreter "$(find_interpreter "$root")" "$vdir/criu.new"
  patchelf --force-rpath --set-rpath "$(library_path "$root")" "$vdir/criu.new"
  chmod 0755 "$vdir/criu.new"
  mv -f "$vdir/criu.new" "$vdir/criu"
}

# Every library the binary loads must come from the private root: a library
# missing there would otherwise be picked silently from the system.
check_libraries() {
  local vdir=$1 bad
  bad=$(LD_TRACE_LOADED_OBJECTS=1 "$vdir/criu" </dev/null |
        awk -v root="$vdir/root/" '
          /=> not found/           { print; next }
          /linux-vdso/             { next }
          {
            p = ($2 == "=>") ? $3 : $1
            if (index(p, root) != 1) print
          }')
  [[ -z $bad ]] || die "$vdir/criu loads libraries from outside its root:"$'\n'"$bad"
}

binary_version() {  # prints the upstream version `criu --version` reports
  "$1" --version 2>/dev/null </dev/null | awk '/^Version:/ { print $2; exit }'
}

# ---------------------------------------------------------------- per slot

# Existing, working install for slot $1? Echo its version directory.
installed_slot() {
  local slot=$1 vdir ver
  vdir=$(readlink -f "$PREFIX/$slot" 2>/dev/null) || return 1
  [[ -x $vdir/criu && -s $vdir/VERSION ]] || return 1
  ver=$(binary_version "$vdir/criu") || return 1
  [[ $ver == "$slot".* && $ver == "$(upstream_of "$(cat "$vdir/VERSION")")" ]] || return 1
  echo "$vdir"
}

install_slot() {
  local slot=$1 suites=$2 suite version="" found=()
  for suite in $suites; do
    update_suite "$suite" || { found+=("$suite: apt-get update failed"); continue; }
    version=$(candidate_version criu)
    found+=("$suite: criu ${version:-<none>}")
    [[ -n $version && $(upstream_of "$version") == "$slot".* ]] && break
    version=""
  done
  if [[ -z $version ]]; then
    die "no CRIU $slot.x found for slot $slot; suites checked:"$'\n'"$(printf '  %s\n' "${found[@]}")"
  fi
  local upstream vdir
  upstream=$(upstream_of "$version")
  vdir=$PREFIX/$upstream
  log "slot $slot: Debian $suite has criu $version"

  local pkgs
  mapfile -t pkgs < <(library_closure criu libcompel1)
  log "downloading ${#pkgs[@]} packages: ${pkgs[*]}"
  rm -rf "$vdir/debs" "$vdir/root.new"
  mkdir -p "$vdir/debs"
  id _apt >/dev/null 2>&1 && chown _apt "$vdir/debs"
  (cd "$vdir/debs" && papt apt-get download -q "${pkgs[@]}" >&2)
  chown -R 0:0 "$vdir/debs"

  local deb
  for deb in "$vdir"/debs/*.deb; do
    dpkg -x "$deb" "$vdir/root.new"
  done
  fix_absolute_symlinks "$vdir/root.new"
  rm -rf "$vdir/root"
  mv "$vdir/root.new" "$vdir/root"

  patch_binary "$vdir"
  check_libraries "$vdir"
  local got
  got=$(binary_version "$vdir/criu")
  [[ $got == "$upstream" ]] || die "$vdir/criu --version reports '${got:-nothing}', expected $upstream"

  echo "$version" >"$vdir/VERSION"
  ln -sfn "$upstream" "$PREFIX/$slot"
  mkdir -p "$PREFIX/bin"
  ln -sfn "../$upstream/criu" "$PREFIX/bin/criu-$upstream"
  log "slot $slot: installed criu $version in $vdir"
}

# ---------------------------------------------------------------- crit

# crit is pure Python: the slot's python3-pycriu, unpacked, runs with the
# system interpreter (/usr/bin/python3, not whatever python3 comes first on
# PATH) and the system's python3-protobuf.
crit_works() { [[ -x $1/crit ]] && "$1/crit" --help >/dev/null 2>&1 </dev/null; }

install_crit() {
  local slot=$1 suites=$2 vdir=$3 want suite version=""
  want=$(cat "$vdir/VERSION")
  for suite in $suites; do
    update_suite "$suite" || continue
    version=$(candidate_version python3-pycriu)
    [[ $version == "$want" ]] && break
    version=""
  done
  [[ -n $version ]] || die "slot $slot: no python3-pycriu $want (the version of its criu) in the suites $suites"
  rm -rf "$vdir/crit-debs" "$vdir/crit-root"
  mkdir -p "$vdir/crit-debs"
  id _apt >/dev/null 2>&1 && chown _apt "$vdir/crit-debs"
  (cd "$vdir/crit-debs" && papt apt-get download -q "python3-pycriu=$version" >&2)
  chown -R 0:0 "$vdir/crit-debs"
  dpkg -x "$vdir"/crit-debs/python3-pycriu_*.deb "$vdir/crit-root"
  [[ -f $vdir/crit-root/usr/bin/crit ]] || die "python3-pycriu $version has no usr/bin/crit"
  printf '%s\n' '#!/bin/sh' \
    "# crit of CRIU $version (python3-pycriu, unpacked by scripts/install-criu.sh --with-crit)." \
    "PYTHONPATH=$vdir/crit-root/usr/lib/python3/dist-packages exec /usr/bin/python3 $vdir/crit-root/usr/bin/crit \"\$@\"" \
    >"$vdir/crit.new"
  chmod 0755 "$vdir/crit.new"
  mv -f "$vdir/crit.new" "$vdir/crit"
  crit_works "$vdir" || die "$vdir/crit does not run: $("$vdir/crit" --help 2>&1 </dev/null | tail -1)"
  log "slot $slot: installed crit $version in $vdir"
}

# ---------------------------------------------------------------- main

runtime_notes() {
  local pipe_max
  pipe_max=$(cat /proc/sys/fs/pipe-max-size 2>/dev/null || echo 0)
  if ((pipe_max < 4194304)); then
    log "note: fs.pipe-max-size is $pipe_max; CRIU dumps need 4194304" \
        "(sysctl -w fs.pipe-max-size=4194304)"
  fi
}

main() {
  local arg
  for arg in "$@"; do
    case $arg in
      --with-crit) WITH_CRIT=1 ;;
      *) die "unknown argument '$arg' (the only one is --with-crit)" ;;
    esac
  done
  mkdir -p "$PREFIX"
  exec 9>"$PREFIX/.lock"
  flock 9

  local entry slot vdir summary=()
  for entry in "${SLOTS[@]}"; do
    slot=${entry%%:*}
    if [[ $FORCE != 1 ]] && vdir=$(installed_slot "$slot"); then
      log "slot $slot: criu $(cat "$vdir/VERSION") already installed in $vdir"
    else
      ensure_host_tools
      install_slot "$slot" "${entry#*:}"
      vdir=$(installed_slot "$slot") || die "slot $slot: install did not produce a working criu"
    fi
    summary+=("criu ${vdir##*/}: $PREFIX/${vdir##*/}/criu")
    if [[ $WITH_CRIT == 1 ]]; then
      if ! crit_works "$vdir"; then
        ensure_host_tools
        install_crit "$slot" "${entry#*:}" "$vdir"
      fi
      summary+=("crit ${vdir##*/}: $vdir/crit")
    fi
  done
  rm -rf "$PREFIX/.apt"  # package lists are large and only needed to install
  runtime_notes
  printf '%s\n' "${summary[@]}"
}

main "$@"
