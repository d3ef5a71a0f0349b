"""PyTorch twin of reprise's `folder_loader` example: images per second of the robust-transfer
ImageNet training transform (RandomResizedCrop 224, RandomHorizontalFlip, ColorJitter 0.1,
ToTensor, Lighting 0.05 with ImageNet's PCA, as MadryLab/robustness's data_augmentation.py
TRAIN_TRANSFORMS_IMAGENET) through torchvision's ImageFolder and a DataLoader with WORKERS
worker processes (prefetch_factor 2, its default), consumed as fast as they come; the first
batch is not timed. Needs torchvision (`pip install --no-deps torchvision==0.26.0` in the venv).

usage: python bench/pytorch/folder_loader.py FOLDER [WORKERS] [BATCHES] [BATCH]
"""
import sys
import time

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
EIGVEC = torch.tensor(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
)


class Lighting:
    """AlexNet-style PCA lighting noise, as robustness's data_augmentation.Lighting."""

    def __init__(self, alphastd):
        self.alphastd = alphastd

    def __call__(self, img):
        alpha = img.new_empty(3).normal_(0, self.alphastd)
        rgb = (EIGVEC * alpha.view(1, 3) * EIGVAL.view(1, 3)).sum(1)
        return img + rgb.view(3, 1, 1)


def main():
    a = sys.argv[1:]
    folder = a[0] if a else "/tmp/jpegs"
    workers = int(a[1]) if len(a) > 1 else 1
    batches = int(a[2]) if len(a) > 2 else 20
    batch = int(a[3]) if len(a) > 3 else 64
    torch.set_num_threads(1)
    tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1),
            transforms.ToTensor(),
            Lighting(0.05),
        ]
    )
    ds = datasets.ImageFolder(f"{folder}/train", tf)
    loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers)
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        x, _ = next(it)
        assert x.shape[2] == 224
    secs = time.perf_counter() - t
    print(
        f"torchvision: {workers} worker(s), batch {batch}: {batches * batch / secs:.1f} images/s "
        f"({batches} batches, {secs:.2f} s)"
    )


if __name__ == "__main__":
    main()
