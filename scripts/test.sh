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
bash scripts/build-agent-static.sh

step "tests"
cargo test --workspace --locked
