#!/usr/bin/env bash
# `just fuzz [SECONDS] [TARGET]`: cargo-fuzz for a bounded time (fuzz/). Not part of CI.
# - `spec` (default): spec parsing, overrides, header checks, sweep expansion, each paper's
#   validation. The corpus starts from every experiment spec, the malformed-spec corpus and the
#   inputs earlier fuzzing found (fuzz/found/).
# - `run`: runs what validation accepts, as a 2-iteration smoke run on the CPU (datasets from
#   data/: run `just data` first). The corpus starts from every experiment spec.
# A new crash is written to fuzz/artifacts/TARGET/ — fix it, then add the input to fuzz/found/
# (the runner's tests replay it).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-120}"
target="${2:-spec}"
source scripts/env.sh
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz (a few minutes, once)"
    cargo install cargo-fuzz
fi
corpus=fuzz/corpus/$target
mkdir -p "$corpus"
case "$target" in
    spec)
        find experiments crates/runner/tests/bad-specs fuzz/found -name '*.yaml' -exec cp {} "$corpus"/ \; 2>/dev/null || true
        limits=(-timeout=10 -rss_limit_mb=4096 -max_len=8192)
        ;;
    run)
        # `extends` is resolved here: the fuzz target reads one file.
        for f in experiments/*/[!_]*.yaml; do
            target/release/runner run "$f" --print-config 2>/dev/null | grep -v '^#' >"$corpus/$(basename "$(dirname "$f")")-$(basename "$f")" || true
        done
        export REPRISE_DATA="$PWD/data"
        limits=(-timeout=120 -rss_limit_mb=8192 -max_len=8192)
        ;;
    *) echo "fuzz: unknown target $target (spec or run)" >&2; exit 2 ;;
esac
# The toolchain here is stable: RUSTC_BOOTSTRAP lets cargo-fuzz pass its -Z flags. The project
# forbids unsafe code, so no sanitizer is built in (-s none): the targets look for panics,
# hangs and runaway memory.
RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz -s none --release "$target" "$corpus" -- \
    -max_total_time="$secs" "${limits[@]}"
