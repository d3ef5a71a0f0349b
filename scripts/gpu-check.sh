#!/usr/bin/env bash
# GPU check: CUDA found and used, the paper-scale steps run on the GPU, timed against PyTorch eager.
#
# Runs on a Linux machine with an NVIDIA GPU whose python holds PyTorch 2.11.0 (CUDA 13), without
# Rust or network: it uses target/release/runner and the examples step_time and rt_step_time built
# on another machine (`cargo build --release -p runner -p jem --example step_time -p robust-transfer
# --example rt_step_time --example ddp_overlap -p reprise-core --example folder_loader`) and carried over with data/, and finds libtorch by asking python where
# torch lives. With the dist crate's test binary copied to target/release/dist-test
# (`cargo test --release -p dist --test gloo --no-run`, the path it prints) it also checks the
# NCCL backend on the GPU.
#
# usage: scripts/gpu-check.sh [OUT_DIR] [--device cuda|cpu] [--n STEPS] [--batch B] [--k SGLD_STEPS]
#   OUT_DIR   default gpu-check-out/; gets info.txt, table.md and the logs
#   --device  cpu to try the script on a machine without a GPU (with a tiny --n, --batch and --k)
set -euo pipefail
cd "$(dirname "$0")/.."
out=gpu-check-out
device=cuda
n=30
batch=64
k=20
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --n) n="$2"; shift 2 ;;
        --batch) batch="$2"; shift 2 ;;
        --k) k="$2"; shift 2 ;;
        -*) echo "unknown option $1" >&2; exit 2 ;;
        *) out="$1"; shift ;;
    esac
done
mkdir -p "$out"
py="${PYTHON:-python3}"
torch_lib="$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# BIN_DIR: where the carried binaries are (default target/release; e.g. stripped copies elsewhere).
bin="${BIN_DIR:-target/release}"
runner="$bin/runner"
step_time="$bin/examples/step_time"
rt_step_time="$bin/examples/rt_step_time"
for b in "$runner" "$step_time" "$rt_step_time"; do
    [ -x "$b" ] || { echo "missing $b: build it on a machine with Rust and carry it here" >&2; exit 1; }
done

echo "== runner info" | tee "$out/log.txt"
"$runner" info | tee "$out/info.txt"
if [ "$device" = cuda ] && ! grep -q '^cuda      available' "$out/info.txt"; then
    echo "CUDA is not available to the runner (is libtorch_cuda.so linked? see info.txt)" >&2
    exit 1
fi

echo "== matmul rate on $device" | tee -a "$out/log.txt"
"$py" - "$device" > "$out/matmul.txt" <<'PY'
import sys, time, torch
dev = torch.device(sys.argv[1])
n = 8192 if dev.type == "cuda" else 1024
for tf32 in ([False, True] if dev.type == "cuda" else [False]):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    for _ in range(3):
        a @ b
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    reps = 20 if dev.type == "cuda" else 3
    for _ in range(reps):
        a @ b
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / reps
    print(f"{'tf32' if tf32 else 'fp32'} {2 * n**3 / dt / 1e12:.2f}")
PY
cat "$out/matmul.txt" | tee -a "$out/log.txt"

echo "== jem: paper-scale spec end to end (--smoke) on $device" | tee -a "$out/log.txt"
"$runner" run jem/cifar10-wrn28-10 --smoke --device "$device" --out "$out/runs" >> "$out/log.txt" 2>&1

echo "== jem: WRN-28-10 iteration (K = $k, batch $batch), $n steps, Rust vs PyTorch eager" | tee -a "$out/log.txt"
rust_ms=$(REPRISE_DEVICE="$device" "$step_time" wrn "$k" "$n" 1 "$batch" 2>>"$out/log.txt")
torch_ms=$("$py" bench/pytorch/jem_step.py --arch wrn --steps "$k" --iters "$n" --batch "$batch" --device "$device" 2>>"$out/log.txt")
echo "rust $rust_ms ms, pytorch $torch_ms ms" | tee -a "$out/log.txt"

