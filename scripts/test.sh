#!/usr/bin/env bash
# The test command of reprise (`just test`, called by CI).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export REPRISE_PROGRESS_SECS="${REPRISE_PROGRESS_SECS:-30}"
runner=target/release/runner

echo "== build"
cargo build --release -p runner

echo "== CUDA link: libtorch_cuda.so is linked and the runner starts without LD_LIBRARY_PATH"
ldd "$runner" | grep -q 'libtorch_cuda.so' || { echo "libtorch_cuda.so is not linked into $runner" >&2; exit 1; }
env -u LD_LIBRARY_PATH "$runner" info

echo "== validate every experiment"
"$runner" validate

echo "== data"
"$runner" data

echo "== smoke run of every experiment"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
"$runner" list | tail -n +2 | awk '{print $1}' | while read -r exp; do
    echo "-- $exp"
    "$runner" run "$exp" --smoke --out "$out" --jobs 2
done

echo "== unit and integration tests"
log="$out/cargo-test.log"
cargo test --release --workspace --lib --bins --tests 2>&1 | tee "$log"
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo "$passed passed, $failed failed"
