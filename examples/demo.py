"""`make demo`: vitkit's own small model classifies handwritten digits, offline, on what the package ships.

The model (vitkit/assets/digits-vit/, a transformers folder of 0.85 MB) is a 0.2 M-parameter ViT (32 px input,
patch 4, width 64, depth 6, 4 heads) that vitkit trained from scratch on scikit-learn's digits dataset with
examples/train_digits.py; it reaches 99.2% top-1 on that dataset's 360-image test split. Its labels are the
digits 0-9, so what it prints means something, but it only knows 8x8-pixel scans of digits (dark ink on a
light background): anything else gets a confident digit all the same.

The demo writes ten digits from the test split (embedded below as 8x8 scans: the demo needs no scikit-learn),
some at other sizes and modes, plus one corrupt file; classifies them all in one call of `vitkit classify`
(the corrupt file gets its own error row); then round-trips the model through the transformers format and
checks the outputs are identical.

Try it:  make demo                  (or: .venv/bin/python examples/demo.py)
"""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import torch

import vitkit
from train_digits import digit_image  # examples/: the recipe's own rendering of a scan

OUT = Path("demo-out")
MODEL = resources.files("vitkit") / "assets" / "digits-vit"

# Ten scans from scikit-learn's digits test split (examples/train_digits.py: stratified 80/20, seed 0), the
# first of each digit: 64 grey levels 0..16 (16 = ink) written as base-17 digits 0-9a-g, row by row.
SCANS = {
    0: "009f500003ffg4000ae09e0008c00c5008800a8005e00c8000g7cg40009gf700",
    1: "007a0000009g0000006g5000009g90000006e1000002g4000014ec41007gggg5",
    2: "01ff200007ed90000996d0000108c0000008c000000b6000007ggg7000gfcc30",
    3: "006egg2005gdbg000072fc000007gd1000006fa000000f90003b8g60007gg800",
    4: "0001e500000bb000009c100005f102400e700da00fgggg500388fa000003f200",
    5: "02gggg3001gd640009g3000009gd700003bdg90000007g1002b5ce0003ggg500",
    6: "004e600000af200000gb000000db000003gc830002ge8c9000gd4cc0006fgc10",
    7: "002dg90000cc7g3001e30g400004ag60000dgg900005d100000b9000001g4000",
    8: "003ae30008gbad0007e01f2002g9gg1000cgff2000ca0880009c47c0002bgg90",
    9: "003c500001feg60006g06g6005gbeg40008acg0000117f10008aag20002de700",
}


def scan(digit: int) -> np.ndarray:
    return np.array([int(c, 17) for c in SCANS[digit]], dtype=np.float64).reshape(8, 8)


def write_images(folder: Path) -> dict[str, int]:
    """The demo's inputs: {file name: true digit}. Most are 32x32 RGB PNGs as in training; some are written
    larger or in other modes to show the decode + resize pipeline; one file is corrupt."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for digit in SCANS:
        image, name = digit_image(scan(digit)), f"digit_{digit}.png"
        if digit == 2:  # large greyscale: resized to 32 px by the model's preprocessing
            image, name = digit_image(scan(digit), size=256).convert("L"), "digit_2_large_grey.png"
        elif digit == 5:  # palette mode
            image, name = image.convert("P"), "digit_5_palette.png"
        elif digit == 8:  # RGBA, 96 px
            image, name = digit_image(scan(digit), size=96).convert("RGBA"), "digit_8_rgba.png"
        elif digit == 9:  # JPEG
            image, name = digit_image(scan(digit), size=64), "digit_9.jpg"
        image.save(folder / name, **({"quality": 95} if name.endswith(".jpg") else {}))
        truth[name] = digit
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    return truth


def main() -> int:
    images = OUT / "digits"
    truth = write_images(images)
    with resources.as_file(MODEL) as model_dir:
        print(f"[1/3] classify {images} with vitkit's digits model ({model_dir})\n", flush=True)
        cli = [sys.executable, "-m", "vitkit", "classify", str(images), "--model", str(model_dir), "--top-k", "3",
               "--workers", "0", "--no-progress"]
        subprocess.run(cli, check=True)

        model = vitkit.load(str(model_dir))
        files = sorted(truth)
        pixels = model.preprocess([images / name for name in files])
        logits = model(pixels)
        predicted = [model.labels[i] for i in logits.argmax(dim=-1).tolist()]
        correct = sum(p == str(truth[name]) for p, name in zip(predicted, files))
        print(f"\n      {correct}/{len(files)} correct (each file name holds its true digit); broken.jpg is "
              "reported, not guessed")

        print("\n[2/3] convert to a transformers folder and back", flush=True)
        folder = model.save(OUT / "digits-vit-hf", format="hf")
        again = vitkit.load(str(folder))
        diff = (logits - again(pixels)).abs().max().item()
        print(f"      wrote {folder}; max abs logit difference after the round trip: {diff:.1e}")
        try:
            from transformers import ViTForImageClassification
        except ImportError:
            print("      (install transformers to also run the folder with transformers' own ViT)")
        else:
            reference = ViTForImageClassification.from_pretrained(folder).eval()
            with torch.inference_mode():
                theirs = reference(pixel_values=pixels).logits
            print(f"      transformers' ViTForImageClassification on the same folder: max abs logit difference "
                  f"{(logits - theirs).abs().max().item():.1e}")

        print("\n[3/3] what the model is", flush=True)
        cfg, spec = model.config, model.spec
        params = sum(p.numel() for p in model.net.parameters())
        print("      a ViT trained from scratch by vitkit (examples/train_digits.py): "
              f"{cfg.image_size} px input, patch {cfg.patch_size}, width {cfg.width}, depth {cfg.depth}, "
              f"{cfg.heads} heads, MLP {cfg.mlp_dim}; {params:,} parameters; labels {', '.join(model.labels)}")
        print(f"      preprocessing shipped with the weights: resize to {spec.resize} px ({spec.interpolation}), "
              f"mean {spec.mean[0]}, std {spec.std[0]}; full details: vitkit info {model_dir}")
    return 0 if diff <= 1e-5 and correct >= len(files) - 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
