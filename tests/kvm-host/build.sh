#!/usr/bin/env bash
# Builds the KVM test host from Debian's cloud kernel package: its vmlinuz,
# and an initramfs with busybox, the KVM and virtio-fs modules of that same
# package, and ./init. Cached under $HULL_CACHE by the hash of its inputs.
# Prints the artifact directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${HULL_CACHE:-/var/cache/hull}
say() { printf '==> %s\n' "$*" >&2; }

package=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$package" ] || { echo "error: cannot resolve linux-image-cloud-amd64 (apt-get update?)" >&2; exit 1; }
version=$(apt-cache show "$package" | awk '/^Version:/ {print $2; exit}')
# In load order (each after what it depends on); init loads them as listed.
# The network ones are what the CNI bridge plugin and the pods' tap and tc
# mirroring need.
modules=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci fuse virtiofs overlay irqbypass kvm kvm-amd
         tun veth llc stp bridge sch_ingress cls_u32 act_mirred)

build() {
  local dir=$1 work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  say "KVM test host: fetching $package $version"
  (cd "$work" && apt-get download -q "$package") >&2
  dpkg-deb -x "$work"/*.deb "$work/pkg"
  local stage=$work/stage
  mkdir -p "$stage"/{bin,dev,modules,proc,sys}
  cp /bin/busybox "$stage/bin/busybox"
  cp "$here/init" "$stage/init"
  chmod 0755 "$stage/init"
  mknod -m 0600 "$stage/dev/console" c 5 1
  for module in "${modules[@]}"; do
    local found
    found=$(find "$work/pkg/lib/modules" -name "$module.ko" | head -n 1)
    [ -n "$found" ] || { echo "error: $module.ko is not in $package" >&2; exit 1; }
    cp "$found" "$stage/modules/"
    echo "$module" >> "$stage/modules/order"
  done
  mkdir -p "$dir"
  cp "$work/pkg/boot/vmlinuz-"* "$dir/vmlinuz"
  (cd "$stage" && find . -print0 | LC_ALL=C sort -z \
    | cpio --null --create --format=newc --reproducible --quiet) | gzip -9n > "$dir/initramfs.cpio.gz.tmp"
  mv "$dir/initramfs.cpio.gz.tmp" "$dir/initramfs.cpio.gz"
}

key=$( (echo "$package $version ${modules[*]}"; cat "$here/init"; declare -f build) | sha256sum | cut -c1-16)
dir=$cache/kvm-host/$key
if [ -f "$dir/initramfs.cpio.gz" ]; then
  say "KVM test host: cached ($key)"
else
  build "$dir"
  say "KVM test host: built ($key)"
fi
ln -sfn "$dir" "$cache/kvm-host/current"
echo "$cache/kvm-host/current"
