# reprise: `just` lists the recipes. LibTorch comes from a venv made by `just setup`
# (REPRISE_VENV, default ~/.cache/reprise/venv), or from LIBTORCH if you set it.

set shell := ["bash", "-euo", "pipefail", "-c"]

runner := "target/release/runner"

# List the recipes
default:
    @just --list

# Create the venv with PyTorch 2.11.0 (LibTorch for tch 0.24.0); does nothing if it is there
setup:
    bash scripts/setup.sh

# Build the runner (release)
build: setup
    source scripts/env.sh && cargo build --release -p runner

# Fetch and verify the small datasets into data/
data: build
    source scripts/env.sh && {{runner}} data

# Run an experiment: `just run jem/digits-calibration jem.optim.lr=3e-4 --smoke`
run experiment *args: build
    source scripts/env.sh && {{runner}} run {{experiment}} {{args}}

# Set-up, data, build and a real small reproduction end to end, then its report
reproduce: data
    source scripts/env.sh && {{runner}} run jem/digits-calibration --jobs 2

# Every small-scale experiment of the four papers, resumable, then docs/RESULTS.md
reproduce-all: data
    source scripts/env.sh && python scripts/reproduce_all.py

# fmt --check, clippy -D warnings, unit and integration tests, spec validation, the CUDA link check and every experiment's --smoke
test: setup
    bash scripts/test.sh

# Fuzz for SECS seconds: TARGET `spec` (parsing, overrides, validation) or `run` (runs what validates); cargo-fuzz, not in CI
fuzz secs="120" target="spec": setup
    bash scripts/fuzz.sh {{secs}} {{target}}

# Criterion benchmarks
bench: setup
    source scripts/env.sh && cargo bench --workspace

# Each step in Rust and in its PyTorch-eager twin, alternately; writes docs/performance.md
bench-compare: setup
    source scripts/env.sh && cargo build --release -p jem --example step_time -p robust-transfer --example rt_step_time -p deepthin --example dt_step_time -p tsit --example ts_step_time -p reprise-core --example loader_epoch && python bench/compare.py

# cargo fmt --check and clippy with warnings as errors
lint: setup
    cargo fmt --all --check
    source scripts/env.sh && cargo clippy --workspace --all-targets -- -D warnings

# Render the report of a run or sweep folder again
report dir: build
    source scripts/env.sh && {{runner}} report {{dir}}
