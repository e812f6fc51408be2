#!/usr/bin/env bash
# Builds hull-agent as one statically linked executable for the guest
# initramfs. There is no musl target here; glibc's static build works because
# the agent resolves no user or host names through NSS.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
# --target keeps crt-static away from build scripts and proc macros.
export RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static"
export LIBSECCOMP_LINK_TYPE=static
export LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu
cargo build --release --locked -p hull-agent --target "$target" "$@"
echo "${CARGO_TARGET_DIR:-$PWD/target}/$target/release/hull-agent"
