"""`just bench-compare`: each step timed in reprise (Rust) and in its PyTorch-eager twin, alternately,
several repetitions after a warm-up, medians reported beside analytic FLOPs and the machine's measured
matrix-multiply rate; writes docs/performance.md.

usage: python bench/compare.py [--reps 3] [--threads 1]
Run from the repository root with the venv active (the justfile does this).
"""
import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.join(os.path.dirname(__file__), "..")
EXAMPLES = os.path.join(ROOT, "target", "release", "examples")
JEM_RUST = os.path.join(EXAMPLES, "step_time")
JEM_TWIN = os.path.join(ROOT, "bench", "pytorch", "jem_step.py")
RT_RUST = os.path.join(EXAMPLES, "rt_step_time")
RT_TWIN = os.path.join(ROOT, "bench", "pytorch", "rt_step.py")
DT_RUST = os.path.join(EXAMPLES, "dt_step_time")
DT_TWIN = os.path.join(ROOT, "bench", "pytorch", "dt_step.py")
TS_RUST = os.path.join(EXAMPLES, "ts_step_time")
TS_TWIN = os.path.join(ROOT, "bench", "pytorch", "ts_step.py")
LOADER_RUST = os.path.join(EXAMPLES, "loader_epoch")
LOADER_TWIN = os.path.join(ROOT, "bench", "pytorch", "loader_epoch.py")


def jem(arch, k, iters, what):
    def cmds(threads):
        rust = [JEM_RUST, arch, str(k), str(iters), str(threads), "64", what]
        twin = [sys.executable, JEM_TWIN, "--arch", arch, "--steps", str(k), "--iters", str(iters),
                "--threads", str(threads), "--what", what]
        return rust, twin
    return cmds


def rt(arch, k, iters, batch, what="train"):
    size = 224 if arch == "r50" else 28
    def cmds(threads):
        args = [arch, str(k), str(iters), str(threads), str(batch), str(size), what]
        return [RT_RUST] + args, [sys.executable, RT_TWIN] + args
    return cmds


def dt(what, iters):
    def cmds(threads):
        args = [what, str(iters), str(threads)]
        return [DT_RUST] + args, [sys.executable, DT_TWIN] + args
    return cmds


def loader(dataset, aug, epochs):
    def cmds(threads):
        args = [dataset, aug, str(epochs), str(threads)]
        return [LOADER_RUST] + args, [sys.executable, LOADER_TWIN] + args
    return cmds


def ts(scale, iters):
    def cmds(threads):
        args = [scale, str(iters), str(threads)]
        return [TS_RUST] + args, [sys.executable, TS_TWIN] + args
    return cmds


