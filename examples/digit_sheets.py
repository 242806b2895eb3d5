"""Offline data for the multi-label and distillation examples: real handwritten digits (scikit-learn's 1,797 scans
of 8x8 pixels) as 32 px images the shipped digits model (vitkit-digits) reads.

    OUT/tags.csv, OUT/{train,val,test}/*.png   multi-label: one or two digits written over each other on one sheet,
                                                labels = the digits shown ("3|7"); 700 / 150 / 200 sheets from
                                                disjoint scans (split column: train, val, test)
    OUT/unlabelled/batch*/*.png                 1,400 single digits, no labels (a folder to distil on)
    OUT/held-out/*.png                          the other 397 digits (to compare a student with its teacher)
    OUT/student.safetensors                     a fresh ViT of 49k parameters (a quarter of vitkit-digits', random
                                                weights) for `vitkit distill --student`

Needs scikit-learn (`pip install scikit-learn`) for the scans.

Try it:  python examples/digit_sheets.py digits/ && vitkit finetune digits/tags.csv --model vitkit-digits --multi-label \
           --out runs/tags
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32  # the digits model's input
SHEETS = {"train": 700, "val": 150, "test": 200}
UNLABELLED = 1400


def sheet(scans: list[np.ndarray]) -> Image.Image:
    """8x8 scans (0..16, 16 = ink) written over each other (the darker ink wins), dark on white, SIZE px RGB."""
    inks = np.max(scans, axis=0)
    grey = np.round(255.0 - inks.reshape(8, 8) * (255.0 / 16.0)).astype(np.uint8)
    return Image.fromarray(grey, mode="L").resize((SIZE, SIZE), Image.Resampling.BILINEAR).convert("RGB")


def write_tags(out: Path, images: np.ndarray, targets: np.ndarray, seed: int = 0) -> Path:
    """OUT/tags.csv and its sheets; each split draws from its own scans."""
    rng = np.random.default_rng(seed)
    pools = dict(zip(SHEETS, np.array_split(rng.permutation(len(targets)), [1100, 1400])))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "tags.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "labels", "split"])
        for split, count in SHEETS.items():
            (out / split).mkdir(exist_ok=True)
            for n in range(count):
                while True:  # one digit on a fifth of the sheets, two different ones on the rest
                    picks = rng.choice(pools[split], size=1 if rng.random() < 0.2 else 2, replace=False)
                    names = [str(targets[i]) for i in picks]
                    if len(set(names)) == len(names):
                        break
                sheet([images[i] for i in picks]).save(out / split / f"{n:04d}.png")
                writer.writerow([f"{split}/{n:04d}.png", "|".join(names), split])
    return out / "tags.csv"


def write_digits(out: Path, images: np.ndarray, seed: int = 0) -> tuple[Path, list[Path]]:
    """OUT/unlabelled/ (nested, no class folders) and OUT/held-out/: single digits, split by a seeded shuffle."""
    order = np.random.default_rng(seed).permutation(len(images))
    held = []
    for n, i in enumerate(order):
        target = (out / "unlabelled" / f"batch{n % 3}" / f"{n:04d}.png" if n < UNLABELLED else
                  out / "held-out" / f"{n - UNLABELLED:04d}.png")
        target.parent.mkdir(parents=True, exist_ok=True)
        sheet([images[i]]).save(target)
        if n >= UNLABELLED:
            held.append(target)
    return out / "unlabelled", held


def write_student(target: Path, seed: int = 0) -> Path:
    """A fresh small ViT for the digits (patch 8: 16 tokens, width 48, 2 blocks), the digits model's preprocessing."""
    import torch

    import vitkit
    from vitkit.checkpoints.save import save_vitkit
    from vitkit.config import ViTConfig
    from vitkit.models.vit import VisionTransformer

    torch.manual_seed(seed)
    config = ViTConfig(image_size=SIZE, patch_size=8, width=48, depth=2, heads=2, mlp_dim=96, num_classes=10)
    return save_vitkit(VisionTransformer(config), vitkit.load("vitkit-digits").spec, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder")
    args = parser.parse_args()
    from sklearn.datasets import load_digits

    digits = load_digits()
    write_tags(args.out, digits.images, digits.target)
    write_digits(args.out, digits.images)
    write_student(args.out / "student.safetensors")
    print(f"wrote {args.out}/tags.csv ({sum(SHEETS.values())} sheets), {args.out}/unlabelled/ ({UNLABELLED} digits), "
          f"{args.out}/held-out/ ({len(digits.images) - UNLABELLED} digits) and {args.out}/student.safetensors")


if __name__ == "__main__":
    main()
