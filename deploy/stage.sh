#!/usr/bin/env bash
# Fills a build context for deploy/Dockerfile:
#
#   bash deploy/stage.sh DIR
#
# from what scripts/test.sh builds: the release binaries
# containerd-shim-hull-v2 and hull-vmm ($CARGO_TARGET_DIR/release, build
# them with `cargo build --release -p hull-shim -p hull-vmm`), virtiofsd and
# vhost-device-vsock ($HULL_CACHE/tools/bin, else PATH), the guest image
# ($HULL_CACHE/guest), and deploy/'s own files.

set -euo pipefail

[[ $# -eq 1 ]] || {
  printf 'usage: %s DIR\n' "$0" >&2
  exit 2
}
out=$1
deploy=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${HULL_CACHE:-/var/cache/hull}
target=${CARGO_TARGET_DIR:-$cache/target}

need() {
  [[ -f $1 ]] || {
    printf 'stage.sh: %s is missing\n' "$1" >&2
    exit 1
  }
  printf '%s' "$1"
}

helper() {
  if [[ -x $cache/tools/bin/$1 ]]; then
    printf '%s' "$cache/tools/bin/$1"
  elif command -v "$1" >/dev/null; then
    command -v "$1"
  else
    printf 'stage.sh: %s is neither in %s nor in PATH\n' "$1" "$cache/tools/bin" >&2
    exit 1
  fi
}

mkdir -p "$out/payload/bin" "$out/payload/share" "$out/containerd"
for binary in containerd-shim-hull-v2 hull-vmm; do
  cp -L -- "$(need "$target/release/$binary")" "$out/payload/bin/$binary"
done
for binary in virtiofsd vhost-device-vsock; do
  cp -L -- "$(helper "$binary")" "$out/payload/bin/$binary"
done
for file in vmlinux initramfs.cpio.gz; do
  cp -L -- "$(need "$cache/guest/$file")" "$out/payload/share/$file"
done
cp -- "$deploy/containerd/config-v2.toml" "$deploy/containerd/config-v3.toml" "$out/containerd/"
cp -- "$deploy/config.toml" "$deploy/install.sh" "$deploy/Dockerfile" "$out/"
printf 'stage.sh: %s is ready: docker build -t hull/deploy:VERSION %s\n' "$out" "$out"
