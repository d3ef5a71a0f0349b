"""PyTorch-eager twin of reprise's TSIT iteration (style transfer, both streams): a generator step
(hinge + feature matching + perceptual loss, Adam(0, 0.9) at 1e-4) then a discriminator step on a
freshly generated fake (hinge, Adam(0, 0.9) at 4e-4), written the way the official code is: content
and style streams of post-activation residual blocks (instance norm, spectral norm), FADE blocks with
separate gamma/beta 3x3 convolutions per FADE layer, FAdaIN before every block, a 2-scale PatchGAN
with spectral + instance norm, torch.nn.utils.spectral_norm. D's parameters are left trainable during
the generator step, as in the official code (reprise freezes them there).

small: S = 32, nf 16, cap 8, ndf 16, batch 8, VGG-mini loss network.
256:   S = 256, nf 64, cap 16, ndf 64, batch 1, VGG-19's layout (random weights) as the loss network.

usage: python bench/pytorch/ts_step.py [small|256] [ITERS] [THREADS]
Prints the median iteration time in ms.
"""
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm


def act(x):
    return F.leaky_relu(x, 0.2)


class StreamBlock(nn.Module):
    def __init__(self, fin, fout):
        super().__init__()
        self.learned = fin != fout
        self.conv_0 = spectral_norm(nn.Conv2d(fin, fin, 3, padding=1))
        self.conv_1 = spectral_norm(nn.Conv2d(fin, fout, 3, padding=1))
        if self.learned:
            self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1, bias=False))

    def forward(self, x):
        s = act(F.instance_norm(self.conv_s(x))) if self.learned else x
        dx = act(F.instance_norm(self.conv_0(x)))
        dx = act(F.instance_norm(self.conv_1(dx)))
        return s + dx


class Stream(nn.Module):
    def __init__(self, inc, ch):
        super().__init__()
        self.blocks = nn.ModuleList(StreamBlock(inc if i == 0 else ch[i - 1], c) for i, c in enumerate(ch))

    def forward(self, x):
        out = []
        for i, b in enumerate(self.blocks):
            x = b(x if i == 0 else F.interpolate(x, scale_factor=0.5, mode="nearest"))
            out.append(x)
        return out


class Fade(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = nn.BatchNorm2d(c, affine=False)
        self.gamma = nn.Conv2d(c, c, 3, padding=1)
        self.beta = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, f):
        return self.norm(x) * (1 + self.gamma(f)) + self.beta(f)


class FadeBlock(nn.Module):
    def __init__(self, fin, fout):
        super().__init__()
        self.learned = fin != fout
        self.conv_0 = spectral_norm(nn.Conv2d(fin, fin, 3, padding=1))
        self.conv_1 = spectral_norm(nn.Conv2d(fin, fout, 3, padding=1))
        self.norm_0, self.norm_1 = Fade(fin), Fade(fin)
        if self.learned:
            self.conv_s = spectral_norm(nn.Conv2d(fin, fout, 1, bias=False))
            self.norm_s = Fade(fin)

    def forward(self, x, f):
        s = self.conv_s(self.norm_s(x, f)) if self.learned else x
        dx = self.conv_0(act(self.norm_0(x, f)))
        dx = self.conv_1(act(self.norm_1(dx, f)))
        return s + dx


def mean_std(x):
    n, c = x.shape[:2]
    v = x.view(n, c, -1).var(dim=2) + 1e-5
    return x.view(n, c, -1).mean(dim=2).view(n, c, 1, 1), v.sqrt().view(n, c, 1, 1)


def fadain(x, s):
    mx, sx = mean_std(x)
    ms, ss = mean_std(s)
    return (x - mx) / sx * ss + ms


class Tsit(nn.Module):
    def __init__(self, size, nf, cap):
        super().__init__()
        levels = size.bit_length() - 1
        ch = [nf * min(2 ** i, cap) for i in range(levels)]
        self.content, self.style = Stream(3, ch), Stream(3, ch)
        self.fc = nn.Conv2d(3, ch[-1], 3, padding=1)
        self.blocks = nn.ModuleList(FadeBlock(ch[j], ch[j - 1]) for j in range(1, levels))
        self.conv_img = nn.Conv2d(ch[0], 3, 3, padding=1)
        self.levels = levels

    def forward(self, content, style, z):
        cf, sf = self.content(content), self.style(style)
        x = self.fc(z)
        for j in range(self.levels - 1, 0, -1):
            if j < self.levels - 1:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = fadain(x, sf[j])
            x = self.blocks[j - 1](x, cf[j])
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return torch.tanh(self.conv_img(act(x)))


