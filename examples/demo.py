"""`make demo`: the main job, offline, on what the package ships.

vitkit does not yet ship trained weights (a small model trained by vitkit itself is planned), so this demo
builds the DeiT-Tiny architecture with RANDOM weights: the labels it prints are meaningless. What it shows
is the pipeline: images of mixed sizes and modes (and one corrupt file) are decoded, preprocessed with the
architecture's recipe and classified in one batch, the corrupt file gets its own error row, and the model
survives a round trip through the transformers format with identical outputs.

Try it:  make demo
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import vitkit

OUT = Path("demo-out")
ARCH = "deit_tiny_patch16_224"


def write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (size, mode) in enumerate([((640, 480), "RGB"), ((200, 300), "L"), ((96, 96), "RGBA"), ((1024, 256), "P")]):
        image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        ImageDraw.Draw(image).ellipse([size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4], fill=(220, 40, 40))
        image.convert(mode).save(folder / f"synthetic_{i}_{mode}.png")
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")


def main() -> int:
    images = OUT / "images"
    write_images(images)
    print(f"[1/3] classify {images} with {ARCH} (random weights: labels are meaningless)\n", flush=True)
    cli = [sys.executable, "-m", "vitkit", "classify", str(images), "--arch", ARCH, "--top-k", "3", "--workers", "0"]
    subprocess.run(cli, check=True)

    print("\n[2/3] convert to a transformers folder and back", flush=True)
    torch.manual_seed(0)
    model = vitkit.load(arch=ARCH)
    folder = model.save(OUT / "deit-tiny-hf", format="hf")
    again = vitkit.load(str(folder))
    pixels = model.preprocess(sorted(images.glob("*.png")))
    diff = (model(pixels) - again(pixels)).abs().max().item()
    print(f"      wrote {folder}; max abs logit difference after the round trip: {diff:.1e}")

    print("\n[3/3] named models and architectures: vitkit models", flush=True)
    subprocess.run([sys.executable, "-m", "vitkit", "models"], check=True)
    return 0 if diff <= 1e-5 else 1


if __name__ == "__main__":
    raise SystemExit(main())
