"""Equivalence fixtures: what the papers' official code computes, at reduced width.

Run with a PyTorch 2.11 that also has torchvision (and tqdm, which the JEM trainer imports), giving a
local checkout of each official repository (their code is imported from there, never copied here):

    python scripts/make_official_fixtures.py --jem PATH/JEM --robustness PATH/robustness \
        --transfer PATH/robust-models-transfer --tsit PATH/TSIT --draws PATH/robustness

(the robustness library also imports dill, pandas, cox and tensorboardX). It writes safetensors files
under crates/<paper>/tests/fixtures/ that the Rust tests crates/{jem,robust-transfer,tsit}/tests/official.rs
load and compare to 1e-5 (relative, float32). Weights carry the official parameter names; every random number of a step (SGLD
noise, buffer indices, PGD random starts, crop boxes, jitter factors) is drawn here and stored, so the Rust
side consumes the same numbers. Each file's metadata names the commit of the official repository that
produced it. The fixtures this script wrote last were made from:

    wgrathwohl/JEM              3d01161 (train_wrn_ebm.py: CCF, get_sample_q; wideresnet.py)
    MadryLab/robustness         a954124 (attacker.py: Attacker; attack_steps.py; data_augmentation.py;
                                         imagenet_models/resnet.py: BasicBlock, Bottleneck)
    microsoft/robust-models-transfer  cea2c37 (src/utils/constants.py, fine_tunify.py; src/main.py: freeze_model)
    EndlessSora/TSIT            69c0f42 (models/pix2pix_model.py: Pix2PixModel; trainers/pix2pix_trainer.py steps)
"""
import argparse
import contextlib
import os
import subprocess
import sys

import torch

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commit(path):
    try:
        return subprocess.check_output(["git", "-C", path, "rev-parse", "HEAD"], text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def save(tensors, paper, name, meta):
    from safetensors.torch import save_file

    out = os.path.join(ROOT, "crates", paper, "tests", "fixtures")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name)
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    save_file(tensors, path, metadata={k: str(v) for k, v in meta.items()})
    print(f"{path}: {len(tensors)} tensors, {os.path.getsize(path) / 1e6:.2f} MB")


@contextlib.contextmanager
def patched(module, **fns):
    old = {k: getattr(module, k) for k in fns}
    for k, v in fns.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(module, k, v)


# ---------------------------------------------------------------------------------------------
# JEM (wgrathwohl/JEM)


