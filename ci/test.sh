#!/usr/bin/env bash
# The test command: sets up what is missing, then runs formatting and lint
# checks, unit and property tests, the fuzz targets, the end-to-end tests that
# drive the real vwfabric/vwctl binaries on net_tap ports and network
# namespaces, and a 30-second soak.
# Run as root. With CI=true a missing prerequisite fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { echo; echo "=== $* ($(date +%T))"; }

step "setup"
ci/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

step "rustfmt"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets --release -- -D warnings

step "build (release)"
cargo build --release --workspace

step "unit and property tests"
cargo test --release --workspace --exclude vw-e2e

step "fuzzing (20 s per target)"
ci/fuzz.sh 20

step "end-to-end tests"
# One at a time: each starts fabrics that share this machine's cores.
cargo test --release -p vw-e2e -- --test-threads=1

step "soak (30 s)"
# Traffic at 80% of the measured maximum on one wire while four others
# change every 100 ms: zero loss, no mbuf leaked, memory flat (docs/testing.md).
ci/soak.sh 30

step "all tests passed"
