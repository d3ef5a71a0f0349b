"""PyTorch-eager twin of one JEM training iteration (the same model, shapes and algorithm as
reprise's `jem` crate): two data batches, K SGLD steps with input-only gradients, the loss
L = mean LSE f(x_q) - mean LSE f(x_d) + CE(f(x_l), y_l), Adam.

usage: python bench/pytorch/jem_step.py [--arch cnn|mlp|wrn] [--steps K] [--iters N] [--threads T] [--device cuda]
Prints the median milliseconds per iteration.
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Cnn(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, 1, 1)
        self.c2 = nn.Conv2d(16, 32, 3, 2, 1)
        self.c3 = nn.Conv2d(32, 32, 3, 2, 1)
        self.f1 = nn.Linear(32 * 7 * 7, 64)
        self.f2 = nn.Linear(64, 10)

    def forward(self, x):
        a = lambda t: F.leaky_relu(t, 0.2)
        x = a(self.c3(a(self.c2(a(self.c1(x))))))
        return self.f2(a(self.f1(x.flatten(1))))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.ModuleList([nn.Linear(64, 256), nn.Linear(256, 256), nn.Linear(256, 10)])

    def forward(self, x):
        h = x.flatten(1)
        for i, l in enumerate(self.l):
            h = l(h)
            if i < 2:
                h = F.leaky_relu(h, 0.2)
        return h


class WideBasic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1)
        self.short = nn.Conv2d(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        a = lambda t: F.leaky_relu(t, 0.2)
        h = self.conv2(a(self.conv1(a(x))))
        return h + (self.short(x) if self.short is not None else x)


class Wrn(nn.Module):
    """JEM's WRN-28-10: pre-activation, stride on conv2, biases, no norm, LeakyReLU 0.2."""

    def __init__(self, depth=28, widen=10):
        super().__init__()
        n = (depth - 4) // 6
        w = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1)
        blocks, cin = [], 16
        for s, cout in enumerate(w[1:]):
            for b in range(n):
                blocks.append(WideBasic(cin, cout, 2 if s > 0 and b == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, 10)
        self.energy = nn.Linear(cin, 1)

    def forward(self, x):
        h = F.leaky_relu(self.blocks(self.conv1(x)), 0.2)
        return self.fc(F.avg_pool2d(h, 8).flatten(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="cnn", help="cnn | mlp | wrn (WRN-28-10)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--what", default="iter", help="iter: a JEM iteration; sgld: one SGLD step; "
                    "fwdbwd: the SGLD step's forward with a full backward (input and parameters)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    f = {"cnn": Cnn, "mlp": Mlp, "wrn": Wrn}[a.arch]().to(dev)
    shape = {"cnn": (1, 28, 28), "mlp": (1, 8, 8), "wrn": (3, 32, 32)}[a.arch]
    opt = torch.optim.Adam(f.parameters(), lr=1e-4)
    data = torch.rand(4000 if a.arch != "wrn" else 256, *shape, device=dev) * 2 - 1
    labels = torch.randint(0, 10, (data.shape[0],), device=dev)
    buffer = torch.rand(2000, *shape) * 2 - 1
    times = []
    B = a.batch
    xs = torch.rand(B, *shape, device=dev) * 2 - 1
    for it in range(a.iters + 3):
        t0 = time.perf_counter()
        if a.what == "sgld":
            f.eval()
            x = xs.detach().requires_grad_(True)
            g = torch.autograd.grad(f(x).logsumexp(1).sum(), [x])[0]
            x = (x + g + 0.01 * torch.randn_like(x)).detach()
            if it >= 3:
                times.append((time.perf_counter() - t0) * 1000)
            continue
        if a.what == "fwdbwd":
            f.eval()
            x = xs.detach().requires_grad_(True)
            torch.autograd.grad(f(x).logsumexp(1).sum(), [x] + list(f.parameters()))
            if it >= 3:
                times.append((time.perf_counter() - t0) * 1000)
            continue
        i = torch.randint(0, data.shape[0], (B,))
        j = torch.randint(0, data.shape[0], (B,))
        x_l, y_l = data[i] + 0.03 * torch.randn(B, *shape, device=dev), labels[i]
        x_d = data[j] + 0.03 * torch.randn(B, *shape, device=dev)
        slots = torch.randint(0, 2000, (B,))
        x = buffer[slots].to(dev)
        fresh = torch.rand(B) < 0.05
        x[fresh] = (torch.rand(int(fresh.sum()), *shape) * 2 - 1).to(dev)
        f.eval()
        for _ in range(a.steps):
            x = x.detach().requires_grad_(True)
            g = torch.autograd.grad(f(x).logsumexp(1).sum(), [x])[0]
            x = (x + g + 0.01 * torch.randn_like(x)).detach()
        f.train()
        buffer[slots] = x.cpu()
        loss = f(x).logsumexp(1).mean() - f(x_d).logsumexp(1).mean() + F.cross_entropy(f(x_l), y_l)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if it >= 3:
            times.append((time.perf_counter() - t0) * 1000)
    print(f"{statistics.median(times):.2f}")


if __name__ == "__main__":
    main()
