#!/usr/bin/env python3
"""Converts a checkpoint of the official JEM code to a safetensors file that reprise loads by name.

Input: a `.pt` file saved by wgrathwohl/JEM's `train_wrn_ebm.py` (`checkpoint`): a dict with
`model_state_dict` (the CCF model: the Wide-ResNet under `f.`, the heads `class_output` and
`energy_output`) and `replay_buffer` (N x 3 x 32 x 32 samples in [-1, 1]).
Output: safetensors with reprise's names (`conv1.weight`, `layer1.0.conv1.weight`, ...,
`class_output.weight`; the `f.` prefix dropped) and the buffer as `replay_buffer`, float32.

    python scripts/convert_jem_ckpt.py CIFAR10_MODEL.pt checkpoints/jem_cifar10.safetensors
    runner run jem/cifar10-eval jem.from=checkpoints/jem_cifar10.safetensors

The checkpoint is read with `weights_only=True`: it holds tensors only, and nothing in it runs.
"""

import argparse
import sys

import torch

from convert_robustness_ckpt import write_safetensors


def convert(ck):
    """reprise's names from an official JEM checkpoint dict."""
    if not isinstance(ck, dict) or "model_state_dict" not in ck:
        raise SystemExit("not a JEM checkpoint: expected a dict with `model_state_dict`")
    out = {}
    for k, v in ck["model_state_dict"].items():
        # The Wide-ResNet's own `linear` head is built but never used (CCF classifies with
        # `class_output` on the features `f` returns).
        if k.endswith("num_batches_tracked") or k.startswith("f.linear."):
            continue
        name = k[2:] if k.startswith("f.") else k
        if not name.startswith(("class_output.", "energy_output.")) and not k.startswith("f."):
            raise SystemExit(f"unexpected key `{k}` (expected `f.*`, `class_output.*`, `energy_output.*`)")
        out[name] = v.float()
    buf = ck.get("replay_buffer")
    if isinstance(buf, torch.Tensor) and buf.numel() > 0:
        out["replay_buffer"] = buf.float()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    a = ap.parse_args()
    ck = torch.load(a.checkpoint, map_location="cpu", weights_only=True)
    tensors = convert(ck)
    write_safetensors(tensors, a.out)
    n = sum(1 for k in tensors if k != "replay_buffer")
    extra = f" and a replay buffer of {tensors['replay_buffer'].shape[0]}" if "replay_buffer" in tensors else ""
    print(f"{a.out}: {n} tensors{extra}", file=sys.stderr)


if __name__ == "__main__":
    main()
