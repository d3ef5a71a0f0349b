#!/usr/bin/env bash
# The test command of reprise (`just test`, called by CI).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export REPRISE_PROGRESS_SECS="${REPRISE_PROGRESS_SECS:-30}"
runner=target/release/runner

echo "== format: cargo fmt --check"
cargo fmt --all --check

echo "== build"
cargo build --release -p runner

echo "== lints: clippy on every target, warnings as errors (the release profile, so LibTorch's bindings are built once)"
cargo clippy --release --workspace --all-targets -- -D warnings

echo "== CUDA link: libtorch_cuda.so is linked (where LibTorch has it) and the runner starts without LD_LIBRARY_PATH"
lib_dir="${LIBTORCH:+$LIBTORCH/lib}"
lib_dir="${lib_dir:-${torch_lib:-}}"
if [ -e "$lib_dir/libtorch_cuda.so" ]; then
    # ldd's whole output first: `ldd | grep -q` under pipefail can fail when grep exits on
    # the first match while ldd is still writing (SIGPIPE).
    libs="$(ldd "$runner")"
    if ! grep -q 'libtorch_cuda.so' <<<"$libs"; then
        echo "libtorch_cuda.so is in $lib_dir but not linked into $runner; ldd says:" >&2
        echo "$libs" >&2
        exit 1
    fi
else
    echo "LibTorch at '$lib_dir' has no libtorch_cuda.so (a CPU-only build): nothing to link, check skipped"
fi
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

echo "== two experiments sharing two cores through --slots (a sweep and a single run)"
fifo="$out/slots.fifo"
mkfifo "$fifo"
exec 3<>"$fifo"
printf '++' >&3
"$runner" run deepthin/mnist-residual --smoke --out "$out/slots" --jobs 2 --slots "$fifo" &
sweep_pid=$!
"$runner" run tsit/summer2winter-ast --smoke --out "$out/slots" --slots "$fifo"
wait "$sweep_pid"
# Both tokens are back in the pipe once both have finished.
python - <<'PY'
import os
os.set_blocking(3, False)
back = os.read(3, 64)
assert back == b"++", f"tokens left in the pipe: {back!r}"
print("both cores' tokens came back")
PY
exec 3>&-
ls "$out"/slots/deepthin-mnist-residual/*/report.md "$out"/slots/tsit-summer2winter-ast/*/report.md >/dev/null

echo "== robust-transfer: a robustness-library checkpoint converts and transfers"
src=$(ls "$out"/robust-transfer-imagenet-r50-l2-eps3/*/source.safetensors | head -1)
python - "$src" "$out/fake-robustness.ckpt" <<'PY'
import sys, torch
sys.path.insert(0, "scripts")
from convert_robustness_ckpt import read_safetensors
sd = read_safetensors(sys.argv[1])
model = {}
for k, v in sd.items():
    if k.startswith("normalizer."):
        model["module.normalizer.new_" + k.split(".")[1]] = v
    else:
        model["module.model." + k] = v
        model["module.attacker.model." + k] = v
torch.save({"model": model, "epoch": 1}, sys.argv[2])
PY
python scripts/convert_robustness_ckpt.py "$out/fake-robustness.ckpt" "$out/converted.safetensors"
# A checkpoint whose unpickling would run code is refused (weights_only=True), and nothing runs.
python - "$out/evil.ckpt" <<'PY'
import sys, torch
class Runs:
    def __reduce__(self):
        return (print, ("CODE RAN",))
torch.save({"model": {"module.model.fc.weight": torch.zeros(1)}, "x": Runs()}, sys.argv[1])
PY
if refused="$(python scripts/convert_robustness_ckpt.py "$out/evil.ckpt" "$out/evil.safetensors" 2>&1)"; then
    echo "a checkpoint needing a full unpickler was converted: $refused" >&2
    exit 1
fi
if grep -q "CODE RAN" <<<"$refused" || ! grep -q "weights_only=True" <<<"$refused"; then
    echo "unexpected: $refused" >&2
    exit 1
fi
echo "a checkpoint that would run code on loading is refused"
"$runner" run robust-transfer/transfer-cifar10 --smoke --out "$out" \
    robust-transfer.source.from="$out/converted.safetensors" robust-transfer.eval.source=false
loaded=$(ls -t "$out"/robust-transfer-cifar10/*/source.safetensors | head -1)
python - "$src" "$loaded" <<'PY'
import sys
sys.path.insert(0, "scripts")
from convert_robustness_ckpt import read_safetensors
a, b = read_safetensors(sys.argv[1]), read_safetensors(sys.argv[2])
keys = [k for k in a if not k.startswith(("fc.", "normalizer."))]
bad = [k for k in keys if k not in b or not a[k].equal(b[k])]
assert len(keys) >= 265 and not bad, f"{len(keys)} backbone tensors, differing: {bad[:5]}"
print(f"converted backbone loaded exactly: {len(keys)} tensors")
PY

