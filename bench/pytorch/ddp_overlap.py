"""PyTorch twin of `crates/robust-transfer/examples/ddp_overlap.rs`: one data-parallel training
step (forward, cross-entropy, backward, SGD with momentum 0.9 and weight decay 5e-4) of a ResNet
under DistributedDataParallel on Gloo (which overlaps the buckets' all-reduces with the
backward), or, with REPRISE_GRAD_SYNC=after-backward, under DDP's no_sync with one all-reduce per
gradient after the backward. Rank 0 prints the median, fastest and slowest step in ms.

usage: torchrun --nproc_per_node 2 bench/pytorch/ddp_overlap.py [r18|r50] [PER_RANK_BATCH] [SIZE] [ITERS] [THREADS]
"""
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from rt_step import ResNet50  # noqa: E402


class Basic(nn.Module):
    def __init__(self, inp, planes, stride):
        super().__init__()
        self.c1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(planes)
        self.c2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(planes)
        self.down = None
        if stride != 1 or inp != planes:
            self.down = nn.Sequential(
                nn.Conv2d(inp, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """torchvision's resnet18 layout (7x7 stem, max-pool, [2, 2, 2, 2] basic blocks)."""

    def __init__(self, classes=1000):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        layers, inp = [], 64
        for planes, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [Basic(inp, planes, stride), Basic(planes, planes, 1)]
            inp = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main():
    a = sys.argv[1:]
    arch = a[0] if len(a) > 0 else "r18"
    batch = int(a[1]) if len(a) > 1 else 8
    size = int(a[2]) if len(a) > 2 else 32
    iters = int(a[3]) if len(a) > 3 else 20
    threads = int(a[4]) if len(a) > 4 else 1
    torch.set_num_threads(threads)
    dist.init_process_group("gloo")
    after = os.environ.get("REPRISE_GRAD_SYNC") == "after-backward"
    net = ResNet18() if arch == "r18" else ResNet50()
    ddp = nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(batch, 3, size, size)
    y = torch.randint(1000, (batch,))
    world = dist.get_world_size()

    def step():
        opt.zero_grad()
        if after:
            with ddp.no_sync():
                F.cross_entropy(ddp(x), y).backward()
            for p in ddp.parameters():
                dist.all_reduce(p.grad)
                p.grad /= world
        else:
            F.cross_entropy(ddp(x), y).backward()
        opt.step()

    times = []
    for i in range(3 + iters):
        t = time.perf_counter()
        step()
        if i >= 3:
            times.append((time.perf_counter() - t) * 1000)
    if dist.get_rank() == 0:
        n = sum(p.numel() for p in net.parameters())
        mode = "after-backward" if after else "reducer"
        print(
            f"PyTorch: {world} ranks, {arch}, {n} parameters, batch {batch}/rank at {size}px, "
            f"{threads} thread(s): {mode} step {statistics.median(times):.1f} ms "
            f"(min {min(times):.1f}, max {max(times):.1f}, {iters} steps)"
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
