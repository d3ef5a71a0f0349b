#!/usr/bin/env python3
"""Converts a robust ImageNet checkpoint to a safetensors file that reprise loads by name.

Input: a checkpoint of the robustness library (a pickle holding `model` or `state_dict`, keys
prefixed `module.model.` for the weights, `module.attacker.model.` for a duplicate and
`module.normalizer.` for the normaliser), or a plain torchvision state dict (`.pth`).
Output: safetensors with torchvision's parameter names (`conv1.weight`, `layer1.0.bn1.running_mean`,
..., `fc.weight`), float32. The attacker's duplicate and the normaliser are dropped (reprise's
normaliser comes from the spec).

    python scripts/convert_robustness_ckpt.py resnet50_l2_eps3.ckpt checkpoints/resnet50_l2_eps3.safetensors

The checkpoint is read with `weights_only=True` (tensors, numbers and containers only; nothing
in it runs), which the robustness library's checkpoints (`model`, `optimizer`, `schedule`,
`epoch`) satisfy. A file that needs a full unpickler is refused unless `--trust-pickle` is given
(then dill is used when installed, for checkpoints pickled with it): only for a file whose
origin you trust, since unpickling can run code.

Needs only torch.
"""

import argparse
import json
import re
import struct
import sys

import torch

DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64", torch.float16: "F16"}
NAMES = {v: k for k, v in DTYPES.items()}


def write_safetensors(tensors, path):
    """Writes {name: tensor} in the safetensors format (little-endian, row-major)."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        data = t.numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """Reads a safetensors file into {name: tensor}."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        a, b = h["data_offsets"]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=NAMES[h["dtype"]])
        out[name] = t.reshape(h["shape"]).clone()
    return out


def load_state_dict(path, trust_pickle=False):
    if trust_pickle:
        try:
            import dill as pickle_module  # the robustness library pickles with dill
        except ImportError:
            import pickle as pickle_module
        ck = torch.load(path, map_location="cpu", weights_only=False, pickle_module=pickle_module)
    else:
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError (or a RuntimeError) for what it refuses
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
            first = text.splitlines()[0] if text else type(e).__name__
            sys.exit(f"{path}: not loadable with weights_only=True ({first}); if you trust the "
                     "file's origin, convert it with --trust-pickle (unpickling can run code)")
    if isinstance(ck, dict):
        for key in ("model", "state_dict"):
            if key in ck and isinstance(ck[key], dict):
                return ck[key]
    return ck


def convert(sd):
    """torchvision names from a robustness-library (or plain) state dict."""
    prefixed = [k for k in sd if k.startswith("module.model.")]
    if prefixed:
        sd = {k[len("module.model."):]: v for k, v in sd.items() if k.startswith("module.model.")}
    else:
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()
              if "attacker." not in k and "normalizer." not in k}
    out = {}
    for k, v in sd.items():
        if not torch.is_tensor(v) or k.endswith("num_batches_tracked"):
            continue
        out[k] = v.float()
    if "conv1.weight" not in out or "fc.weight" not in out:
        sys.exit("no torchvision ResNet weights found (expected conv1.weight and fc.weight)")
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("output")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load with a full unpickler (dill if installed): only for a file you trust")
    a = p.parse_args()
    out = convert(load_state_dict(a.checkpoint, a.trust_pickle))
    write_safetensors(out, a.output)
    n = sum(v.numel() for k, v in out.items() if "running" not in k)
    print(f"{a.output}: {len(out)} tensors, {n:,} parameters, fc {tuple(out['fc.weight'].shape)}")


if __name__ == "__main__":
    main()
