#!/usr/bin/env bash
# The whole benchmark run of bench/README.md: builds the release binaries
# (the shim, hull-vmm, the benchmarks), then runs bench-all, which prints a
# table and writes bench/RESULTS.md. Arguments go to bench-all (`--quick`
# for a check that it works; see bench/src/bin/bench-all/main.rs).
#
#   sudo bash bench/run.sh [--quick] [--out FILE] [--skip-kvm-host]
#   sudo bash bench/run.sh --soak N [--check-every K] [--out FILE]
#
# `--soak N` runs only the soak instead (bench/src/bin/soak.rs): N pod
# create/delete cycles with a leak check every K (50), written into its own
# section of bench/RESULTS.md at every check.
#
# It needs what `sudo bash scripts/test.sh` builds and installs: the guest
# image (HULL_GUEST_DIR, by default /var/cache/hull/guest), the KVM test
# host, containerd 1.6, QEMU, virtiofsd and vhost-device-vsock.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/hull/target}"
cargo build --release -p hull-shim -p hull-vmm -p hull-bench
# The command as run, with the settings that change what it measures.
prefix=""
if [ -n "${HULL_GUEST_DIR:-}" ]; then prefix+="HULL_GUEST_DIR=$HULL_GUEST_DIR "; fi
if [ "$CARGO_TARGET_DIR" != /var/cache/hull/target ]; then prefix+="CARGO_TARGET_DIR=$CARGO_TARGET_DIR "; fi
command="sudo ${prefix}bash bench/run.sh${*:+ $*}"
if [ "${1:-}" = --soak ]; then
  cycles="${2:?--soak takes a number of cycles}"
  shift 2
  exec "$CARGO_TARGET_DIR/release/soak" --cycles "$cycles" --command "$command" "$@"
fi
exec "$CARGO_TARGET_DIR/release/bench-all" --command "$command" "$@"
