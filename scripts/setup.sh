#!/usr/bin/env bash
# Prepares a Debian machine to build, mount and test snapfs, then installs the project's npm
# dependencies (which builds native/). Safe to run again: it installs only what is missing.
# Run it from anywhere, as root or as a user who may sudo.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# fuse3 provides fusermount (Debian's fuse3 replaces the old fuse package); libfuse2 provides
# libfuse.so.2, which fuse-native's prebuilt addon links; libfuse3-dev, pkg-config,
# build-essential and python3 let node-gyp build native addons; attr (setfattr) and e2fsprogs
# (mkfs.ext4, for the full-disk test) serve the tests.
packages=(fuse3 libfuse2 libfuse3-dev pkg-config build-essential python3 attr e2fsprogs)

step() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: %s\n' "$*" >&2; exit 1; }

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Dies unless as_root can work; called before the first change to the system.
need_root() {
  [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null || die "not root and no sudo: cannot $*"
}

# Runs a command with its output captured; shows the output only if it fails.
quiet() {
  local log
  log=$(mktemp)
  if "$@" >"$log" 2>&1; then
    rm -f "$log"
  else
    local status=$?
    cat "$log" >&2
    rm -f "$log"
    die "failed (exit $status): $*"
  fi
}

# 1. Debian packages.
command -v dpkg-query >/dev/null && command -v apt-get >/dev/null ||
  die "not a Debian-like system: install by hand: ${packages[*]}"
missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  step "system packages present"
else
  step "installing ${missing[*]}"
  need_root "install ${missing[*]}"
  quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  quiet as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# 2. fusermount, which fuse-native runs to unmount; fuse3 may ship only fusermount3.
if command -v fusermount >/dev/null; then
  step "fusermount present"
else
  fusermount3=$(command -v fusermount3) || die "neither fusermount nor fusermount3 found after installing fuse3"
  need_root "link /usr/local/bin/fusermount"
  as_root ln -sf "$fusermount3" /usr/local/bin/fusermount
  step "linked /usr/local/bin/fusermount -> $fusermount3"
fi

# 3. libfuse.so.2, which fuse-native's prebuilt addon loads. (grep reads all of ldconfig's
#    output: an early exit would fail the pipe under pipefail.)
ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
has_libfuse2() { "$ldconfig" -p | grep 'libfuse\.so\.2 ' >/dev/null; }
if ! has_libfuse2; then
  need_root "refresh the linker cache"
  as_root "$ldconfig"
  has_libfuse2 || die "libfuse.so.2 is not loadable even with libfuse2 installed"
fi
step "libfuse.so.2 loadable"

# 4. The FUSE device.
[ -c /dev/fuse ] ||
  die "/dev/fuse is missing: load the fuse kernel module (modprobe fuse), or give this container the device"
step "/dev/fuse present"

# 5. npm dependencies; npm's install hook builds native/ and its prepare hook compiles src/.
#    npm install, not npm ci: it keeps the versions package-lock.json pins, whereas npm ci
#    refuses a lock file that lacks other platforms' optional packages, as one written against
#    a registry without them does.
command -v npm >/dev/null || die "npm not found: install Node.js 20 or later"
cd "$root"
step "npm install"
quiet npm install --no-audit --no-fund
step "done"
