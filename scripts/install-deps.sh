#!/usr/bin/env bash
# Installs what building and testing Hull needs on Debian. Idempotent: apt
# runs only when a package is missing.
set -euo pipefail

packages=(
  busybox-static   # the test containers' root filesystem
  libseccomp-dev   # libcontainer's seccomp support (static library included)
  pkg-config
  gcc
  util-linux       # unshare, for the agent's test mode; nsenter
  file
  qemu-system-x86  # the QEMU backend
  libcap-ng-dev    # building virtiofsd
  linux-source-6.1 # the guest kernel, and what building it needs:
  flex bison bc libelf-dev libssl-dev cpio xz-utils
  containerd       # the shim's end-to-end tests: a private containerd and its CRI plugin
  runc             # the reference runtime those tests are proven against
  containernetworking-plugins # CNI plugins for the private containerd's pods
  iproute2         # ip and tc: the shim tests' namespaces, the pod network tests
  protobuf-compiler # protoc, for the k8s-cri crate's build script (the CRI client)
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

# virtiofsd and vhost-device-vsock come from crates.io at pinned versions,
# built once into a cache outside the checkout.
tools=${HULL_CACHE:-/var/cache/hull}/tools
install_crate() {
  local crate=$1 version=$2 binary=$3
  if [ -x "$tools/bin/$binary" ] && [ "$(cat "$tools/$binary.version" 2>/dev/null)" = "$version" ]; then
    return
  fi
  echo "==> building $crate $version from crates.io (a few minutes, once)"
  cargo install --quiet --locked --force --root "$tools" "$crate@$version"
  echo "$version" > "$tools/$binary.version"
}
install_crate virtiofsd 1.14.0 virtiofsd
install_crate vhost-device-vsock 0.3.0 vhost-device-vsock
# cargo-fuzz builds and runs the fuzz targets (scripts/fuzz.sh); cargo finds
# it as a subcommand through the link in /usr/local/bin.
install_crate cargo-fuzz 0.13.2 cargo-fuzz
for binary in virtiofsd vhost-device-vsock cargo-fuzz; do
  ln -sf "$tools/bin/$binary" "/usr/local/bin/$binary"
done
