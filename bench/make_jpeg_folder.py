"""Writes a folder of JPEGs of ImageNet-like sizes for the loader benchmark: OUT/train/cNN/*.jpg,
N images in 10 classes, each of a random size (shorter side 300-500, aspect 3:4 to 4:3, as
ImageNet's photos mostly are; mean about 400x350), smooth colour fields with noise so that they
compress as photos do (about 60-120 kB at quality 90).

usage: python bench/make_jpeg_folder.py OUT [N] [SEED]
"""
import os
import sys

import numpy as np
from PIL import Image


def main():
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    rng = np.random.default_rng(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    for i in range(n):
        short = int(rng.integers(300, 501))
        aspect = float(rng.uniform(0.75, 4 / 3))
        w, h = (int(short * aspect), short) if aspect >= 1 else (short, int(short / aspect))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.empty((h, w, 3), np.float32)
        for c in range(3):
            fx, fy, ph = rng.uniform(0.002, 0.03), rng.uniform(0.002, 0.03), rng.uniform(0, 6.3)
            img[..., c] = 128 + 90 * np.sin(fx * xx + ph) * np.cos(fy * yy)
        img += rng.normal(0, 12, img.shape)
        d = os.path.join(out, "train", f"c{i % 10:02d}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            os.path.join(d, f"{i:05d}.jpg"), quality=90
        )


if __name__ == "__main__":
    main()
