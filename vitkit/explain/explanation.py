"""The Python API of explanations: `explain(model, images)` -> one `Explanation` per image, holding the map
as arrays, the image the model saw and its top-k predictions.

    import vitkit
    from vitkit.explain import explain
    model = vitkit.load("../shared/weights/deit-tiny-patch16-224/model.safetensors", arch="deit_tiny_patch16_224")
    [e] = explain(model, ["../shared/images/imagenet-sample-100/n01440764_tench.JPEG"])
    e.map.shape, e.upsampled.shape, e.predictions[0]       # (14, 14), (224, 224), Prediction(0, 'tench', ...)

The maps come from the readable attention path, asked for per call; predictions from the model's normal
(fused) forward, so they equal `model.classify`'s.

Try it:  python -m pytest tests/test_explain.py -q
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitkit.api import ImageInput, Model, Prediction
from vitkit.config import PreprocessSpec
from vitkit.explain.maps import MapSpec, patch_map, upsample


@dataclass
class Explanation:
    source: str  # the path given, or "image <i>" for PIL images and bytes
    image: Image.Image  # what the model saw: RGB after the checkpoint's resize + centre crop, H x W
    map: np.ndarray  # (gh, gw) float32: relevance of each patch (gh = H // patch)
    upsampled: np.ndarray  # (H, W) float32: `map` bilinearly over `image`'s pixels
    predictions: list[Prediction]  # top-k of the normal forward; empty for a model without a head
    caption: str  # what the map is, e.g. "rollout, blocks 0-11, heads mean, class token row"


@dataclass
class Failed:
    source: str
    error: str  # why the input could not be explained (unreadable file, not an image, ...)


def seen_image(pixels: torch.Tensor, spec: PreprocessSpec) -> Image.Image:
    """Normalized pixels (3, H, W) -> the RGB image they came from (after resize + crop): the exact inverse
    of the normalization up to float rounding, so the overlay lines up with what the model saw."""
    mean = torch.tensor(spec.mean, dtype=torch.float64)[:, None, None]  # (3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float64)[:, None, None]
    rgb = ((pixels.double().cpu() * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)  # (3, H, W)
    return Image.fromarray(rgb.permute(1, 2, 0).numpy())  # (H, W, 3)


def explain_pixels(model: Model, pixels: torch.Tensor, sources: list[str], spec: MapSpec = MapSpec(),
                   top_k: int = 5) -> list[Explanation]:
    """Preprocessed pixels (B, 3, H, W), one source name each -> one Explanation each."""
    grid_maps = patch_map(model.net, pixels.to(model.device), spec)  # (B, gh, gw)
    up = upsample(grid_maps, model.config.patch_size, tuple(pixels.shape[-2:]))  # (B, H, W)
    predictions = model.top_k(model(pixels), top_k) if model.config.num_classes else [[] for _ in sources]
    caption = spec.describe(model.config)
    return [Explanation(source, seen_image(p, model.spec), g.numpy(), u.numpy(), preds, caption)
            for source, p, g, u, preds in zip(sources, pixels, grid_maps, up, predictions)]


def explain(model: Model, images: ImageInput | list[ImageInput], method: str = "rollout", layer: int | None = None,
            head: int | None = None, fusion: str = "mean", readout: str = "auto", top_k: int = 5,
            batch_size: int = 4) -> list[Explanation]:
    """Images (paths, PIL images or encoded bytes) -> one Explanation each, in order. An unreadable image
    raises (as `model.classify` does); `vitkit explain` keeps going past them instead.

    method "rollout" (blocks 0..layer, default all) or "attention" (block `layer`, default the last);
    head: one head (attention only), else heads fused by `fusion` ("mean", "max", "min");
    readout: "auto" (the tokens the classifier reads), "cls", "dist" (distilled DeiT) or "patches"."""
    spec = MapSpec(method, layer, head, fusion, readout)
    images = images if isinstance(images, list) else [images]
    out: list[Explanation] = []
    for start in range(0, len(images), batch_size):  # bounded memory: every block's (heads, N, N) per image
        chunk = images[start:start + batch_size]
        sources = [str(img) if isinstance(img, (str, Path)) else f"image {start + i}" for i, img in enumerate(chunk)]
        out += explain_pixels(model, model.preprocess(chunk), sources, spec, top_k)
    return out