echo "== robust-transfer: paper-scale specs end to end (--smoke) on $device" | tee -a "$out/log.txt"
"$runner" run robust-transfer/imagenet-r50-l2-eps3 --smoke --device "$device" --out "$out/runs" >> "$out/log.txt" 2>&1
"$runner" run robust-transfer/transfer-cifar10 --smoke --device "$device" --out "$out/runs" >> "$out/log.txt" 2>&1

echo "== robust-transfer: ResNet-50 PGD-3 training step (224 px, batch $batch), $n steps, Rust vs PyTorch eager" | tee -a "$out/log.txt"
rt_rust_ms=$(REPRISE_DEVICE="$device" "$rt_step_time" r50 3 "$n" 1 "$batch" 2>>"$out/log.txt")
if [ "$device" = cpu ]; then
    rt_torch_ms=$(CUDA_VISIBLE_DEVICES= "$py" bench/pytorch/rt_step.py r50 3 "$n" 1 "$batch" 2>>"$out/log.txt")
else
    rt_torch_ms=$("$py" bench/pytorch/rt_step.py r50 3 "$n" 1 "$batch" 2>>"$out/log.txt")
fi
echo "rust $rt_rust_ms ms, pytorch $rt_torch_ms ms" | tee -a "$out/log.txt"

fp32=$(awk '/^fp32/ {print $2}' "$out/matmul.txt")
"$py" - "$rust_ms" "$torch_ms" "$batch" "$fp32" "$device" "$n" "$k" "$rt_rust_ms" "$rt_torch_ms" > "$out/table.md" <<'PY'
import sys, datetime
r, p, b, peak, dev, n, k = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6], int(sys.argv[7])
rr, rp = float(sys.argv[8]), float(sys.argv[9])
flops = (2 * k + 9) * b * 11.9e9  # (2K + 9) forwards of WRN-28-10 at 11.9 GFLOP per 32x32 image
rt_flops = 10 * b * 8.18e9  # PGD-3 with use-best: (2*3 + 4) forwards of ResNet-50 at 8.18 GFLOP per 224x224 image
print(f"GPU check, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}, device {dev}, median of {n} steps")
print()
print("| step | Rust (ms) | PyTorch (ms) | ratio | achieved TFLOP/s (Rust) | fp32 matmul TFLOP/s |")
print("|---|---|---|---|---|---|")
print(f"| JEM iteration, WRN-28-10, K={k}, batch {b} | {r:.1f} | {p:.1f} | {r / p:.2f} | {flops / (r / 1000) / 1e12:.2f} | {peak:.2f} |")
print(f"| PGD-3 training step, ResNet-50 224 px, batch {b} | {rr:.1f} | {rp:.1f} | {rr / rp:.2f} | {rt_flops / (rr / 1000) / 1e12:.2f} | {peak:.2f} |")
PY
cat "$out/table.md"

echo "== runner plan: every paper-scale spec that plans, on $device" | tee -a "$out/log.txt"
for exp in jem/cifar10-wrn28-10 jem/cifar100-calibration robust-transfer/imagenet-r50-l2-eps3 tsit/summer2winter-ast tsit/cityscapes-sis tsit/ade20k-sis deepthin/imagenet-r50 deepthin/cifar100-wrn40; do
    "$runner" plan "$exp" --device "$device" --steps 5 --nproc 8 2>>"$out/log.txt" | tee -a "$out/plan.txt"
done

echo "== JEM WRN-28-10 training: float32 against bfloat16 and float16 autocast (jem.amp), runner plan" | tee -a "$out/log.txt"
for amp in none bf16 f16; do
    echo "-- jem.amp=$amp" | tee -a "$out/plan.txt"
    "$runner" plan jem/cifar10-wrn28-10 --device "$device" --steps 5 "jem.amp=$amp" 2>>"$out/log.txt" | tee -a "$out/plan.txt"
