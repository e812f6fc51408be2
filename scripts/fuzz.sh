#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for a bounded time.
#
#   bash scripts/fuzz.sh                  CI mode: every target for 45 s
#   bash scripts/fuzz.sh --long SECONDS   the long run: every target for SECONDS
#   bash scripts/fuzz.sh [...] TARGET...  only these targets
#
# Corpora grow in a cache outside the checkout (the committed seeds in
# fuzz/corpus/ are only read), so every run starts where the last one
# stopped. A crash fails the run and leaves its input in
# fuzz/artifacts/TARGET/; `cargo +nightly fuzz run TARGET that-file` in fuzz/
# replays it. docs/FUZZING.md has the targets and the longest runs.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=45
long=false
targets=()
while [ $# -gt 0 ]; do
  case $1 in
    --long)
      long=true
      seconds=${2:?--long needs a number of seconds}
      shift 2
      ;;
    -h | --help)
      sed -n '2,12p' "$0"
      exit 0
      ;;
    *)
      targets+=("$1")
      shift
      ;;
  esac
done
if [ "${#targets[@]}" -eq 0 ]; then
  targets=(vsock_queues virtio_mmio agent_requests agent_oci_spec)
fi

command -v cargo-fuzz >/dev/null || {
  echo "error: cargo-fuzz is missing; scripts/install-deps.sh installs it" >&2
  exit 1
}
# libFuzzer and the sanitizers need nightly flags. Without a nightly
# toolchain, the stable one is allowed them (the asan runtime ships with it).
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  cargo=(cargo +nightly)
else
  echo "note: no nightly toolchain; building with RUSTC_BOOTSTRAP=1 on $(rustc --version)"
  export RUSTC_BOOTSTRAP=1
  cargo=(cargo)
fi

cache=${HULL_CACHE:-/var/cache/hull}
export CARGO_TARGET_DIR="$cache/fuzz-target"
logs="$cache/fuzz-logs"
mkdir -p "$CARGO_TARGET_DIR" "$logs"
# The vsock target binds its Unix sockets under TMPDIR; each run gets a
# fresh one, removed afterwards.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

cd fuzz
echo "==> building ${targets[*]}"
for target in "${targets[@]}"; do
  "${cargo[@]}" fuzz build "$target"
done

status=0
for target in "${targets[@]}"; do
  corpus="$cache/fuzz-corpus/$target"
  seeds=corpus/$target
  mkdir -p "$corpus" "$seeds"
  log="$logs/$target-$(date -u +%Y%m%dT%H%M%SZ).log"
  echo "==> $target for ${seconds}s (log: $log)"
  # -timeout: one input taking 10 s is a hang, and a bug like a crash.
  # Dictionaries help the JSON target past the parser's keywords.
  dict=()
  [ -f "dicts/$target.dict" ] && dict=("-dict=dicts/$target.dict")
  if TMPDIR=$scratch "${cargo[@]}" fuzz run "$target" "$corpus" "$seeds" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "${dict[@]}" \
    >"$log" 2>&1; then
    # libFuzzer's last status line: "#RUNS DONE cov: ... exec/s: ..."
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1)
    echo "    ok: $done_line"
    $long && echo "    $(date -u +%Y-%m-%d) $(git rev-parse --short HEAD) $target ${seconds}s $done_line"
  else
    status=1
    echo "    FAILED: the last lines of its log:" >&2
    tail -n 30 "$log" >&2
    ls -1 "artifacts/$target" 2>/dev/null | sed 's/^/    artifact: /' >&2 || true
  fi
done
exit $status