def jem(path):
    sys.path.insert(0, path)
    import train_wrn_ebm as official  # noqa: E402  (CCF, get_sample_q)

    meta = {"repository": "wgrathwohl/JEM", "commit": commit(path), "depth": 10, "widen": 1}
    out = {}
    torch.manual_seed(0)
    # Forward passes of the official Wide-ResNet (LeakyReLU 0.2) with each norm reprise has.
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    y = torch.tensor([3, 0, 7, 3])
    out["x"], out["y"] = x, y
    # The networks share the convolution and linear weights (stored once, under `step/`); the
    # normalised ones add their norm parameters.
    torch.manual_seed(2)
    base = official.CCF(depth=10, width=1, norm=None, n_classes=10)
    for norm in [None, "batch", "instance"]:
        tag = norm or "none"
        f = official.CCF(depth=10, width=1, norm=norm, n_classes=10)
        f.load_state_dict(base.state_dict(), strict=False)
        if norm is not None:
            # Non-trivial affine parameters and running statistics (defaults 1 and 0).
            with torch.no_grad():
                for k, v in f.state_dict().items():
                    if "bn" in k and v.is_floating_point():
                        v.add_(torch.rand_like(v) * 0.2 if "var" in k else torch.randn_like(v) * 0.1)
                        out[f"{tag}/{k}"] = v.clone()
        f.train()
        out[f"{tag}/logits_train"] = f.classify(x)
        f.eval()
        out[f"{tag}/logits_eval"] = f.classify(x)
        if norm is None:
            out["none/lse"] = f(x)
            out["none/f_xy"] = f(x, y).squeeze(1)

    # One JEM iteration with the official sampler: an unconditional SGLD chain of K steps from
    # replay-buffer slots, then L = CE(f(x_lab), y_lab) − (mean LSE f(x_data) − mean LSE f(x_q)),
    # written as the official main loop writes it, and one Adam step.
    f = base
    for k, v in f.state_dict().items():
        out[f"step/{k}"] = v.clone()
    import copy  # noqa: E402
    f64 = copy.deepcopy(f).double()
    # The paper's K = 20: long enough that a 1 % error in the step size moves the samples
    # beyond the tolerance (3 steps moved them by 8.5e-4 in all, too little to see one).
    K, bs = 20, 4
    args = argparse.Namespace(
        n_steps=K, sgld_lr=1.0, sgld_std=0.01, reinit_freq=0.0, batch_size=bs, n_classes=10,
        uncond=False, buffer_size=10,
    )
    buffer = torch.rand(10, 3, 32, 32) * 2 - 1
    inds = torch.tensor([6, 2, 9, 2])
    noise = torch.randn(K, bs, 3, 32, 32)
    out["step/buffer"], out["step/inds"], out["step/noise"] = buffer.clone(), inds, noise
    draws = iter(noise)
    sample_q = official.get_sample_q(args, "cpu")
    with patched(torch, randint=lambda *a, **k: inds.clone(), randn_like=lambda t: next(draws).clone()):
        x_q = sample_q(f, buffer)
    out["step/x_q"], out["step/buffer_after"] = x_q, buffer
    x_lab, y_lab = torch.rand(bs, 3, 32, 32) * 2 - 1, torch.tensor([1, 5, 5, 8])
    x_p_d = torch.rand(bs, 3, 32, 32) * 2 - 1
    out["step/x_lab"], out["step/y_lab"], out["step/x_data"] = x_lab, y_lab, x_p_d
    optim = torch.optim.Adam(f.parameters(), lr=1e-3, betas=[.9, .999], weight_decay=0.0)
    fp, fq = f(x_p_d).mean(), f(x_q).mean()
    L = -(fp - fq)
    L = L + torch.nn.CrossEntropyLoss()(f.classify(x_lab), y_lab)
    optim.zero_grad()
    L.backward()
    out["step/loss"], out["step/fp"], out["step/fq"] = L.reshape(1), fp.reshape(1), fq.reshape(1)
    for k, p in f.named_parameters():
        if p.grad is not None:
            out[f"step/grad/{k}"] = p.grad.clone()
    optim.step()
    for k, p in f.named_parameters():
        out[f"step/after/{k}"] = p.clone()
    # The same iteration in float64 from the same state and draws: each quantity's float32
    # rounding (its distance to the float64 value, relative to the float64 one's largest
    # magnitude), from which the Rust test derives its tolerances.
    def spread(a, b):
        b = b.detach().double()
        return ((a.detach().double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).float().reshape(1)

    buffer64 = out["step/buffer"].double()
    draws64 = iter(noise.double())
    with patched(torch, randint=lambda *a, **k: inds.clone(), randn_like=lambda t: next(draws64).clone()):
        x_q64 = sample_q(f64, buffer64)
    optim64 = torch.optim.Adam(f64.parameters(), lr=1e-3, betas=[.9, .999], weight_decay=0.0)
    fp64, fq64 = f64(x_p_d.double()).mean(), f64(x_q64).mean()
    L64 = -(fp64 - fq64) + torch.nn.CrossEntropyLoss()(f64.classify(x_lab.double()), y_lab)
    optim64.zero_grad()
    L64.backward()
    out["step/spread/x_q"] = spread(x_q, x_q64)
    out["step/spread/loss"], out["step/spread/fp"] = spread(L, L64), spread(fp, fp64)
    out["step/spread/fq"] = spread(fq, fq64)
    for k, p in f64.named_parameters():
        if p.grad is not None:
            out[f"step/spread/grad/{k}"] = spread(out[f"step/grad/{k}"], p.grad)
    optim64.step()
    for k, p in f64.named_parameters():
        out[f"step/spread/after/{k}"] = spread(out[f"step/after/{k}"], p)
    save(out, "jem", "official-jem.safetensors", meta)
    sys.path.remove(path)


# ---------------------------------------------------------------------------------------------
# Robust transfer (MadryLab/robustness, microsoft/robust-models-transfer)

WIDTH_DIV, BLOCKS = 8, [1, 1, 1, 1]  # ResNet-18's BasicBlock at base width 8, one block a stage
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CIFAR10_MEAN, CIFAR10_STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]


def narrowed_nn(div):
    """torch.nn with Conv2d, BatchNorm2d and Linear narrowed `div`-fold (3 input channels and the
    head's outputs kept), to patch into a module that builds its network from `nn`."""
    narrow = lambda c: c if c == 3 else c // div

    class Conv2d(torch.nn.Conv2d):
        def __init__(self, i, o, *a, **k):
            super().__init__(narrow(i), narrow(o), *a, **k)

    class BatchNorm2d(torch.nn.BatchNorm2d):
        def __init__(self, c, *a, **k):
            super().__init__(narrow(c), *a, **k)

    class Linear(torch.nn.Linear):
        def __init__(self, i, o, *a, **k):
            super().__init__(narrow(i), o, *a, **k)

    nn = argparse.Namespace(**{k: getattr(torch.nn, k) for k in dir(torch.nn) if not k.startswith("_")})
    nn.Conv2d, nn.BatchNorm2d, nn.Linear = Conv2d, BatchNorm2d, Linear
    return nn


def randomise_batch_norms(net):
    """Non-trivial batch-norm parameters and running statistics (the defaults are 1 and 0)."""
    with torch.no_grad():
        for k, v in net.state_dict().items():
            if "bn" in k or "downsample.1" in k:
                if k.endswith("running_var"):
                    v.copy_(0.5 + torch.rand_like(v))
                elif v.is_floating_point():
                    v.add_(torch.randn_like(v) * 0.1)


def official_network(official_resnet, AttackerModel, block, classes, seed, mean, std):
    """The official ResNet with `block`s, one block a stage, every width divided by WIDTH_DIV: the
    module's nn.Conv2d, BatchNorm2d and Linear are narrowed (3 input channels kept), so the class's
    own code builds and runs it; with non-trivial batch-norm parameters and running statistics."""
    torch.manual_seed(seed)
    with patched(official_resnet, nn=narrowed_nn(WIDTH_DIV)):
        net = official_resnet.ResNet(block, BLOCKS, num_classes=classes)
    randomise_batch_norms(net)
    ds = argparse.Namespace(mean=torch.tensor(mean), std=torch.tensor(std))
    return net, AttackerModel(net, ds)


