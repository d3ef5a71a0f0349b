"""PyTorch-eager twin of reprise's deepthin steps: one imitation step (block 8 of a depth-16 MLP,
thin 16, wide 256: M_down -> Linear+ReLU -> M_up, MSE to the teacher's block output, Adam over the
three maps) or one distillation step (the whole thin depth-16 MLP, KL at T = 1, Adam), batch 128.
Prints the median step time in ms.

usage: python bench/pytorch/dt_step.py [imitate|kd] [ITERS] [THREADS]
"""
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def main():
    a = sys.argv[1:]
    what = a[0] if a else "imitate"
    iters = int(a[1]) if len(a) > 1 else 200
    torch.set_num_threads(int(a[2]) if len(a) > 2 else 1)
    depth, thin, wide, batch = 16, 16, 256, 128
    layers = [nn.Linear(784, thin)] + [nn.Linear(thin, thin) for _ in range(depth - 1)]
    head = nn.Linear(thin, 10)
    down, up = nn.Linear(wide, thin), nn.Linear(thin, wide)
    x = torch.rand(batch, 784)
    u = torch.randn(batch, wide)
    target = torch.randn(batch, wide)
    teacher = torch.randn(batch, 10)
    if what == "kd":
        params = [p for l in layers + [head] for p in l.parameters()]
    else:
        params = list(down.parameters()) + list(layers[7].parameters()) + list(up.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    times = []
    for i in range(iters + 10):
        t = time.perf_counter()
        if what == "kd":
            h = x
            for l in layers:
                h = F.relu(l(h))
            z = head(h)
            lt = F.log_softmax(teacher, 1)
            loss = (lt.exp() * (lt - F.log_softmax(z, 1))).sum(1).mean()
        else:
            loss = F.mse_loss(up(F.relu(layers[7](down(u)))), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 10:
            times.append((time.perf_counter() - t) * 1000)
    times.sort()
    print(f"{times[len(times) // 2]:.4f}")


if __name__ == "__main__":
    main()
