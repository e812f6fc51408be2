#!/usr/bin/env bash
# Builds the guest image: a vmlinux from Debian's linux-source-6.1 with
# kernel.config, and an initramfs whose /init is the static hull-agent.
# Each artifact is cached under $HULL_CACHE by the hash of its inputs, so an
# unchanged rebuild is instant. Prints where the artifacts are.
#
#   guest-image/build.sh [AGENT]     (default: build the static agent)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cache=${HULL_CACHE:-/var/cache/hull}
out=${HULL_GUEST_DIR:-$cache/guest}
jobs=$(nproc)

say() { printf '==> %s\n' "$*" >&2; }
sha() { sha256sum | cut -c1-16; }
size() { du -h "$1" | cut -f1; }

if [ $# -ge 1 ]; then
  agent=$1
else
  agent=$(bash "$repo/scripts/build-agent-static.sh" | tail -n 1)
fi
[ -x "$agent" ] || { echo "error: agent binary $agent is missing" >&2; exit 1; }

source_tarball=/usr/src/linux-source-6.1.tar.xz
[ -f "$source_tarball" ] || {
  echo "error: $source_tarball is missing: install linux-source-6.1 (scripts/install-deps.sh)" >&2
  exit 1
}
source_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)

build_kernel() {
  local dir=$1 build=$1.build
  rm -rf "$build"
  mkdir -p "$build"
  say "kernel: unpacking linux-source-6.1 $source_version"
  tar -xf "$source_tarball" -C "$build" --strip-components=1
  cd "$build"
  make -s tinyconfig >/dev/null
  scripts/kconfig/merge_config.sh -m .config "$here/kernel.config" >/dev/null
  make -s olddefconfig
  # merge_config only warns; a requested option that did not survive is an error.
  local missing=()
  while IFS= read -r line; do
    case $line in CONFIG_*=*) grep -qxF "$line" .config || missing+=("$line") ;; esac
  done < "$here/kernel.config"
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "error: kernel.config options not in the final .config: ${missing[*]}" >&2
    exit 1
  fi
  say "kernel: building vmlinux with $jobs jobs (several minutes)"
  local started=$SECONDS
  make -s -j"$jobs" vmlinux
  say "kernel: built in $((SECONDS - started)) s"
  mkdir -p "$dir"
  cp vmlinux "$dir/vmlinux.tmp"
  cp .config "$dir/config"
  make -s kernelrelease > "$dir/release"
  mv "$dir/vmlinux.tmp" "$dir/vmlinux"
  cd /
  rm -rf "$build"
}

build_initramfs() {
  local dir=$1 stage
  stage=$(mktemp -d)
  mkdir -p "$stage"/{dev,proc,sys,run,tmp,etc}
  cp "$agent" "$stage/init"
  chmod 0755 "$stage/init"
  # The kernel opens /dev/console for init before anything is mounted.
  mknod -m 0600 "$stage/dev/console" c 5 1
  mkdir -p "$dir"
  (cd "$stage" && find . -print0 | LC_ALL=C sort -z \
    | cpio --null --create --format=newc --reproducible --quiet) \
    | gzip -9n > "$dir/initramfs.cpio.gz.tmp"
  mv "$dir/initramfs.cpio.gz.tmp" "$dir/initramfs.cpio.gz"
  rm -rf "$stage"
}

# One build at a time; what a build that died left behind goes.
mkdir -p "$cache/kernel"
exec 9>"$cache/guest-image.lock"
flock 9
rm -rf "$cache"/kernel/*.build

started=$SECONDS
kernel_key=$( (cat "$here/kernel.config"; declare -f build_kernel; echo "$source_version") | sha)
kernel_dir=$cache/kernel/$kernel_key
if [ -f "$kernel_dir/vmlinux" ]; then
  say "kernel: cached ($kernel_key)"
else
  build_kernel "$kernel_dir"
fi

initramfs_key=$( (sha256sum < "$agent"; declare -f build_initramfs) | sha)
initramfs_dir=$cache/initramfs/$initramfs_key
if [ -f "$initramfs_dir/initramfs.cpio.gz" ]; then
  say "initramfs: cached ($initramfs_key)"
else
  build_initramfs "$initramfs_dir"
  say "initramfs: built"
fi

mkdir -p "$out"
ln -sfn "$kernel_dir/vmlinux" "$out/vmlinux"
ln -sfn "$initramfs_dir/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
say "guest image ready in $((SECONDS - started)) s: vmlinux $(size "$kernel_dir/vmlinux") ($(cat "$kernel_dir/release")), initramfs $(size "$initramfs_dir/initramfs.cpio.gz")"
echo "$out"