def put_state(out, net, prefix):
    """Every tensor of `net`'s state dict into `out` under `prefix/` (but num_batches_tracked)."""
    for k, v in net.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            out[f"{prefix}/{k}"] = v.clone()


def adversarial_train_step(net, model, x, y, out):
    """One adversarial training step as robustness/train.py's _model_loop takes it: the attack
    (PGD-3, L2 0.5, use-best) in eval mode, the update in train mode, SGD with momentum and weight
    decay on every parameter; the adversarial inputs, the loss and the state after into `out`."""
    model.train()
    opt = torch.optim.SGD(net.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
    with patched(torch.Tensor, cuda=lambda self, *a, **k: self):
        logits, adv = model(x, y, make_adv=True, constraint="2", eps=0.5, step_size=0.5 * 2 / 3,
                            iterations=3, random_start=False, use_best=True)
    loss = torch.nn.CrossEntropyLoss()(logits, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    out["adv_step/adv"], out["adv_step/loss"] = adv, loss.reshape(1)
    put_state(out, net, "adv_step/after")


def transfer_step(net, model, params, xt, yt, tag, out):
    """One transfer step as robust-models-transfer's main.py takes it, on `params` (lr and weight
    decay larger than the paper's 0.01 and 5e-4, so that one step shows where the decay applies),
    the whole model in train mode; the loss and the state after into `out` under `tag`."""
    opt = torch.optim.SGD(params, 0.1, momentum=0.9, weight_decay=5e-2)
    model.train()
    logits, _ = model(xt, yt, make_adv=False)
    loss = torch.nn.CrossEntropyLoss()(logits, yt)
    opt.zero_grad()
    loss.backward()
    opt.step()
    out[f"{tag}/loss"] = loss.reshape(1)
    put_state(out, net, f"{tag}/after")


def robustness_bottleneck(path, transfer_path):
    """The paper-scale source's Bottleneck ResNet (the library's imagenet_models.resnet, as its
    resnet50 builds it, narrowed as official_network narrows) through one adversarial training step
    and one full-network transfer step, as robustness() takes them for the BasicBlock network."""
    sys.path.insert(0, path)
    from robustness.attacker import AttackerModel  # noqa: E402
    from robustness.imagenet_models import resnet as official_resnet  # noqa: E402

    sys.path.insert(0, os.path.join(transfer_path, "src"))
    from utils import fine_tunify  # noqa: E402

    meta = {"repository": "MadryLab/robustness", "commit": commit(path), "base": 64 // WIDTH_DIV,
            "blocks": BLOCKS, "block": "Bottleneck", "transfer": f"microsoft/robust-models-transfer {commit(transfer_path)}"}
    out = {}
    net, model = official_network(official_resnet, AttackerModel, official_resnet.Bottleneck, 10, 3,
                                  IMAGENET_MEAN, IMAGENET_STD)
    put_state(out, net, "source")
    torch.manual_seed(4)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([1, 7, 7, 0])
    out["x"], out["y"] = x, y
    model.eval()
    logits, _ = model(x, y, make_adv=False)
    out["source/logits"] = logits.detach()
    adversarial_train_step(net, model, x, y, out)
    src_state = {k[len("source/"):]: v for k, v in out.items() if k.startswith("source/") and k != "source/logits"}
    torch.manual_seed(5)
    xt, yt = torch.rand(4, 3, 32, 32), torch.tensor([4, 0, 2, 4])
    out["target/x"], out["target/y"] = xt, yt
    net, _ = official_network(official_resnet, AttackerModel, official_resnet.Bottleneck, 10, 3,
                              IMAGENET_MEAN, IMAGENET_STD)
    net.load_state_dict(src_state, strict=False)
    torch.manual_seed(6)
    fine_tunify.ft("resnet50", net, 5, 0)
    ds = argparse.Namespace(mean=torch.tensor(CIFAR10_MEAN), std=torch.tensor(CIFAR10_STD))
    model = AttackerModel(net, ds)
    out["target/fc.weight"], out["target/fc.bias"] = net.fc.weight.clone(), net.fc.bias.clone()
    transfer_step(net, model, list(model.parameters()), xt, yt, "full", out)
    save(out, "robust-transfer", "official-bottleneck.safetensors", meta)
    sys.path.remove(path)


def robustness(path, transfer_path):
    sys.path.insert(0, path)
    from robustness.attacker import AttackerModel  # noqa: E402
    from robustness.imagenet_models import resnet as official_resnet  # noqa: E402
    from robustness import data_augmentation as da  # noqa: E402

    meta = {"repository": "MadryLab/robustness", "commit": commit(path), "base": 64 // WIDTH_DIV,
            "blocks": BLOCKS}
    out = {}
    def nocuda():
        return patched(torch.Tensor, cuda=lambda self, *a, **k: self)

    def network(classes, seed, mean, std):
        return official_network(official_resnet, AttackerModel, official_resnet.BasicBlock, classes, seed, mean, std)

    net, model = network(10, 3, IMAGENET_MEAN, IMAGENET_STD)
    put_state(out, net, "source")
    torch.manual_seed(4)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([1, 7, 7, 0])
    out["x"], out["y"] = x, y
    # PGD of the official Attacker, with the random starts' numbers drawn here.
    cases = [
        ("l2", "2", 0.5, 2.5 * 0.5 / 3, 3, False, True),
        ("l2_start", "2", 0.5, 0.25, 3, True, True),
        ("linf_start_final", "inf", 8 / 255, 2 / 255, 3, True, False),
        ("linf", "inf", 4 / 255, 1 / 255, 5, False, True),
    ]
    model.eval()
    for name, constraint, eps, step, iters, start, best in cases:
        r = torch.randn_like(x) if constraint == "2" else torch.rand_like(x)
        out[f"pgd/{name}/start"] = r
        with nocuda(), patched(torch, randn_like=lambda t: r.clone(), rand_like=lambda t: r.clone()):
            logits, adv = model(x, y, make_adv=True, constraint=constraint, eps=eps, step_size=step,
                                iterations=iters, random_start=start, use_best=best)
        out[f"pgd/{name}/adv"], out[f"pgd/{name}/logits"] = adv, logits
        meta[f"pgd/{name}"] = f"{constraint} eps={eps!r} step={step!r} steps={iters} random_start={start} use_best={best}"
    adversarial_train_step(net, model, x, y, out)

    # Transfer steps as robust-models-transfer's main.py sets them up: the source's fc replaced by
    # a fresh Linear (PyTorch's default init), the target's normaliser, the whole model in train
    # mode; fixed-feature (--freeze-level 4) updates the head only, full-network everything.
    sys.path.insert(0, os.path.join(transfer_path, "src"))
    from utils import fine_tunify  # noqa: E402
    from main import freeze_model  # noqa: E402
    meta["transfer"] = f"microsoft/robust-models-transfer {commit(transfer_path)}"
    src_state = {k[len("source/"):]: v for k, v in out.items() if k.startswith("source/")}
    torch.manual_seed(5)
    xt, yt = torch.rand(4, 3, 32, 32), torch.tensor([4, 0, 2, 4])
    out["target/x"], out["target/y"] = xt, yt
    for mode, level in [("fixed", 4), ("full", -1)]:
        net, _ = network(10, 3, IMAGENET_MEAN, IMAGENET_STD)
        net.load_state_dict(src_state, strict=False)
        torch.manual_seed(6)
        fine_tunify.ft("resnet18", net, 5, 0)
        ds = argparse.Namespace(mean=torch.tensor(CIFAR10_MEAN), std=torch.tensor(CIFAR10_STD))
        model = AttackerModel(net, ds)
        out["target/fc.weight"], out["target/fc.bias"] = net.fc.weight.clone(), net.fc.bias.clone()
        params = freeze_model(model, level)
        params = list(model.parameters()) if params is None else params
        transfer_step(net, model, params, xt, yt, mode, out)
    save(out, "robust-transfer", "official-robustness.safetensors", meta)

    # The train and test transforms on fixed images, every random parameter given: torchvision
    # on PIL images as the official code runs them (8-bit after each operation), and the tensor
    # functions for the colour jitter.
    import numpy as np  # noqa: E402
    import torchvision.transforms.functional as TF  # noqa: E402
    from PIL import Image  # noqa: E402
    out = {}
    g = torch.Generator().manual_seed(7)
    # 301 × 199: Resize(256) makes it 387 wide (256·301/199 = 387.2, truncated) and the centre
    # crop's offset (387 − 224)/2 = 81.5 rounds to 82.
    yy, xx = torch.meshgrid(torch.arange(199.0), torch.arange(301.0), indexing="ij")
    base = torch.stack([xx / 301 * 200, yy / 199 * 180 + 40, (xx + yy) % 97 * 2], -1)
    big = (base + torch.rand(199, 301, 3, generator=g) * 40).clamp(0, 255).to(torch.uint8)
    small = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8)
    out["imagenet/image"], out["cifar/image"] = big, small
    pil = lambda t: Image.fromarray(t.numpy())
    tensor = lambda im: torch.from_numpy(np.asarray(im).copy())
    box = (23, 57, 131, 170)
    out["imagenet/box"] = torch.tensor(box)
    out["imagenet/train_crop"] = tensor(TF.resized_crop(pil(big), *box, [224, 224]))
    out["imagenet/eval"] = tensor(TF.center_crop(TF.resize(pil(big), 256), 224))
    # ColorJitter(0.1, 0.1, 0.1) then Lighting(0.05) with given factors, order and α.
    factors, order = [1.07, 0.93, 1.09], [2, 0, 1]
    jit = TF.resize(pil(big), 40)
    out["jitter/factors"], out["jitter/order"] = torch.tensor(factors), torch.tensor(order)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation]
    t = TF.to_tensor(jit)
    p = jit
    for k in order:
        t = ops[k](t, factors[k])
        p = ops[k](p, factors[k])
    out["jitter/input"] = TF.to_tensor(jit)
    out["jitter/tensor"], out["jitter/pil"] = t, TF.to_tensor(p)
    torch.manual_seed(8)
    alpha = torch.empty(3).normal_(0, 0.05)
    torch.manual_seed(8)
    lit = da.Lighting(0.05, da.IMAGENET_PCA["eigval"], da.IMAGENET_PCA["eigvec"])(t)
    out["lighting/alpha"], out["lighting/out"] = alpha, lit
    # CIFAR transfer: RandomResizedCrop(224) of the 32 px image; test Resize(256), CenterCrop(224).
    cbox = (3, 5, 22, 26)
    out["cifar/box"] = torch.tensor(cbox)
    out["cifar/train_crop"] = tensor(TF.resized_crop(pil(small), *cbox, [224, 224]))
    out["cifar/test"] = tensor(TF.center_crop(TF.resize(pil(small), 256), 224))
    meta = {"repository": "MadryLab/robustness + microsoft/robust-models-transfer (torchvision 0.26 on PIL)",
            "commit": commit(path), "transfer": commit(transfer_path)}
    save(out, "robust-transfer", "official-transforms.safetensors", meta)
    sys.path.remove(path)


