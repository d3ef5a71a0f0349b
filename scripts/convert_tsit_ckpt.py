#!/usr/bin/env python3
"""Puts the official TSIT checkpoints in one safetensors file that reprise maps to its networks.

Input: the state dicts EndlessSora/TSIT saves (`util.save_network`): `latest_net_G.pth`, and
optionally `latest_net_D.pth` and, for semantic synthesis with the VAE, `latest_net_E.pth`.
Output: safetensors with every tensor under `G/`, `D/` or `E/` and its official name, float32;
reprise maps the names (`tsit::official`: FADE blocks by stream level, the γ/β convolutions
fused) when a run loads it.

    python scripts/convert_tsit_ckpt.py --G latest_net_G.pth --E latest_net_E.pth \\
        checkpoints/tsit_cityscapes.safetensors
    runner run tsit/cityscapes-sis tsit.from=checkpoints/tsit_cityscapes.safetensors

The checkpoints are read with `weights_only=True`: they hold tensors only, and nothing in them runs.
"""

import argparse
import sys

import torch

from convert_robustness_ckpt import write_safetensors


def convert(nets):
    """{"G": state_dict, ...} to {"G/name": tensor, ...}."""
    out = {}
    for net, sd in nets.items():
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise SystemExit(f"{net}: not a state dict of tensors")
        for k, v in sd.items():
            if k.endswith("num_batches_tracked"):
                continue
            out[f"{net}/{k}"] = v.float()
    if not any(k.startswith("G/") for k in out):
        raise SystemExit("no generator weights")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--G", required=True, help="latest_net_G.pth")
    ap.add_argument("--D", help="latest_net_D.pth")
    ap.add_argument("--E", help="latest_net_E.pth (the VAE encoder)")
    ap.add_argument("out")
    a = ap.parse_args()
    nets = {n: torch.load(p, map_location="cpu", weights_only=True)
            for n, p in (("G", a.G), ("D", a.D), ("E", a.E)) if p}
    tensors = convert(nets)
    write_safetensors(tensors, a.out)
    print(f"{a.out}: {len(tensors)} tensors from {', '.join(nets)}", file=sys.stderr)


if __name__ == "__main__":
    main()
