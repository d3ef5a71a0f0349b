"""PyTorch-eager twin of reprise's `loader_epoch` example: median milliseconds of one epoch of a
DataLoader over a TensorDataset (shuffled, batch 64, last partial batch dropped, no worker
processes), with the same augmentation applied to each batch in the loop.

usage: python bench/pytorch/loader_epoch.py DATASET AUG [EPOCHS] [THREADS] [BATCH]
"""
import statistics
import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset


def augment(x, how, g):
    if how == "noise":
        return x + 0.03 * torch.randn(x.shape, generator=g)
    if how == "crop-flip":
        n, _, h, w = x.shape
        p = torch.nn.functional.pad(x, (2, 2, 2, 2))
        off = torch.randint(0, 5, (n, 2), generator=g).tolist()
        x = torch.stack([p[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(off)])
        flip = torch.rand(n, generator=g) < 0.5
        x[flip] = x[flip].flip(3)
        return x
    return x


def main():
    a = sys.argv[1:]
    dataset = a[0] if a else "digits"
    how = a[1] if len(a) > 1 else "plain"
    epochs = int(a[2]) if len(a) > 2 else 20
    torch.set_num_threads(int(a[3]) if len(a) > 3 else 1)
    batch = int(a[4]) if len(a) > 4 else 64
    n, side = {"digits": (1437, 8), "mnist-5k": (4000, 28)}[dataset]
    x = torch.rand(n, 1, side, side)
    y = torch.randint(0, 10, (n,))
    g = torch.Generator().manual_seed(0)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    times = []
    for i in range(1 + epochs):
        t = time.perf_counter()
        for bx, by in loader:
            bx = augment(bx, how, g)
        if i >= 1:
            times.append((time.perf_counter() - t) * 1000)
    print(f"{statistics.median(times):.4f}")


if __name__ == "__main__":
    main()