done

echo "== TSIT semantic synthesis at 256x512: float32 against bfloat16 and float16 autocast (tsit.amp), runner plan" | tee -a "$out/log.txt"
for amp in none bf16 f16; do
    echo "-- tsit.amp=$amp" | tee -a "$out/plan.txt"
    "$runner" plan tsit/cityscapes-sis --device "$device" --steps 5 "tsit.amp=$amp" 2>>"$out/log.txt" | tee -a "$out/plan.txt"
done

echo "== the NCCL backend at one rank: all-reduce and broadcast of a CUDA tensor, DDP's Reducer over CUDA parameters (dist's test)" | tee -a "$out/log.txt"
if [ -x "$bin/dist-test" ]; then
    "$bin/dist-test" --exact an_nccl_backend_serves_cuda_tensors_or_its_absence_is_said 2>&1 | tail -3 | tee -a "$out/log.txt"
else
    echo "(no $bin/dist-test carried)" | tee -a "$out/log.txt"
fi

echo "== a data-parallel run on CUDA (NCCL collectives), one GPU a rank" | tee -a "$out/log.txt"
ngpu=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$ngpu" -ge 2 ]; then
    "$runner" run jem/digits-calibration --smoke jem.arm=jem seed=0 --device "$device" --out "$out/ddp" --nproc 2 2>&1 | tail -2 | tee -a "$out/log.txt"
else
    echo "(one GPU: --nproc 2 would need two, NCCL takes one GPU a rank; WORLD_SIZE=1 is one process with no group; the 1-rank NCCL group, its collectives and DDP's Reducer on CUDA are dist's test above; the Gloo collectives are tested on the CPU in CI)" | tee -a "$out/log.txt"
fi

echo "== gradient averaging during the backward (DDP's Reducer) against after it: ResNet-50 step, NCCL" | tee -a "$out/log.txt"
overlap="$bin/examples/ddp_overlap"
if [ "$ngpu" -ge 2 ] && [ -x "$overlap" ]; then
    for sync in reducer after-backward; do
        REPRISE_DEVICE="$device" REPRISE_GRAD_SYNC="$sync" python -m torch.distributed.run --no-python \
            --nproc_per_node "$ngpu" --master_port 29518 "$overlap" r50 "$batch" 224 "$n" 1 2>>"$out/log.txt" \
            | tee -a "$out/log.txt"
    done
else
    echo "(needs two GPUs and $overlap, built by \`cargo build --release -p robust-transfer --example ddp_overlap\`; on the CPU: docs/performance.md)" | tee -a "$out/log.txt"
fi

echo "== the streamed ImageNet training transform: images per second of one rank's loader (workers)" | tee -a "$out/log.txt"
loader="$bin/examples/folder_loader"
if [ -x "$loader" ] && "$py" -c 'import numpy, PIL' 2>/dev/null; then
    jpegs="$out/jpegs"
    [ -d "$jpegs/train" ] || "$py" bench/make_jpeg_folder.py "$jpegs" 1000 >>"$out/log.txt" 2>&1
    cores=$(nproc)
    for w in 1 2 4 8; do
        [ "$w" -le "$cores" ] || continue
        "$loader" "$jpegs" "$w" 20 64 2>>"$out/log.txt" | tee -a "$out/log.txt"
        if "$py" -c 'import torchvision' 2>/dev/null; then
            "$py" bench/pytorch/folder_loader.py "$jpegs" "$w" 20 64 2>>"$out/log.txt" | tee -a "$out/log.txt"
        fi
    done
    echo "(a rank of an N-GPU node gets about $cores/N of these cores)" | tee -a "$out/log.txt"
else
    echo "(needs $loader, built by \`cargo build --release -p reprise-core --example folder_loader\`, and numpy + PIL to write the JPEGs)" | tee -a "$out/log.txt"
fi