# (name, shape, commands, FLOPs of the step)
# Per-image forward FLOPs: mnist-cnn 3.14 M, digits-mlp 0.169 M (2 * MACs); batch 64.
# robust-transfer: SmallCNN w=1 3.84 MFLOP per 28x28 image, ResNet-50 8.18 GFLOP per 224x224 image;
# a PGD-k training step with use-best is (2k + 1 + 3) forwards.
F_CNN = 64 * 3.14e6
F_MLP = 64 * 2 * (64 * 256 + 256 * 256 + 256 * 10)
F_RT_SMALL = 32 * 3.84e6
F_RT_R50 = 2 * 8.18e9
STEPS = [
    ("JEM iteration, mnist-cnn", "64x1x28x28, K=20", jem("cnn", 20, 10, "iter"), (2 * 20 + 9) * F_CNN),
    ("JEM iteration, digits-mlp", "64x1x8x8, K=20", jem("mlp", 20, 40, "iter"), (2 * 20 + 9) * F_MLP),
    ("one SGLD step, mnist-cnn", "64x1x28x28", jem("cnn", 20, 40, "sgld"), 2 * F_CNN),
    ("one SGLD step, digits-mlp", "64x1x8x8", jem("mlp", 20, 200, "sgld"), 2 * F_MLP),
    # The SGLD step's forward with a full backward (input and parameter gradients): what the step
    # would cost if it did not take the input gradient alone. 3F (the backward is two products).
    ("forward + full backward (SGLD's energy), mnist-cnn", "64x1x28x28", jem("cnn", 20, 40, "fwdbwd"), 3 * F_CNN),
    ("robust-transfer PGD-3 step, SmallCNN", "32x1x28x28", rt("small", 3, 40, 32), 10 * F_RT_SMALL),
    ("robust-transfer standard step, SmallCNN", "32x1x28x28", rt("small", 0, 100, 32), 3 * F_RT_SMALL),
    # The PGD-3 attack alone (3 forward + input-backward pairs, the use-best forward) against one
    # forward of its loss with a full backward (input and parameter gradients, 3F).
    ("robust-transfer PGD-3 attack alone, SmallCNN", "32x1x28x28", rt("small", 3, 60, 32, "attack"),
     7 * F_RT_SMALL),
    ("forward + full backward (the attack's loss), SmallCNN", "32x1x28x28",
     rt("small", 3, 100, 32, "fwdbwd"), 3 * F_RT_SMALL),
    ("robust-transfer PGD-3 step, ResNet-50", "2x3x224x224", rt("r50", 3, 3, 2), 10 * F_RT_R50),
    # deepthin, batch 128: imitation of one block (256->16->16->256, 8448 MAC per sample) and
    # distillation of the thin depth-16 MLP (16.5 k MAC per sample); 3 passes at 2 FLOP per MAC.
    ("deepthin imitation step, one block", "128x256, w=16, W=256", dt("imitate", 300), 6 * 128 * 8448),
    ("deepthin distillation step, depth-16 MLP", "128x784, w=16", dt("kd", 300), 6 * 128 * 16.5e3),
    # TSIT, one G step then one D step: B·(4·G + 10·D + 3·P) MAC (spec §8) at 2 FLOP per MAC, with
    # G (both streams) 0.0724 GMAC, D 0.0023, VGG-mini 0.0111 per 32x32 image; at 256x256 with the
    # official widths G 96.9, D 1.49, VGG-19 to relu5_1 23.7 GMAC.
    ("TSIT iteration (G + D step), small scale", "8x3x32x32, nf 16", ts("small", 20),
     2 * 8 * (4 * 0.0724 + 10 * 0.0023 + 3 * 0.0111) * 1e9),
    ("TSIT iteration (G + D step), 256x256 official widths", "1x3x256x256, nf 64", ts("256", 2),
     2 * 1 * (4 * 96.9 + 10 * 1.49 + 3 * 23.7) * 1e9),
    # One epoch of the training-data loader alone (shuffle, gather, augment; batch 64, the last
    # partial batch dropped): no FLOPs to speak of.
    ("data loader, one epoch, digits", "1437x1x8x8, batch 64", loader("digits", "plain", 20), 0),
    ("data loader, one epoch, mnist-5k", "4000x1x28x28, batch 64", loader("mnist-5k", "plain", 20), 0),
    ("data loader, one epoch, mnist-5k + noise 0.03 (JEM)", "4000x1x28x28, batch 64",
     loader("mnist-5k", "noise", 10), 0),
    ("data loader, one epoch, mnist-5k + pad-crop 2 + flip", "4000x1x28x28, batch 64",
     loader("mnist-5k", "crop-flip", 10), 0),
]