# ---------------------------------------------------------------------------------------------
# TSIT (EndlessSora/TSIT)


def tsit(path):
    import types

    sys.path.insert(0, path)
    # The checkout lacks models/networks/sync_batchnorm (SPADE's synchronized batch norm); on one
    # device it computes what BatchNorm2d computes, which stands in for it here.
    shim = types.ModuleType("models.networks.sync_batchnorm")
    shim.SynchronizedBatchNorm2d = torch.nn.BatchNorm2d
    sys.modules["models.networks.sync_batchnorm"] = shim
    from models.pix2pix_model import Pix2PixModel  # noqa: E402
    import torch.nn.functional as F  # noqa: E402

    meta = {"repository": "EndlessSora/TSIT", "commit": commit(path), "ngf": 1, "ndf": 2, "size": 256}
    out = {}

    def options(task, label_nc, vgg=False, wide=False):
        # wide: Cityscapes' layout, 256×512 with a don't-care class and the instance-edge channel.
        sis = task == "SIS"
        return argparse.Namespace(
            task=task, isTrain=True, gpu_ids=[], netG="tsit", netD="multiscale", netD_subarch="n_layer",
            norm_G="spectralfadesyncbatch3x3", norm_D="spectralinstance", norm_S="spectralinstance",
            norm_E="spectralinstance", ngf=1, ndf=2, label_nc=label_nc, output_nc=3,
            semantic_nc=(label_nc + 2 if wide else label_nc) if sis else 3, contain_dontcare_label=wide,
            no_instance=not wide, crop_size=512 if wide else 256, aspect_ratio=2.0 if wide else 1.0,
            num_upsampling_layers="more", use_vae=sis, z_dim=256,
            alpha=1.0, no_ss=sis, n_layers_D=4, num_D=2, no_ganFeat_loss=False, no_vgg_loss=not vgg,
            gan_mode="hinge", lambda_feat=10.0, lambda_vgg=2.0 if vgg else 0.0, lambda_kld=0.05,
            # A larger init than the official 0.02 (xavier gain), so every path carries signal.
            init_type="xavier", init_variance=1.0, continue_train=False, no_TTUR=False, lr=2e-4,
            beta1=0.0, beta2=0.9,
        )

    def up(t):
        return F.interpolate(t, scale_factor=16, mode="nearest")

    import torchvision  # noqa: E402

    # VGGLoss builds torchvision's ImageNet VGG-19 (a download) and moves it to CUDA: both sides
    # use VGG-19 with formula_weight's weights (gain 6, He's scale) instead, on the CPU.
    plain_vgg19 = torchvision.models.vgg19

    def vgg19(*a, **k):
        net = plain_vgg19(weights=None)
        with torch.no_grad():
            for name, v in net.features.state_dict().items():
                v.copy_(formula_weight(f"features.{name}", tuple(v.shape), 6.0))
        return net

    for task, tag in [("AST", "ast"), ("SIS", "sis"), ("SIS", "sis2")]:
        wide = tag == "sis2"
        torch.manual_seed(10)
        opt = options(task, 4, wide=wide)
        with patched(torchvision.models, vgg19=vgg19), patched(torch.nn.Module, cuda=lambda self, *a: self):
            model = Pix2PixModel(opt)
        nets = {"G": model.netG, "D": model.netD}
        if model.netE is not None:
            nets["E"] = model.netE
        with torch.no_grad():
            for n, net in nets.items():
                for k, v in net.state_dict().items():
                    if k.endswith("running_var"):
                        v.copy_(0.5 + torch.rand_like(v))
                    elif k.endswith("running_mean"):
                        v.copy_(torch.randn_like(v) * 0.1)
        for n, net in nets.items():
            for k, v in net.state_dict().items():
                if not k.endswith("num_batches_tracked"):
                    out[f"{tag}/before/{n}/{k}"] = v.clone()
        before = {n: {k: v.clone() for k, v in net.state_dict().items()} for n, net in nets.items()}
        # 16² inputs brought to 256² by nearest ×16 on both sides.
        if wide:
            # 16×32 maps brought to 256×512: labels 0-4 (4 is the don't-care class) and instance
            # ids whose boundaries make the edge channel.
            label16 = torch.randint(0, 5, (1, 1, 16, 32))
            inst16 = torch.randint(0, 3, (1, 1, 16, 32))
            image16 = torch.rand(1, 3, 16, 32) * 2 - 1
            out[f"{tag}/label16"], out[f"{tag}/instance16"], out[f"{tag}/image16"] = label16, inst16, image16
            data = {"label": up(label16.float()).long(), "instance": up(inst16.float()), "image": up(image16)}
            draws = [torch.randn(1, 256), torch.randn(1, 256)]
            noise_fn = dict(randn_like=lambda t: draws_it.pop(0).clone())
        elif task == "SIS":
            label16 = torch.randint(0, 4, (1, 1, 16, 16))
            image16 = torch.rand(1, 3, 16, 16) * 2 - 1
            out[f"{tag}/label16"], out[f"{tag}/image16"] = label16, image16
            data = {"label": up(label16.float()).long(), "instance": torch.zeros(1), "image": up(image16)}
            draws = [torch.randn(1, 256), torch.randn(1, 256)]
            noise_fn = dict(randn_like=lambda t: draws_it.pop(0).clone())
        else:
            content16, style16 = torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(1, 3, 16, 16) * 2 - 1
            out[f"{tag}/content16"], out[f"{tag}/style16"] = content16, style16
            data = {"label": up(content16), "instance": torch.zeros(1), "image": up(style16)}
            draws = [torch.randn(1, 3, 2, 2), torch.randn(1, 3, 2, 2)]
            noise_fn = dict(randn=lambda *a, **k: draws_it.pop(0).clone())
        out[f"{tag}/noise"] = torch.stack(draws)
        draws_it = list(draws)
        # create_optimizers passes betas (0, 0.9): PyTorch 2.11 wants both floats.
        adam = torch.optim.Adam
        floats = lambda params, lr, betas: adam(params, lr=lr, betas=tuple(float(b) for b in betas))
        with patched(torch.optim, Adam=floats):
            opt_g, opt_d = model.create_optimizers(opt)
        model.train()
        with patched(torch, **noise_fn):
            # Pix2PixTrainer.run_generator_one_step, then run_discriminator_one_step.
            opt_g.zero_grad()
            g_losses, generated = model(dict(data), mode="generator")
            g_loss = sum(g_losses.values()).mean()
            g_loss.backward()
            for n, net in nets.items():
                for k, v in net.named_parameters():
                    if n != "D" and v.grad is not None:
                        out[f"{tag}/grad/{n}/{k}"] = v.grad.clone()
            opt_g.step()
            opt_d.zero_grad()
            d_losses = model(dict(data), mode="discriminator")
            d_loss = sum(d_losses.values()).mean()
            d_loss.backward()
            opt_d.step()
        assert not draws_it, "one noise draw for each generator pass"
        # The generator step's gradients again in float64, from the same state and draws: each
        # gradient's float32 rounding (its distance to the float64 one, relative to its largest
        # magnitude) says whether it carries signal or is rounding noise (a bias just before a
        # normalisation), so that the Rust test exempts only the latter.
        with patched(torchvision.models, vgg19=vgg19), patched(torch.nn.Module, cuda=lambda self, *a: self):
            double = Pix2PixModel(opt)
        double_nets = {"G": double.netG, "D": double.netD}
        if double.netE is not None:
            double_nets["E"] = double.netE
        for n, net in double_nets.items():
            net.load_state_dict(before[n])
            net.double()
        double.FloatTensor = torch.DoubleTensor
        double.criterionGAN.Tensor = torch.DoubleTensor
        double.train()
        draws_it = [draws[0].double()]
        double_noise = (dict(randn_like=lambda t: draws_it.pop(0).clone()) if task == "SIS"
                      else dict(randn=lambda *a, **k: draws_it.pop(0).clone()))
        double_data = {k: v.double() if v.is_floating_point() else v for k, v in data.items()}
        with patched(torch, **double_noise):
            w_losses, _ = double(dict(double_data), mode="generator")
            sum(w_losses.values()).mean().backward()
        for n, net in double_nets.items():
            for k, v in net.named_parameters():
                if n != "D" and v.grad is not None:
                    g32 = out[f"{tag}/grad/{n}/{k}"].double()
                    # Relative to the float64 gradient itself, however small (a gradient that
                    # is zero in exact arithmetic then shows as all rounding).
                    spread = (g32 - v.grad).abs().max() / v.grad.abs().max().clamp_min(1e-30)
                    out[f"{tag}/spread/{n}/{k}"] = spread.float().reshape(1)
        out[f"{tag}/fake_pooled"] = F.avg_pool2d(generated.detach(), 8)
        for k, v in {**g_losses, **d_losses}.items():
            out[f"{tag}/loss/{k}"] = v.detach().reshape(1)
        for n, net in nets.items():
            for k, v in net.state_dict().items():
                if not k.endswith("num_batches_tracked"):
                    out[f"{tag}/after/{n}/{k}"] = v.clone()
        # The generator step's losses with the VGG loss on (weight 2 for both tasks; the official
        # 1 and 20), from the same state: its L1 terms make float32 gradients, and so Adam's
        # sign-like first step, rounding-dependent, so only the losses are compared.
        with patched(torchvision.models, vgg19=vgg19), patched(torch.nn.Module, cuda=lambda self, *a: self):
            vmodel = Pix2PixModel(options(task, 4, vgg=True, wide=wide))
        for n, net in {"G": vmodel.netG, "D": vmodel.netD, "E": vmodel.netE}.items():
            if net is not None:
                net.load_state_dict(before[n])
        vmodel.train()
        draws_it = [draws[0]]
        with patched(torch, **noise_fn):
            v_losses, _ = vmodel(dict(data), mode="generator")
        for k, v in v_losses.items():
            out[f"{tag}/vgg/loss/{k}"] = v.detach().reshape(1)
    save(out, "tsit", "official-tsit.safetensors", meta)
    sys.path.remove(path)