echo "== robust-transfer: the evaluation-only spec evaluates the converted checkpoint without training"
"$runner" run robust-transfer/imagenet-r50-eval --smoke --out "$out" \
    robust-transfer.source.from="$out/converted.safetensors"
evaluated=$(ls -td "$out"/robust-transfer-imagenet-r50-eval/*/ | head -1)
python - "$(dirname "$src")" "$evaluated" <<'PY'
import json, sys
a, b = (json.load(open(f"{d}/summary.json")) for d in sys.argv[1:])
assert b["source_step_ms"] is None or b["source_step_ms"] != b["source_step_ms"], "the evaluation-only run trained"
for k in ("src_clean", "src_robust"):
    assert a[k] == b[k], f"{k}: trained run {a[k]}, evaluated checkpoint {b[k]}"
print(f"the converted checkpoint evaluates as the run that trained it: {b['src_clean']} / {b['src_robust']}")
PY

echo "== runner export: the robust ResNet-50 source as a torch.load-able state dict with torchvision's names"
src_run=$(dirname "$src")
"$runner" export "$src_run" --out "$out/exported"
python - "$src" "$out/exported" <<'PY'
import json, sys, torch
sys.path.insert(0, "scripts")
from convert_robustness_ckpt import read_safetensors
sd = torch.load(f"{sys.argv[2]}/source.pt")  # weights_only=True, PyTorch's default
orig = read_safetensors(sys.argv[1])
want = {k: v for k, v in orig.items() if not k.startswith("normalizer.")}
tracked = {k for k in sd if k.endswith(".num_batches_tracked")}
assert set(sd) - tracked == set(want), sorted((set(sd) - tracked) ^ set(want))[:5]
assert all(sd[k].equal(v) for k, v in want.items())
# torchvision's resnet50().state_dict(): 320 entries, 53 of them BatchNorm's num_batches_tracked.
assert len(sd) == 320 and len(tracked) == 53, (len(sd), len(tracked))
for k in ["conv1.weight", "bn1.running_mean", "bn1.num_batches_tracked", "layer4.2.bn3.running_var", "fc.weight"]:
    assert k in sd, k
cfg = json.load(open(f"{sys.argv[2]}/config.json"))
assert cfg["normalize"]["mean"] == [float(x) for x in orig["normalizer.mean"].flatten()], cfg["normalize"]
print(f"exported {len(sd)} tensors, loaded by torch.load")
PY

echo "== jem: an official JEM checkpoint converts and is evaluated without training"
python - crates/jem/tests/fixtures/official-jem.safetensors "$out/official-jem.pt" <<'PY'
import sys, torch
sys.path.insert(0, "scripts")
from convert_robustness_ckpt import read_safetensors
fx = read_safetensors(sys.argv[1])
# The fixture's network under the official names (f.*, class_output.*, energy_output.*), saved
# as the official train_wrn_ebm.py checkpoints it.
sd = {k[5:]: v for k, v in fx.items() if k.startswith(("step/f.", "step/class_output.", "step/energy_output."))}
torch.save({"model_state_dict": sd, "replay_buffer": fx["step/buffer"]}, sys.argv[2])
PY
python scripts/convert_jem_ckpt.py "$out/official-jem.pt" "$out/jem-converted.safetensors"
"$runner" run jem/cifar10-eval --smoke --out "$out" jem.from="$out/jem-converted.safetensors" \
    jem.model.wrn.depth=10 jem.model.wrn.widen=1 jem.buffer.size=10
evaluated=$(ls -t "$out"/jem-cifar10-eval/*/model.safetensors | head -1)
python - crates/jem/tests/fixtures/official-jem.safetensors "$evaluated" <<'PY'
import sys
sys.path.insert(0, "scripts")
from convert_robustness_ckpt import read_safetensors
fx, got = read_safetensors(sys.argv[1]), read_safetensors(sys.argv[2])
want = {k[5:].removeprefix("f."): v for k, v in fx.items()
        if k.startswith(("step/f.", "step/class_output.", "step/energy_output."))
        and not k.startswith("step/f.linear.")}  # built by the official WRN, never used
bad = [k for k in want if k not in got or not got[k].equal(want[k])]
assert len(want) >= 20 and not bad and set(got) == set(want), f"differing: {bad[:5]}"
print(f"the official weights were evaluated exactly: {len(want)} tensors")
PY

