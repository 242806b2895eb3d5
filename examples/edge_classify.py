"""Classify images with a vitkit-exported .onnx file and nothing else: onnxruntime, numpy and pillow.

Everything the model needs travels inside the file (ONNX metadata_props written by `vitkit export onnx`):
  vitkit_preprocess  {"input_size", "crop_pct", "resize_mode", "interpolation", "mean", "std"}
  vitkit_labels      ["tench", "goldfish", ...]
The pixels are prepared exactly as vitkit prepares them (vitkit/data/decode.py + transforms.py): EXIF orientation,
first frame, RGB (transparency over white), resize ("shortest": shorter side to floor(input_size / crop_pct),
aspect kept, torchvision's truncation; "exact": both sides), centre crop (torchvision's rounding for "shortest",
transformers' floor for "exact"), /255 in float64, then (x - mean) / std in float32.

Try it:  vitkit export onnx --model ../shared/weights/deit-tiny-patch16-224/model.safetensors \
           --arch deit_tiny_patch16_224 --out /tmp/deit.onnx
         python examples/edge_classify.py ../shared/images/imagenet-sample-100/n01440764_tench.JPEG \
           --model /tmp/deit.onnx
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
            "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


# -- decode ------------------------------------------------------------------------------------------------
def decode(path: str) -> Image.Image:
    """A file -> 8-bit RGB, as vitkit's decode_image: first frame, EXIF orientation, alpha over white."""
    with open(path, "rb") as fh:
        image = Image.open(fh)
        image.load()
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in HIGH_DEPTH_MODES:  # 16-bit / float greys: rescaled to 0..255, not clipped
        pixels = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        low, high = pixels.min(), pixels.max()
        if image.mode == "F" and low >= 0.0 and high <= 1.0:
            pixels = pixels * 255.0
        elif image.mode != "F" and low >= 0 and high <= 65535:
            pixels = pixels * (255.0 / 65535.0)
        elif high > low:
            pixels = (pixels - low) * (255.0 / (high - low))
        else:
            pixels = np.zeros_like(pixels)
        return Image.fromarray(np.round(pixels).astype(np.uint8)).convert("RGB")
    if "A" in image.getbands() or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


# -- preprocess --------------------------------------------------------------------------------------------
def preprocess(image: Image.Image, spec: dict) -> np.ndarray:
    """RGB image -> float32 (1, 3, input_size, input_size)."""
    size = spec["input_size"]
    resize = math.floor(size / spec["crop_pct"])
    resample = RESAMPLE[spec["interpolation"]]
    if spec["resize_mode"] == "shortest":  # torchvision Resize(resize) + CenterCrop(size)
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_long = int(resize * long / short)
        image = image.resize((resize, new_long) if width <= height else (new_long, resize), resample)
        width, height = image.size

        def offset(side: int) -> int:
            return -((size - side) // 2) if size > side else int(round((side - size) / 2.0))

        left, top = offset(width), offset(height)
    elif spec["resize_mode"] == "exact":  # transformers: resize both sides, then floor-offset centre crop
        image = image.resize((resize, resize), resample)
        left = top = (resize - size) // 2
    else:
        raise ValueError(f"unknown resize_mode {spec['resize_mode']!r}")
    image = image.crop((left, top, left + size, top + size))  # outside the image: zeros
    pixels = np.asarray(image).transpose(2, 0, 1)  # (H, W, 3) uint8 -> (3, H, W)
    scaled = (pixels * (1 / 255)).astype(np.float32)
    mean = np.asarray(spec["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(spec["std"], dtype=np.float32)[:, None, None]
    return ((scaled - mean) / std)[None]


# -- model -------------------------------------------------------------------------------------------------
class Classifier:
    def __init__(self, path: str):
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if "vitkit_preprocess" not in meta or "vitkit_labels" not in meta:
            raise SystemExit(f"{path} has no vitkit_preprocess / vitkit_labels metadata: export it with "
                             "`vitkit export onnx`")
        self.spec = json.loads(meta["vitkit_preprocess"])
        self.labels = json.loads(meta["vitkit_labels"])
        self.input = self.session.get_inputs()[0].name
        if "logits" not in [o.name for o in self.session.get_outputs()]:
            raise SystemExit(f"{path} is a backbone without a classifier head (no 'logits' output)")

    def top_k(self, path: str, k: int = 5) -> list[dict]:
        (logits,) = self.session.run(["logits"], {self.input: preprocess(decode(path), self.spec)})
        logits = logits[0].astype(np.float32)
        exp = np.exp(logits - logits.max())
        probs = exp / exp.sum()
        order = np.argsort(-probs, kind="stable")[:k]
        return [{"index": int(i), "label": self.labels[i], "score": float(probs[i])} for i in order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with a vitkit-exported ONNX model.")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--model", required=True, help="a .onnx file written by `vitkit export onnx`")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one JSON object per image and line")
    args = parser.parse_args(argv)
    classifier = Classifier(args.model)
    status = 0
    for path in args.images:
        try:
            top = classifier.top_k(path, args.top_k)
            error = None
        except (OSError, ValueError, SyntaxError) as err:  # unreadable or not an image
            top, error, status = [], f"{type(err).__name__}: {err}", 1
        if args.json:
            print(json.dumps({"path": path, "top_k": top, "error": error}))
        elif error:
            print(f"{path}: error: {error}", file=sys.stderr)
        else:
            print(path)
            for p in top:
                print(f"  {p['score']:7.2%}  {p['label']} ({p['index']})")
    return status


if __name__ == "__main__":
    sys.exit(main())