# ---------------------------------------------------------------------------------------------
# FID (the pytorch-fid package: pytorch_fid.inception.InceptionV3, fid_score)


def formula_weight(name, shape, gain=3.0):
    """The deterministic weights both sides fill the FID network with (its real weights are a
    100 MB download): t_k = 2·((k + 1)·48271·(s + 1) mod (2³¹ − 1))/(2³¹ − 1) − 1, k the flat index,
    s = Σ (i + 1)·byte_i mod 997 of the name, scaled by the kind of tensor (a weight by
    √(gain/fan_in)). reprise's `fixture::formula_weight` computes the same with LibTorch."""
    s = sum((i + 1) * b for i, b in enumerate(name.encode())) % 997
    n = 1
    for d in shape:
        n *= d
    # Exact integer arithmetic: a multiplicative (Lehmer) sequence, uniform in [−1, 1).
    t = (torch.arange(1, n + 1, dtype=torch.int64) * (48271 * (s + 1)) % 2147483647).double() / 2147483647 * 2 - 1
    if name.endswith("running_var"):
        v = 0.5 + t.abs() * 0.5
    elif name.endswith("running_mean") or name.endswith("bias"):
        v = t * 0.1
    elif name.endswith("bn.weight"):
        v = 1.0 + t * 0.1
    else:
        fan_in = n // shape[0]
        v = t * (gain / fan_in) ** 0.5
    return v.reshape(shape).float()


