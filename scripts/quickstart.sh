#!/usr/bin/env bash
# Hull's quickstart, the first command README names: on a fresh Debian
# machine it installs what is missing, builds Hull and its guest image,
# starts a private containerd configured with the hull runtime, imports a
# busybox image built here, and runs a container in a hull, printing its
# output and the VM's boot timeline.
#
#   sudo bash scripts/quickstart.sh            # all of the above
#   sudo bash scripts/quickstart.sh --stop     # stop the private containerd
#
# HULL_QUICKSTART_DIR (default /run/hull-quickstart) holds the private
# containerd's socket, state and logs, and Hull's config and pod state.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

dir=${HULL_QUICKSTART_DIR:-/run/hull-quickstart}
socket=$dir/containerd.sock
image=hull.local/busybox:1

step() { printf '\n==> %s\n' "$*"; }
ctr_() { ctr --address "$socket" -n hull "$@"; }

stop() {
  if [ -f "$dir/containerd.pid" ]; then
    kill "$(cat "$dir/containerd.pid")" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$(cat "$dir/containerd.pid")" 2>/dev/null || break
      sleep 0.1
    done
  fi
  # Whatever containerd's shims left (mounts of the snapshotter and pods).
  if [ -d "$dir" ]; then
    { grep -o " $dir[^ ]*" /proc/self/mountinfo || true; } | sort -r | while read -r target; do
      umount -l "$target" 2>/dev/null || true
    done
    rm -rf "$dir"
  fi
}

if [ "${1:-}" = "--stop" ]; then
  stop
  echo "stopped; $dir removed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "error: the quickstart needs root (containerd, mounts, /dev/kvm)" >&2
  exit 1
fi

step "dependencies (Debian packages, virtiofsd and vhost-device-vsock from crates.io)"
bash scripts/install-deps.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/hull/target}"
step "building Hull (release)"
cargo build --release --locked -p hull-shim -p hull-vmm -p hull-cli
bin=$CARGO_TARGET_DIR/release

step "building the guest image (the kernel takes minutes the first time, then it is cached)"
agent=$(bash scripts/build-agent-static.sh | tail -n 1)
bash guest-image/build.sh "$agent"
guest=${HULL_CACHE:-/var/cache/hull}/guest

stop
mkdir -p "$dir/bin" "$dir/hull"
ln -sf "$bin/containerd-shim-hull-v2" "$bin/hull-vmm" "$dir/bin/"
cat > "$dir/hull.toml" <<EOF
kernel = "$guest/vmlinux"
initrd = "$guest/initramfs.cpio.gz"
hull_vmm = "$bin/hull-vmm"
state_dir = "$dir/hull"
EOF
step "checking the host"
# Stops here, with the reason, if Hull cannot run on this machine.
"$bin/hull" check --config "$dir/hull.toml"

step "starting a private containerd in $dir"
cat > "$dir/containerd.toml" <<EOF
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$socket"
EOF
PATH=$dir/bin:$PATH HULL_CONFIG=$dir/hull.toml \
  setsid containerd --config "$dir/containerd.toml" > "$dir/containerd.log" 2>&1 < /dev/null &
echo $! > "$dir/containerd.pid"
for _ in $(seq 1 100); do
  ctr --address "$socket" version > /dev/null 2>&1 && break
  sleep 0.1
done
ctr --address "$socket" version > /dev/null

step "building and importing $image (busybox-static, no registry)"
bash scripts/busybox-image.sh "$image" "$dir/busybox.tar"
ctr_ images import "$dir/busybox.tar" > /dev/null
# Stray `import-*` names, if this ctr adds them, would only confuse.
ctr_ images ls -q | { grep '^import-' || true; } | xargs -r ctr --address "$socket" -n hull images rm > /dev/null

step "running a container in a hull"
ctr_ run --runtime io.containerd.hull.v2 --rm "$image" hello \
  sh -c 'echo "Hello from a hull: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) vCPU"'

step "boot timeline"
grep -o "the pod's VM is up timeline=.*" "$dir/containerd.log" | tail -n 1 | sed 's/.*timeline=//'

cat <<EOF

Hull is running. Try it:
  ctr --address $socket -n hull run --runtime io.containerd.hull.v2 --rm -t $image demo sh
Stop the private containerd:
  sudo bash scripts/quickstart.sh --stop
EOF