class PatchGan(nn.Module):
    def __init__(self, ndf, n_layers=3):
        super().__init__()
        seq = [nn.Sequential(nn.Conv2d(3, ndf, 4, 2, 2), nn.LeakyReLU(0.2))]
        nf = ndf
        for n in range(1, n_layers):
            prev, nf = nf, min(nf * 2, 512)
            stride = 1 if n == n_layers - 1 else 2
            seq.append(nn.Sequential(spectral_norm(nn.Conv2d(prev, nf, 4, stride, 2, bias=False)),
                                     nn.InstanceNorm2d(nf), nn.LeakyReLU(0.2)))
        seq.append(nn.Sequential(nn.Conv2d(nf, 1, 4, 1, 2)))
        self.seq = nn.ModuleList(seq)

    def forward(self, x):
        out = []
        for m in self.seq:
            x = m(x)
            out.append(x)
        return out


class MultiD(nn.Module):
    def __init__(self, ndf):
        super().__init__()
        self.ds = nn.ModuleList([PatchGan(ndf), PatchGan(ndf)])

    def forward(self, x):
        out = []
        for i, d in enumerate(self.ds):
            if i > 0:
                x = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
            out.append(d(x))
        return out


class Vgg(nn.Module):
    """Convolutions with a max-pool after the marked ones; features at the tapped ReLUs."""

    def __init__(self, chans, pools, taps):
        super().__init__()
        convs, c = [], 3
        for o in chans:
            convs.append(nn.Conv2d(c, o, 3, padding=1))
            c = o
        self.convs, self.pools, self.taps = nn.ModuleList(convs), pools, taps
        for p in self.parameters():
            p.requires_grad = False

    def forward(self, x):
        out, last = [], self.taps[-1][0]
        for i, conv in enumerate(self.convs[: last + 1]):
            x = F.relu(conv(x))
            if any(t[0] == i for t in self.taps):
                out.append(x)
            if self.pools[i] and i < last:
                x = F.max_pool2d(x, 2)
        return out

    def loss(self, a, b):
        fa, fb = self(a), self(b)
        return sum(w * F.l1_loss(x, y.detach()) for (x, y, (_, w)) in zip(fa, fb, self.taps))


def main():
    a = sys.argv[1:]
    paper = bool(a) and a[0] == "256"
    iters = int(a[1]) if len(a) > 1 else 20
    torch.set_num_threads(int(a[2]) if len(a) > 2 else 1)
    torch.manual_seed(0)
    if paper:
        size, nf, cap, ndf, batch, lvgg = 256, 64, 16, 64, 1, 1.0
        vgg = Vgg([64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512],
                  [False, True, False, True, False, False, False, True, False, False, False, True, False],
                  [(0, 1 / 32), (2, 1 / 16), (4, 1 / 8), (8, 1 / 4), (12, 1.0)])
    else:
        size, nf, cap, ndf, batch, lvgg = 32, 16, 8, 16, 8, 0.25
        vgg = Vgg([16, 16, 32, 32, 64, 64, 128], [False, True, False, True, False, True, False],
                  [(1, 1 / 8), (3, 1 / 4), (5, 1 / 2), (6, 1.0)])
    g, d = Tsit(size, nf, cap), MultiD(ndf)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-4, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(d.parameters(), lr=4e-4, betas=(0.0, 0.9))
    x = torch.rand(batch, 3, size, size) * 2 - 1
    s = torch.rand(batch, 3, size, size) * 2 - 1
    warmup = 1 if paper else 5
    times = []
    for i in range(warmup + iters):
        t = time.perf_counter()
        # Generator step.
        fake = g(x, s, torch.randn(batch, 3, 2, 2))
        pred = d(torch.cat([fake, s], 0))
        gan = sum(-p[-1][:batch].mean() for p in pred) / len(pred)
        fm = sum(F.l1_loss(f[:batch], f[batch:].detach()) for p in pred for f in p[:-1]) / len(pred)
        loss = gan + fm + lvgg * vgg.loss(fake, x)
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
        # Discriminator step on a fresh fake.
        with torch.no_grad():
            fake = g(x, s, torch.randn(batch, 3, 2, 2))
        pred = d(torch.cat([fake, s], 0))
        d_loss = sum(F.relu(1 + p[-1][:batch]).mean() + F.relu(1 - p[-1][batch:]).mean() for p in pred) / len(pred)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1000)
    times.sort()
    print(f"{times[len(times) // 2]:.4f}")


if __name__ == "__main__":
    main()
