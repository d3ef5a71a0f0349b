"""PyTorch-eager twin of reprise's robust-transfer training step: PGD-k (L2, eps 1, step 2eps/3,
use-best, no random start) with the model in eval mode, then one SGD step (momentum 0.9,
wd 5e-4) on the adversarial batch in train mode. Prints the median step time in ms.

usage: python bench/pytorch/rt_step.py [small|r50] [K] [ITERS] [THREADS] [BATCH] [SIZE]
(the same arguments as `cargo run --release -p robust-transfer --example step_time`)
"""
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class SmallCnn(nn.Module):
    def __init__(self, classes=5, w=1):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16 * w, 3, 1, 1)
        self.c2 = nn.Conv2d(16 * w, 32 * w, 3, 2, 1)
        self.c3 = nn.Conv2d(32 * w, 64 * w, 3, 2, 1)
        self.fc = nn.Linear(64 * w, classes)

    def forward(self, x):
        h = F.relu(self.c3(F.relu(self.c2(F.relu(self.c1(x))))))
        return self.fc(h.mean((2, 3)))


class Bottleneck(nn.Module):
    def __init__(self, inp, planes, stride):
        super().__init__()
        out = planes * 4
        self.conv1, self.bn1 = nn.Conv2d(inp, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
        self.down = None
        if stride != 1 or inp != out:
            self.down = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + (x if self.down is None else self.down(x)))


class ResNet50(nn.Module):
    """torchvision's resnet50 layout (torchvision itself is not in the venv)."""

    def __init__(self, classes=1000):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        layers, inp = [], 64
        for i, n in enumerate([3, 4, 6, 3]):
            planes = 64 << i
            for b in range(n):
                layers.append(Bottleneck(inp, planes, 2 if i > 0 and b == 0 else 1))
                inp = planes * 4
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(2048, classes)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        return self.fc(self.layers(h).mean((2, 3)))


def pgd_l2(model, x, y, eps, step, steps):
    """The robustness library's L2 PGD with use_best; input-only gradients."""
    x0 = x.detach()
    xa = x0.clone()
    best_loss, best_x = None, None

    def track(losses, xa):
        nonlocal best_loss, best_x
        if best_loss is None:
            best_loss, best_x = losses.clone(), xa.clone()
        else:
            rep = best_loss < losses
            best_x[rep] = xa[rep]
            best_loss[rep] = losses[rep]

    for _ in range(steps):
        xa = xa.detach().requires_grad_(True)
        losses = F.cross_entropy(model(xa), y, reduction="none")
        (g,) = torch.autograd.grad(losses.mean(), [xa])
        with torch.no_grad():
            track(losses.detach(), xa.detach())
            gn = g.reshape(g.shape[0], -1).norm(dim=1).view(-1, 1, 1, 1)
            xa = xa + step * g / (gn + 1e-10)
            d = (xa - x0).renorm(p=2, dim=0, maxnorm=eps)
            xa = (x0 + d).clamp(0, 1)
    with torch.no_grad():
        track(F.cross_entropy(model(xa), y, reduction="none"), xa)
    return best_x


def main():
    a = sys.argv[1:]
    arch = a[0] if a else "small"
    k = int(a[1]) if len(a) > 1 else 3
    iters = int(a[2]) if len(a) > 2 else 20
    threads = int(a[3]) if len(a) > 3 else 1
    batch = int(a[4]) if len(a) > 4 else 32
    torch.set_num_threads(threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if arch == "r50":
        net, chans, size, classes = ResNet50(), 3, 224, 1000
        norm = Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    else:
        net, chans, size, classes = SmallCnn(), 1, 28, 5
        norm = Normalize([0.1307], [0.3081])
    size = int(a[5]) if len(a) > 5 else size
    # train: the training step; attack: the k-step attack alone; fwdbwd: the attack's loss with a
    # full backward (input and parameters)
    what = a[6] if len(a) > 6 else "train"
    model = nn.Sequential(norm, net).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(batch, chans, size, size, device=dev)
    y = torch.randint(classes, (batch,), device=dev)
    times = []
    for i in range(iters + 3):
        t = time.perf_counter()
        if what == "attack":
            model.eval()
            pgd_l2(model, x, y, 1.0, 2.0 / 3.0, k)
        elif what == "fwdbwd":
            model.eval()
            xg = x.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(xg), y), [xg] + list(model.parameters()))
        elif k > 0:
            model.eval()
            xa = pgd_l2(model, x, y, 1.0, 2.0 / 3.0, k)
        else:
            xa = x
        if what == "train":
            model.train()
            loss = F.cross_entropy(model(xa), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append((time.perf_counter() - t) * 1000)
    times.sort()
    print(f"{times[len(times) // 2]:.2f}")


if __name__ == "__main__":
    main()