def fid():
    import pytorch_fid
    from pytorch_fid import inception as pfi  # noqa: E402
    from pytorch_fid.fid_score import calculate_frechet_distance  # noqa: E402
    import numpy as np  # noqa: E402

    meta = {"package": f"pytorch-fid {pytorch_fid.__version__}"}
    # fid_inception_v3 downloads its weights at the end: build it without them.
    with patched(pfi, load_state_dict_from_url=lambda *a, **k: None), \
            patched(torch.nn.Module, load_state_dict=lambda self, sd, *a, **k: None):
        net = pfi.InceptionV3([pfi.InceptionV3.DEFAULT_BLOCK_INDEX]).eval()
    with torch.no_grad():
        for k, v in net.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                # Names as torchvision's Inception3 has them (blocks.i.* are its modules).
                v.copy_(formula_weight(TORCHVISION_NAME[k], tuple(v.shape)))
    torch.manual_seed(11)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feats = net(x)[0].flatten(1)
    g = torch.Generator().manual_seed(12)
    a, b = torch.randn(40, 6, generator=g, dtype=torch.float64), torch.randn(50, 6, generator=g, dtype=torch.float64) * 1.3 + 0.4
    stats = lambda f: (f.mean(0).numpy(), np.cov(f.numpy(), rowvar=False))
    d = calculate_frechet_distance(*stats(a), *stats(b))
    out = {"x": x, "features": feats, "frechet/a": a, "frechet/b": b, "frechet/distance": torch.tensor([d])}
    # The network's names and shapes, so that a weights file can be made without pytorch-fid
    # (scripts/test.sh does, for the paper-scale FID path).
    import json  # noqa: E402
    meta["shapes"] = json.dumps({TORCHVISION_NAME[k]: list(v.shape) for k, v in net.state_dict().items()
                                 if not k.endswith("num_batches_tracked")})
    save(out, "core", "pytorch-fid.safetensors", meta)


