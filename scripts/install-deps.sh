#!/usr/bin/env bash
# Installs what building and testing Hull needs on Debian. Idempotent: apt
# runs only when a package is missing.
set -euo pipefail

packages=(
  busybox-static   # the test containers' root filesystem
  libseccomp-dev   # libcontainer's seccomp support (static library included)
  pkg-config
  gcc
  util-linux       # unshare, for the agent's test mode
  file
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "==> installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

for tool in cargo rustc cargo-clippy rustfmt; do
  command -v "$tool" >/dev/null || {
    echo "error: $tool is missing; Hull needs a Rust toolchain with clippy and rustfmt" >&2
    exit 1
  }
done
