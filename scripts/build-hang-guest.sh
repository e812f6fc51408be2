#!/usr/bin/env bash
# Builds the test-only guest image whose agent never answers the RPCs that
# its sandbox policy's `hang_rpcs` names (hull-agent's `test-hang` feature),
# for tests/tests/hung_agent.rs. The kernel is the normal guest's (shared
# cache); the image goes to $HULL_CACHE/guest-hang.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${HULL_CACHE:-/var/cache/hull}
mkdir -p "$cache/guest-hang-agent"
built=$(bash scripts/build-agent-static.sh --features test-hang | tail -n 1)
agent=$cache/guest-hang-agent/hull-agent
cp "$built" "$agent.tmp" && mv "$agent.tmp" "$agent"
# Puts the normal agent back where the other tests look for it (only the
# agent crate is relinked: its dependencies are the same).
bash scripts/build-agent-static.sh >/dev/null
HULL_GUEST_DIR=$cache/guest-hang bash guest-image/build.sh "$agent"