# pytorch-fid's InceptionV3 keeps torchvision's modules in `blocks`: block index and position to
# the torchvision name.
_STEM = [["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"], ["Conv2d_3b_1x1", "Conv2d_4a_3x3"],
         ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
         ["Mixed_7a", "Mixed_7b", "Mixed_7c"]]


class _Names(dict):
    def __missing__(self, k):
        _, b, i, rest = k.split(".", 3)
        return f"{_STEM[int(b)][int(i)]}.{rest}"


TORCHVISION_NAME = _Names()


def draws(path, n=4000):
    """The random parameters of the training augmentations as the official pipelines draw them,
    n independent draws of each (torch.manual_seed once, then in sequence): torchvision's
    RandomResizedCrop(224) boxes on a 375x500 (ImageNet-like) and a 32x32 (CIFAR) image,
    ColorJitter(0.1, 0.1, 0.1)'s factors and order, RandomCrop(32, padding=4)'s offsets and
    RandomHorizontalFlip's coin, and the robustness library's Lighting(0.05) weights (read back
    from its output on a zero image). The Rust test compares reprise's draws with these by
    two-sample tests: the distributions, not the values, are what must agree."""
    sys.path.insert(0, path)
    import torchvision  # noqa: E402
    from torchvision import transforms  # noqa: E402
    from robustness import data_augmentation as da  # noqa: E402

    torch.manual_seed(20261207)
    out = {}
    for name, (h, w) in [("imagenet", (375, 500)), ("cifar", (32, 32))]:
        img = torch.zeros(3, h, w)
        boxes = [transforms.RandomResizedCrop.get_params(img, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
                 for _ in range(n)]
        out[f"rrc/{name}"] = torch.tensor(boxes, dtype=torch.int32)
    factors, orders = [], []
    for _ in range(n):
        idx, b, c, sat, _hue = transforms.ColorJitter.get_params((0.9, 1.1), (0.9, 1.1), (0.9, 1.1), None)
        factors.append([b, c, sat])
        # The order over brightness, contrast, saturation (hue, index 3, is not drawn here).
        orders.append([int(i) for i in idx if int(i) < 3])
    out["jitter/factors"] = torch.tensor(factors, dtype=torch.float32)
    out["jitter/order"] = torch.tensor(orders, dtype=torch.int32)
    light = da.Lighting(0.05, da.IMAGENET_PCA["eigval"], da.IMAGENET_PCA["eigvec"])
    vec = da.IMAGENET_PCA["eigvec"].double()
    val = da.IMAGENET_PCA["eigval"].double()
    alphas = []
    for _ in range(n):
        rgb = light(torch.zeros(3, 1, 1)).double().view(3)
        # rgb = eigvec @ (alpha * eigval)
        alphas.append((torch.linalg.solve(vec, rgb) / val).tolist())
    out["lighting/alpha"] = torch.tensor(alphas, dtype=torch.float32)
    pads = [transforms.RandomCrop.get_params(torch.zeros(3, 40, 40), (32, 32)) for _ in range(n)]
    out["pad/offset"] = torch.tensor(pads, dtype=torch.int32)
    flip = transforms.RandomHorizontalFlip()
    probe = torch.tensor([[[0.0, 1.0]]])
    out["flip/flipped"] = torch.tensor([int(flip(probe)[0, 0, 0] == 1.0) for _ in range(n)], dtype=torch.int32)
    meta = {"repository": "MadryLab/robustness", "commit": commit(path), "torchvision": torchvision.__version__,
            "draws": n}
    save(out, "robust-transfer", "official-draws.safetensors", meta)


def torchvision_resnets():
    """deepthin's ImageNet networks against the definition its specs name, torchvision's ResNet with
    Bottlenecks (deepthin has no official code): the teacher (the 3x3 convolutions 4x wider,
    width_per_group 256), a ResNet-50 and a deeper one (two blocks in the second stage, as
    ResNet-101 repeats blocks), each narrowed as official_network narrows but 32-fold (base width
    2, so that the file stays small), on 64 px
    inputs: the train-mode logits, the cross-entropy, every parameter's gradient with its float32
    rounding (the distance to the float64 gradient, relative to its largest magnitude), and the
    parameters and running statistics after one SGD step (momentum 0.9, weight decay 1e-4)."""
    import torchvision  # noqa: E402
    from torchvision.models import resnet as tvr  # noqa: E402

    out = {}
    div = 32
    meta = {"repository": "pytorch/vision", "torchvision": torchvision.__version__, "base": 64 // div}
    nn = narrowed_nn(div)
    torch.manual_seed(21)
    x, y = torch.rand(4, 3, 64, 64), torch.tensor([3, 0, 9, 3])
    out["x"], out["y"] = x, y
    for name, layers, width in [("teacher", [1, 1, 1, 1], 256), ("r50", [1, 1, 1, 1], 64),
                                ("deep", [1, 2, 1, 1], 64)]:
        torch.manual_seed(22)
        with patched(tvr, nn=nn):
            net = tvr.ResNet(tvr.Bottleneck, layers, num_classes=10, width_per_group=width)
        randomise_batch_norms(net)
        for k, v in net.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                out[f"{name}/before/{k}"] = v.clone()
        net.train()
        # The same step in float64: each gradient's float32 rounding, relative to its largest
        # magnitude as the Rust side measures it, bounds how closely any float32 code can agree.
        import copy  # noqa: E402
        wide = copy.deepcopy(net).double()
        torch.nn.functional.cross_entropy(wide(x.double()), y).backward()
        wide_grads = dict(wide.named_parameters())
        opt = torch.optim.SGD(net.parameters(), 0.1, momentum=0.9, weight_decay=1e-4)
        logits = net(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        out[f"{name}/logits"], out[f"{name}/loss"] = logits.detach(), loss.detach().reshape(1)
        for k, p in net.named_parameters():
            out[f"{name}/grad/{k}"] = p.grad.clone()
            g64 = wide_grads[k].grad
            spread = (p.grad.double() - g64).abs().max() / g64.abs().max().clamp_min(1e-6)
            out[f"{name}/spread/{k}"] = spread.float().reshape(1)
        opt.step()
        for k, v in net.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                out[f"{name}/after/{k}"] = v.clone()
    save(out, "core", "torchvision-resnet.safetensors", meta)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jem", help="checkout of wgrathwohl/JEM")
    ap.add_argument("--robustness", help="checkout of MadryLab/robustness")
    ap.add_argument("--transfer", help="checkout of microsoft/robust-models-transfer")
    ap.add_argument("--tsit", help="checkout of EndlessSora/TSIT")
    ap.add_argument("--fid", action="store_true", help="pytorch-fid's Inception (the installed package)")
    ap.add_argument("--torchvision", action="store_true",
                    help="deepthin's Bottleneck ResNets against torchvision's (the installed package)")
    ap.add_argument("--draws", metavar="ROBUSTNESS",
                    help="the augmentations' random draws (torchvision's, and Lighting from this checkout of MadryLab/robustness)")
    a = ap.parse_args()
    if a.jem:
        jem(a.jem)
    if a.robustness:
        if not a.transfer:
            ap.error("--robustness needs --transfer (the transfer code)")
        robustness(a.robustness, a.transfer)
        robustness_bottleneck(a.robustness, a.transfer)
    if a.tsit:
        tsit(a.tsit)
    if a.fid:
        fid()
    if a.draws:
        draws(a.draws)
    if a.torchvision:
        torchvision_resnets()


if __name__ == "__main__":
    main()
