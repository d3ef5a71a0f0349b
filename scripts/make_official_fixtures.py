"""Equivalence fixtures: what the papers' official code computes, at reduced width.

Run with a PyTorch 2.11 that also has torchvision (and tqdm, which the JEM trainer imports), giving a
local checkout of each official repository (their code is imported from there, never copied here):

    python scripts/make_official_fixtures.py --jem PATH/JEM --robustness PATH/robustness \
        --transfer PATH/robust-models-transfer

It writes safetensors files under crates/<paper>/tests/fixtures/ that the Rust tests
crates/jem/tests/official.rs and crates/robust-transfer/tests/official.rs load and compare to 1e-5
(relative, float32). Weights carry the official parameter names; every random number of a step (SGLD
noise, buffer indices, PGD random starts, crop boxes, jitter factors) is drawn here and stored, so the Rust
side consumes the same numbers. Each file's metadata names the commit of the official repository that
produced it. The fixtures this script wrote last were made from:

    wgrathwohl/JEM              3d01161 (train_wrn_ebm.py: CCF, get_sample_q; wideresnet.py)
    MadryLab/robustness         a954124 (attacker.py: Attacker; attack_steps.py; data_augmentation.py)
    microsoft/robust-models-transfer  cea2c37 (src/utils/constants.py: TRAIN_TRANSFORMS, TEST_TRANSFORMS)
"""
import argparse
import contextlib
import os
import subprocess
import sys

import torch
from safetensors.torch import save_file

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commit(path):
    try:
        return subprocess.check_output(["git", "-C", path, "rev-parse", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save(tensors, paper, name, meta):
    out = os.path.join(ROOT, "crates", paper, "tests", "fixtures")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name)
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    save_file(tensors, path, metadata={k: str(v) for k, v in meta.items()})
    print(f"{path}: {len(tensors)} tensors, {os.path.getsize(path) / 1e6:.2f} MB")


@contextlib.contextmanager
def patched(module, **fns):
    old = {k: getattr(module, k) for k in fns}
    for k, v in fns.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(module, k, v)


# ---------------------------------------------------------------------------------------------
# JEM (wgrathwohl/JEM)


def jem(path):
    sys.path.insert(0, path)
    import train_wrn_ebm as official  # noqa: E402  (CCF, get_sample_q)

    meta = {"repository": "wgrathwohl/JEM", "commit": commit(path), "depth": 10, "widen": 1}
    out = {}
    torch.manual_seed(0)
    # Forward passes of the official Wide-ResNet (LeakyReLU 0.2) with each norm reprise has.
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    y = torch.tensor([3, 0, 7, 3])
    out["x"], out["y"] = x, y
    # The networks share the convolution and linear weights (stored once, under `step/`); the
    # normalised ones add their norm parameters.
    torch.manual_seed(2)
    base = official.CCF(depth=10, width=1, norm=None, n_classes=10)
    for norm in [None, "batch", "instance"]:
        tag = norm or "none"
        f = official.CCF(depth=10, width=1, norm=norm, n_classes=10)
        f.load_state_dict(base.state_dict(), strict=False)
        if norm is not None:
            # Non-trivial affine parameters and running statistics (defaults 1 and 0).
            with torch.no_grad():
                for k, v in f.state_dict().items():
                    if "bn" in k and v.is_floating_point():
                        v.add_(torch.rand_like(v) * 0.2 if "var" in k else torch.randn_like(v) * 0.1)
                        out[f"{tag}/{k}"] = v.clone()
        f.train()
        out[f"{tag}/logits_train"] = f.classify(x)
        f.eval()
        out[f"{tag}/logits_eval"] = f.classify(x)
        if norm is None:
            out["none/lse"] = f(x)
            out["none/f_xy"] = f(x, y).squeeze(1)

    # One JEM iteration with the official sampler: an unconditional SGLD chain of K steps from
    # replay-buffer slots, then L = CE(f(x_lab), y_lab) − (mean LSE f(x_data) − mean LSE f(x_q)),
    # written as the official main loop writes it, and one Adam step.
    f = base
    for k, v in f.state_dict().items():
        out[f"step/{k}"] = v.clone()
    K, bs = 3, 4
    args = argparse.Namespace(
        n_steps=K, sgld_lr=1.0, sgld_std=0.01, reinit_freq=0.0, batch_size=bs, n_classes=10,
        uncond=False, buffer_size=10,
    )
    buffer = torch.rand(10, 3, 32, 32) * 2 - 1
    inds = torch.tensor([6, 2, 9, 2])
    noise = torch.randn(K, bs, 3, 32, 32)
    out["step/buffer"], out["step/inds"], out["step/noise"] = buffer.clone(), inds, noise
    draws = iter(noise)
    sample_q = official.get_sample_q(args, "cpu")
    with patched(torch, randint=lambda *a, **k: inds.clone(), randn_like=lambda t: next(draws).clone()):
        x_q = sample_q(f, buffer)
    out["step/x_q"], out["step/buffer_after"] = x_q, buffer
    x_lab, y_lab = torch.rand(bs, 3, 32, 32) * 2 - 1, torch.tensor([1, 5, 5, 8])
    x_p_d = torch.rand(bs, 3, 32, 32) * 2 - 1
    out["step/x_lab"], out["step/y_lab"], out["step/x_data"] = x_lab, y_lab, x_p_d
    optim = torch.optim.Adam(f.parameters(), lr=1e-3, betas=[.9, .999], weight_decay=0.0)
    fp, fq = f(x_p_d).mean(), f(x_q).mean()
    L = -(fp - fq)
    L = L + torch.nn.CrossEntropyLoss()(f.classify(x_lab), y_lab)
    optim.zero_grad()
    L.backward()
    out["step/loss"], out["step/fp"], out["step/fq"] = L.reshape(1), fp.reshape(1), fq.reshape(1)
    for k, p in f.named_parameters():
        if p.grad is not None:
            out[f"step/grad/{k}"] = p.grad.clone()
    optim.step()
    for k, p in f.named_parameters():
        out[f"step/after/{k}"] = p.clone()
    save(out, "jem", "official-jem.safetensors", meta)
    sys.path.remove(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jem", help="checkout of wgrathwohl/JEM")
    ap.add_argument("--robustness", help="checkout of MadryLab/robustness")
    ap.add_argument("--transfer", help="checkout of microsoft/robust-models-transfer")
    a = ap.parse_args()
    if a.jem:
        jem(a.jem)


if __name__ == "__main__":
    main()
