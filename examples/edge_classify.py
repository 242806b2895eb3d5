"""Classify images with a vitkit-exported .onnx file and nothing else: onnxruntime, numpy and pillow; zero-shot
with an image-text model's two exported towers and, for its tokenizer, the `tokenizers` package.

Everything the model needs travels inside the file (ONNX metadata_props written by `vitkit export onnx`):
  vitkit_preprocess  {"input_size", "crop_pct", "resize_mode", "interpolation", "mean", "std"}
  vitkit_labels      ["tench", "goldfish", ...]
  vitkit_scores      {"activation": "softmax"}, or "sigmoid" with per-label "thresholds" (multi-label models)
The pixels are prepared exactly as vitkit prepares them (vitkit/data/decode.py + transforms.py): EXIF orientation,
first frame, RGB (transparency over white), resize ("shortest": shorter side to floor(input_size / crop_pct),
aspect kept, torchvision's truncation; "exact": both sides), centre crop (torchvision's rounding for "shortest",
transformers' floor for "exact"), /255 in float64, then (x - mean) / std in float32.

Zero-shot (CLIP, SigLIP 2): the image tower's file gives the image embedding (`pre_logits`), the text tower's file
(`vitkit export onnx-text`, or `vitkit quantize --text-out`) the label embeddings, with its tokenizer, logit scale
and bias in its metadata (vitkit_tokenizer, vitkit_logit_scale, vitkit_logit_bias): each label's prompts are
embedded, L2-normalised, averaged and normalised again; logits = exp(scale) * cosine (+ bias); scores are a softmax
over the labels (CLIP) or a sigmoid per label (SigLIP). SigLIP 1's SentencePiece rules are not reproduced here:
use vitkit for those models.

Try it:  vitkit export onnx --model ../shared/weights/deit-tiny-patch16-224/model.safetensors \
           --arch deit_tiny_patch16_224 --out /tmp/deit.onnx
         python examples/edge_classify.py ../shared/images/imagenet-sample-100/n01440764_tench.JPEG \
           --model /tmp/deit.onnx
         vitkit export onnx --model openai/clip-vit-base-patch32 --out clip-image.onnx
         vitkit export onnx-text --model openai/clip-vit-base-patch32 --out clip-text.onnx
         python examples/edge_classify.py photo.jpg --model clip-image.onnx --text-model clip-text.onnx \
           --labels "cat,dog,a red car"
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
    elif spec["resize_mode"] == "pad":  # letterbox: longer side to size, centred on the mean colour
        scale = size / max(image.size)
        new_w, new_h = (max(1, min(size, round(side * scale))) for side in image.size)
        canvas = Image.new("RGB", (size, size), tuple(round(255 * m) for m in spec["mean"]))
        canvas.paste(image.resize((new_w, new_h), resample), ((size - new_w) // 2, (size - new_h) // 2))
        image, left, top = canvas, 0, 0
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
        self.scores = json.loads(meta.get("vitkit_scores", '{"activation": "softmax"}'))
        self.input = self.session.get_inputs()[0].name
        if "logits" not in [o.name for o in self.session.get_outputs()]:
            raise SystemExit(f"{path} is a backbone without a classifier head (no 'logits' output)")

    def top_k(self, path: str, k: int = 5) -> list[dict]:
        (logits,) = self.session.run(["logits"], {self.input: preprocess(decode(path), self.spec)})
        logits = logits[0].astype(np.float32)
        if self.scores["activation"] == "sigmoid":  # multi-label: every label over its threshold, best first
            probs = 1 / (1 + np.exp(-logits))
            order = [i for i in np.argsort(-probs, kind="stable") if probs[i] >= self.scores["thresholds"][i]][:k]
        else:
            exp = np.exp(logits - logits.max())
            probs = exp / exp.sum()
            order = np.argsort(-probs, kind="stable")[:k]
        return [{"index": int(i), "label": self.labels[i], "score": float(probs[i])} for i in order]


class ZeroShot(Classifier):
    """The image tower of an image-text model and its exported text tower, scoring `labels` given as words."""

    def __init__(self, path: str, text_path: str, labels: list[str], templates: list[str]):
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if "vitkit_preprocess" not in meta or "pre_logits" not in [o.name for o in self.session.get_outputs()]:
            raise SystemExit(f"{path} is not an image tower exported by `vitkit export onnx`")
        self.spec, self.labels = json.loads(meta["vitkit_preprocess"]), labels
        self.input = self.session.get_inputs()[0].name
        text = ort.InferenceSession(text_path, providers=["CPUExecutionProvider"])
        props = text.get_modelmeta().custom_metadata_map
        if props.get("vitkit_kind") != "text":
            raise SystemExit(f"{text_path} is not a text tower exported by `vitkit export onnx-text`")
        self.scale = float(np.exp(json.loads(props["vitkit_logit_scale"])))
        self.bias = json.loads(props["vitkit_logit_bias"])
        tokenize = tokenizer(json.loads(props["vitkit_tokenizer"]), text_path)
        prompts = [template.format(label) for label in labels for template in templates]
        ids = tokenize(prompts)  # (labels * templates, context length) int64
        (embeds,) = text.run(["text_embeds"], {text.get_inputs()[0].name: ids})
        per_label = unit(embeds.astype(np.float32)).reshape(len(labels), len(templates), -1).mean(axis=1)
        self.label_vectors = unit(per_label)  # (labels, P)

    def top_k(self, path: str, k: int = 5) -> list[dict]:
        (image,) = self.session.run(["pre_logits"], {self.input: preprocess(decode(path), self.spec)})
        logits = self.scale * (unit(image.astype(np.float32))[0] @ self.label_vectors.T)  # (labels,)
        if self.bias is not None:  # SigLIP: a sigmoid per label, as it was trained
            probs = 1 / (1 + np.exp(-(logits + self.bias)))
        else:
            exp = np.exp(logits - logits.max())
            probs = exp / exp.sum()
        order = np.argsort(-probs, kind="stable")[:k]
        return [{"index": int(i), "label": self.labels[i], "score": float(probs[i])} for i in order]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def tokenizer(saved: dict, path: str):
    """texts -> (N, context length) int64 ids, from the tokenizer vitkit stored in the text tower's file."""
    if saved["kind"] == "siglip":
        raise SystemExit(f"{path}: SigLIP's SentencePiece tokenizer rules are vitkit's own; zero-shot with it at "
                         "the edge is not supported by this example (CLIP and SigLIP 2 are)")
    from tokenizers import Tokenizer

    rules, length = saved["rules"], saved["context_length"]
    tok = Tokenizer.from_str(json.dumps(saved["tokenizer"]))
    tok.enable_truncation(length, direction=rules["truncation_side"])
    tok.enable_padding(direction=rules["padding_side"], pad_id=rules["pad_id"], pad_token=rules["pad_token"],
                       length=length)
    return lambda texts: np.array([e.ids for e in tok.encode_batch(texts)], dtype=np.int64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with a vitkit-exported ONNX model.")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--model", required=True, help="a .onnx file written by `vitkit export onnx`")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one JSON object per image and line")
    parser.add_argument("--text-model", help="zero-shot: the text tower (`vitkit export onnx-text`)")
    parser.add_argument("--labels", help='zero-shot: class names, comma-separated ("cat,dog,a red car")')
    parser.add_argument("--template", action="append", help='zero-shot prompt (repeatable); default "a photo of a {}."')
    args = parser.parse_args(argv)
    if bool(args.text_model) != bool(args.labels):
        parser.error("zero-shot needs both --text-model and --labels")
    if args.text_model:
        labels = [name.strip() for name in args.labels.split(",") if name.strip()]
        classifier = ZeroShot(args.model, args.text_model, labels, args.template or ["a photo of a {}."])
    else:
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
