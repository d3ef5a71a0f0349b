#!/usr/bin/env python3
"""Converts pytorch-fid's Inception-v3 weights to a safetensors file reprise loads by name.

Input: `pt_inception-2015-12-05-6726825d.pth`, the state dict pytorch-fid downloads for its
FID Inception (torchvision's Inception3 names: `Conv2d_1a_3x3.conv.weight`, `Mixed_5b.*`, `fc.*`).
Output: the same names, float32 (`reprise_core::inception::FidInception` ignores `fc`).

    python scripts/convert_fid_inception.py pt_inception-2015-12-05-6726825d.pth data/fid_inception.safetensors

The file is read with `weights_only=True`: it holds tensors only, and nothing in it runs.
"""

import argparse
import sys

import torch

from convert_robustness_ckpt import write_safetensors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights")
    ap.add_argument("out")
    a = ap.parse_args()
    sd = torch.load(a.weights, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or "Conv2d_1a_3x3.conv.weight" not in sd:
        raise SystemExit("not pytorch-fid's Inception state dict (no Conv2d_1a_3x3.conv.weight)")
    out = {k: v.float() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    write_safetensors(out, a.out)
    print(f"{a.out}: {len(out)} tensors", file=sys.stderr)


if __name__ == "__main__":
    main()
