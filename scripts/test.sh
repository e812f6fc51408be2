#!/usr/bin/env bash
# Hull's test command: README names it and .ci/run calls it. Installs what is
# missing, checks formatting and lints, builds everything, runs every suite.
# Needs root: the suites create namespaces, cgroups and mounts.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "error: the tests need root (namespaces, cgroups, mounts)" >&2
  exit 1
fi

step "dependencies"
bash scripts/install-deps.sh

# Builds are cached outside the checkout, so a fresh clone on the same
# machine reuses them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/hull/target}"
mkdir -p "$CARGO_TARGET_DIR"

step "format"
cargo fmt --all --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --bins --locked
agent=$(bash scripts/build-agent-static.sh | tail -n 1)

step "guest image"
# Cached by the hash of its inputs: only the first run builds the kernel.
bash guest-image/build.sh "$agent"
# A second initramfs, for tests only: its agent can be told never to answer
# chosen RPCs (tests/tests/hung_agent.rs).
bash scripts/build-hang-guest.sh

step "KVM test host"
bash tests/kvm-host/build.sh

step "fuzz"
# Every fuzz target for a bounded time (docs/FUZZING.md); a crash fails the
# run. Before the suites, so that their summary stays the run's last word.
bash scripts/fuzz.sh

step "tests"
# The shim's unit tests run without root but for the one that makes network
# namespaces: it is ignored there, and run here.
cargo test -p hull-shim --lib --locked -- --ignored
# --all-targets: the doc tests are empty, and their "0 passed" must not be
# the last word of the run.
cargo test --workspace --all-targets --locked