echo "== tsit: official TSIT checkpoints convert and are evaluated without training"
python - crates/tsit/tests/fixtures/official-tsit.safetensors "$out" <<'PY'
import sys, torch
sys.path.insert(0, "scripts")
from convert_robustness_ckpt import read_safetensors
fx = read_safetensors(sys.argv[1])
# The semantic-synthesis networks of the equivalence fixture, saved as the official
# util.save_network saves them.
for net in "GDE":
    p = f"sis/before/{net}/"
    torch.save({k[len(p):]: v for k, v in fx.items() if k.startswith(p)}, f"{sys.argv[2]}/latest_net_{net}.pth")
PY
python scripts/convert_tsit_ckpt.py --G "$out/latest_net_G.pth" --D "$out/latest_net_D.pth" \
    --E "$out/latest_net_E.pth" "$out/tsit-converted.safetensors"
"$runner" run tsit/cityscapes-sis --smoke --out "$out" tsit.from="$out/tsit-converted.safetensors" \
    tsit.size=256 'tsit.model={ nf: 1, cap: 16, ndf: 2, num_d: 2, n_layers_d: 4, vae: true, z_dim: 256, vae_size: 256 }' \
    tsit.folder.label_nc=4 tsit.folder.instance_edge=false tsit.batch=2 tsit.aspect=1
evaluated=$(ls -t "$out"/tsit-cityscapes-sis/*/generator.safetensors | head -1)
python - crates/tsit/tests/fixtures/official-tsit.safetensors "$evaluated" <<'PY'
import sys, torch
sys.path.insert(0, "scripts")
from convert_robustness_ckpt import read_safetensors
fx, got = read_safetensors(sys.argv[1]), read_safetensors(sys.argv[2])
g = {k[len("sis/before/G/"):]: v for k, v in fx.items() if k.startswith("sis/before/G/")}
same = [k for k in g if k.startswith(("content_stream.", "fc.", "conv_img."))]
bad = [k for k in same if not got[k].equal(g[k])]
fused = torch.cat([g[f"head_0.norm_{n}.mlp_{p}.weight"] for n in "01" for p in ("gamma", "beta")])
enc = fx["sis/before/E/fc_mu.weight"]
assert len(same) > 40 and not bad, f"differing: {bad[:5]}"
assert got["block_7.gamma_beta.weight"].equal(fused) and got["encoder.fc_mu.weight"].equal(enc)
print(f"the official generator and encoder were evaluated: {len(got)} tensors, {len(same)} compared by name")
PY

echo "== tsit and jem: the paper-scale FID on pytorch-fid's Inception-v3, from a weights file"
python - crates/core/tests/fixtures/pytorch-fid.safetensors "$out/fid-inception.safetensors" <<'PY'
import json, struct, sys
sys.path.insert(0, "scripts")
from convert_robustness_ckpt import write_safetensors
from make_official_fixtures import formula_weight
with open(sys.argv[1], "rb") as f:
    shapes = json.loads(json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))["__metadata__"]["shapes"])
write_safetensors({k: formula_weight(k, tuple(s)) for k, s in shapes.items()}, sys.argv[2])
PY
"$runner" run tsit/summer2winter-ast --smoke --out "$out" tsit.eval.fid_inception="$out/fid-inception.safetensors"
python - "$(ls -td "$out"/tsit-summer2winter-ast/*/ | head -1)" <<'PY'
import json, math, pathlib, sys
s = json.loads(next(pathlib.Path(sys.argv[1]).rglob("summary.json")).read_text())
assert isinstance(s.get("fid"), float) and math.isfinite(s["fid"]) and s["fid"] >= 0, s.get("fid")
print(f"paper-scale FID computed in the run: {s['fid']:.3f}")
PY
"$runner" run jem/cifar10-wrn28-10 --smoke --out "$out" jem.eval.fid_inception="$out/fid-inception.safetensors"
python - "$(ls -td "$out"/jem-cifar10-wrn28-10/*/ | head -1)" <<'PY'
import json, math, pathlib, sys
s = json.loads(next(pathlib.Path(sys.argv[1]).rglob("summary.json")).read_text())
fids = [s.get("fid_buffer"), s.get("fid_samples")]
assert all(isinstance(f, float) and math.isfinite(f) for f in fids), fids
print("JEM sample and replay-buffer FIDs computed in the run")
PY
rm -f "$out/fid-inception.safetensors"

echo "== reproduce-all: interrupted and run again, against a stand-in runner"
python scripts/test_reproduce_all.py

echo "== unit and integration tests"
log="$out/cargo-test.log"
cargo test --release --workspace --lib --bins --tests 2>&1 | tee "$log"
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s+=$1} END {print s+0}')
echo "$passed passed, $failed failed"
