#!/usr/bin/env bash
# `just fuzz [SECONDS]`: cargo-fuzz on spec parsing and override application (fuzz/), for a
# bounded time. Not part of CI. The corpus starts from every experiment spec, the malformed-spec
# corpus and the inputs earlier fuzzing found (fuzz/found/); a new crash is written to
# fuzz/artifacts/spec/ — fix it, then add the input to fuzz/found/ (the runner's tests replay it).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-120}"
source scripts/env.sh
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz (a few minutes, once)"
    cargo install cargo-fuzz
fi
corpus=fuzz/corpus/spec
mkdir -p "$corpus"
find experiments crates/runner/tests/bad-specs fuzz/found -name '*.yaml' -exec cp {} "$corpus"/ \; 2>/dev/null || true
# The toolchain here is stable: RUSTC_BOOTSTRAP lets cargo-fuzz pass its -Z flags. The project
# forbids unsafe code, so no sanitizer is built in (-s none): the target looks for panics,
# hangs and runaway memory.
RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz -s none --release spec "$corpus" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -max_len=8192
