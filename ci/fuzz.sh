#!/usr/bin/env bash
# Fuzzes the packet parsers of wire/ and the control protocol of ctl/ (the targets in
# fuzz/fuzz_targets/) for SECONDS seconds each, on the stable toolchain.
#
#   ci/fuzz.sh 20                            # what ci/test.sh runs
#   FUZZ_JOBS=1 nice -n 19 ci/fuzz.sh 600    # a long run, one target at a time
#   ci/fuzz.sh 60 underlay control           # some targets only
#
# Installs cargo-fuzz if it is missing, builds every target in release with debug assertions
# and overflow checks but no sanitizer (stable Rust has none; the code under test is safe
# Rust, so the oracles are the targets' assertions, panics and overflow checks), then runs
# each from a copy of fuzz/seeds/<target> in a temporary directory: nothing is written into
# the repository but the build in fuzz/target. FUZZ_JOBS targets run at once (default: one
# per CPU). Prints per target the executions and the corpus size at the end; exits non-zero,
# with the offending input's path and a hex dump, if a target crashes, panics, exceeds the
# per-input time limit or the memory limit, or leaks (each target counts the bytes its
# global allocator hands out around every input: stable Rust has no LeakSanitizer).
set -euo pipefail
cd "$(dirname "$0")/.."
exec </dev/null

usage() { echo "usage: ci/fuzz.sh SECONDS [TARGET...]" >&2; exit 2; }
say() { echo "fuzz: $*"; }
die() { echo "fuzz: $*" >&2; exit 1; }

[ $# -ge 1 ] || usage
secs=$1
shift
[[ $secs =~ ^[1-9][0-9]*$ ]] || usage
jobs=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "FUZZ_JOBS must be a positive integer"
# Per-input limits: every target handles one input in microseconds and a few MB.
timeout_s=10
rss_mb=2048

[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || die "no Rust toolchain (cargo) found; install one with rustup (https://rustup.rs)"
command -v c++ >/dev/null ||
    die "no C++ compiler (c++): libfuzzer-sys compiles libFuzzer from C++ sources; install g++ (ci/setup.sh does)"
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# The build goes to fuzz/target, whatever the environment says.
unset CARGO_TARGET_DIR
host=$(rustc -vV | sed -n 's/^host: //p')
bin=fuzz/target/$host/release

started=$(date +%s)
say "building ($(cargo fuzz --version), $(rustc --version))"
(cd fuzz && cargo fuzz build --sanitizer none --release --debug-assertions)
built=$(date +%s)

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi
[ ${#targets[@]} -gt 0 ] || die "no fuzz targets found"
for t in "${targets[@]}"; do
    [ -x "$bin/$t" ] || die "unknown target $t (cargo fuzz list names them)"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/vw-fuzz.XXXXXX")
keep=0
trap '[ $keep = 1 ] || rm -rf "$work"' EXIT

# Runs one target; its log, exit code and artifacts stay in $work/<target>.
run_target() {
    local t=$1 dir=$work/$1
    mkdir -p "$dir/corpus" "$dir/artifacts"
    if [ -d "fuzz/seeds/$t" ]; then
        cp -R "fuzz/seeds/$t/." "$dir/corpus/"
    fi
    local rc=0
    "$bin/$t" -max_total_time="$secs" -timeout="$timeout_s" -rss_limit_mb="$rss_mb" -print_final_stats=1 \
        -artifact_prefix="$dir/artifacts/" "$dir/corpus" >"$dir/log" 2>&1 || rc=$?
    echo "$rc" >"$dir/rc"
}

say "running ${#targets[@]} target(s) for $secs s each, $jobs at a time (work directory $work)"
for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
        wait -n || true
    done
    run_target "$t" &
done
wait

failed=()
printf '\n%-12s %8s %12s %8s  %s\n' target seconds executions corpus result
for t in "${targets[@]}"; do
    dir=$work/$t
    rc=$(cat "$dir/rc" 2>/dev/null || echo "?")
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
    corpus=$(find "$dir/corpus" -type f | wc -l)
    result=ok
    if [ "$rc" != 0 ] || [ -n "$(ls -A "$dir/artifacts")" ]; then
        result="FAILED (exit code $rc)"
        failed+=("$t")
    fi
    printf '%-12s %8s %12s %8s  %s\n' "$t" "$secs" "${execs:-?}" "$corpus" "$result"
done

for t in "${failed[@]}"; do
    dir=$work/$t
    echo
    echo "=== $t failed; the end of its log:"
    tail -n 40 "$dir/log"
    for f in "$dir"/artifacts/*; do
        [ -f "$f" ] || continue
        echo
        echo "--- $f ($(wc -c <"$f") bytes); reproduce with: $bin/$t $f"
        od -A x -t x1z -v "$f" | head -n 64
    done
done

say "build $((built - started)) s, runs $(($(date +%s) - built)) s"
if [ ${#failed[@]} -gt 0 ]; then
    keep=1
    die "${#failed[@]} target(s) failed: ${failed[*]}; inputs and logs kept in $work"
fi
say "all targets passed"