def matmul_peak(threads):
    torch.set_num_threads(threads)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(ts) / 1e9


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()
    return float(out[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None,
                    help="time only the steps whose name contains this; their rows replace (or join) "
                         "the table in docs/performance.md, with a line saying when they were measured")
    a = ap.parse_args()
    for exe in (JEM_RUST, RT_RUST, DT_RUST, TS_RUST, LOADER_RUST):
        if not os.path.exists(exe):
            sys.exit(f"{exe} is missing: `just bench-compare` builds it")
    peak = matmul_peak(a.threads)
    rows = []
    steps = [st for st in STEPS if a.only is None or a.only in st[0]]
    if not steps:
        sys.exit(f"no step's name contains {a.only!r}")
    for name, shape, cmds, flops in steps:
        rust, torch_t = [], []
        rust_cmd, twin_cmd = cmds(a.threads)
        for _ in range(a.reps):
            rust.append(run(rust_cmd))
            torch_t.append(run(twin_cmd))
        r, p = statistics.median(rust), statistics.median(torch_t)
        rows.append((name, shape, r, p, r / p, flops / 1e9, flops / (r / 1000) / 1e9))
        print(f"{name:28s} rust {r:9.2f} ms  pytorch {p:9.2f} ms  ratio {r / p:5.2f}", flush=True)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        "# Performance",
        "",
        "Written by `just bench-compare` (`bench/compare.py`). Each step is timed in reprise (Rust, the",
        "`step_time`, `rt_step_time`, `dt_step_time`, `ts_step_time` and `loader_epoch` examples of the `jem`,",
        "`robust-transfer`, `deepthin`, `tsit` and core crates) and in its PyTorch-eager twin (`bench/pytorch/jem_step.py`,",
        "`rt_step.py`, `dt_step.py`, `ts_step.py`, `loader_epoch.py`),",
        f"alternately, {a.reps} repetitions, each the median over its iterations after 3 warm-up iterations;",
        "the table shows the median of the repetitions. Same libtorch (PyTorch 2.11.0), same shapes, float32,",
        f"{a.threads} intra-op thread(s). The PyTorch twin also draws its batches inside the timed loop; reprise's",
        "training loop draws them on a loader thread, and its `step_time` times the step alone.",
        "",
        f"Measured {date} on {cpu} ({os.cpu_count()} logical CPUs). Matrix-multiply rate measured by the same",
        f"command (2048×2048 float32 matmul in PyTorch, {a.threads} thread(s)): **{peak:.1f} GFLOP/s**.",
        "",
        "| step | shape | Rust median (ms) | PyTorch median (ms) | ratio Rust/PyTorch | GFLOP per step | achieved GFLOP/s | share of the matmul rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    def row(name, shape, r, p, ratio, gf, ach):
        if gf == 0:
            return f"| {name} | {shape} | {r:.2f} | {p:.2f} | {ratio:.2f} | — | — | — |"
        return f"| {name} | {shape} | {r:.2f} | {p:.2f} | {ratio:.2f} | {gf:.3f} | {ach:.1f} | {100 * ach / peak:.0f} % |"
    out = os.path.join(ROOT, "docs", "performance.md")
    if a.only is not None:
        splice(out, [row(*x) for x in rows], f"Rows whose step contains `{a.only}` were measured {date} on {cpu} "
               f"by `bench/compare.py --only` ({a.reps} repetitions, {a.threads} thread(s)); the others as above.",
               a.only)
        return
    for x in rows:
        lines.append(row(*x))
    lines += ["", "FLOPs are analytic: a forward of the batch is F; a JEM iteration with K SGLD steps is (2K + 9)·F",
              "(K forward + input-backward pairs, then three loss forwards with full backwards); an SGLD step is 2F;",
              "a PGD-k adversarial training step with use-best is (2k + 4)·F (k forward + input-backward pairs, the",
              "use-best forward, then a forward and full backward); a standard step is 3F; a TSIT iteration is",
              "B·(4G + 10D + 3P) MAC (spec §8: G fwd+bwd and D on fake and real in the G step, the perceptual net",
              "on target and fake, then a G forward and D fwd+bwd on both halves in the D step).", ""]
    # Hand-written sections after the marker (analysis, the GPU table) are kept.
    marker = "<!-- end of the generated part -->"
    kept = ""
    if os.path.exists(out):
        with open(out) as f:
            old = f.read()
        if marker in old:
            kept = old.split(marker, 1)[1]
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n" + marker + kept)
    print("wrote", os.path.normpath(out))


def splice(path, new_rows, note, key):
    """Replaces the table rows of the same steps in the generated part of `path` (or appends them
    to the table) and puts `note` below the table, in place of an earlier note of the same `--only`
    key (notes of other keys stay)."""
    marker = "<!-- end of the generated part -->"
    with open(path) as f:
        gen, sep, rest = f.read().partition(marker)
    lines = []
    for line in gen.split("\n"):
        if line.startswith(f"Rows whose step contains `{key}`"):
            if lines and lines[-1] == "":
                lines.pop()
            continue
        lines.append(line)
    for r in new_rows:
        key = r.split(" | ")[0] + " | "
        hit = [i for i, line in enumerate(lines) if line.startswith(key)]
        if hit:
            lines[hit[0]] = r
        else:
            lines.insert(max(i for i, line in enumerate(lines) if line.startswith("| ")) + 1, r)
    last = max(i for i, line in enumerate(lines) if line.startswith("| "))
    lines[last + 1:last + 1] = ["", note]
    with open(path, "w") as f:
        f.write("\n".join(lines) + sep + rest)
    print("updated", os.path.normpath(path))


if __name__ == "__main__":
    main()
