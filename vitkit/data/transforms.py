"""Turn an RGB PIL image into the normalized tensor a ViT expects, following a `PreprocessSpec`.

Two resize rules, each reproducing its reference library exactly (tests/test_preprocess.py):
  "shortest"  timm's eval transform: torchvision `Resize(spec.resize)` (shorter side, aspect kept)
              then `CenterCrop(spec.input_size)`
  "exact"     transformers' ViT/BEiT/DeiT image processors: resize to (resize, resize), then their
              centre crop when resize != input_size
where the crop starts as `spec.crop_offset_rounding` says: torchvision's (half to even) or transformers' (floor)
offset, so "shortest" with "floor" is transformers' BitImageProcessor / CLIPImageProcessor and "exact" with
"half_even" timm's crop_mode "squash";
then pixels / 255 and (x - mean) / std, with transformers' dtype steps (float64 rescale, float32 normalize).

Try it:  python -c "from vitkit.config import PreprocessSpec; from vitkit.data.decode import decode_image; \
from vitkit.data.transforms import preprocess; print(preprocess(decode_image('photo.jpg'), PreprocessSpec()).shape)"
"""

from __future__ import annotations

import functools

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from vitkit.config import PreprocessSpec
from vitkit.data.decode import to_rgb
from vitkit.limits import STRIP_FACTOR

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def preprocess(image: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """One image -> float32 tensor (3, input_size, input_size). Non-RGB images go through `to_rgb`."""
    return torch.from_numpy(_preprocess_array(image, spec))


def preprocess_batch(images: Sequence[Image.Image], spec: PreprocessSpec) -> torch.Tensor:
    """Images -> float32 tensor (B, 3, input_size, input_size)."""
    if not images:
        return torch.empty(0, 3, spec.input_size, spec.input_size)
    return torch.from_numpy(np.stack([_preprocess_array(image, spec) for image in images]))


# The work is done in numpy, single-threaded: torch's intra-op threads cost more than they save on
# images this small, and under CPU contention (loader workers, a busy server) made it 20x slower.
def _preprocess_array(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    return _normalize(eval_view(image, spec), spec)


def eval_view(image: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """The RGB image of input_size x input_size the model sees at inference: the resize and crop of `spec`."""
    if image.mode != "RGB":
        image = to_rgb(image)
    resample = RESAMPLE[spec.interpolation]
    if spec.resize_mode == "shortest":
        new_w, new_h = _shorter_side_size(image.width, image.height, spec.resize)
        if new_w * new_h > STRIP_FACTOR * spec.input_size ** 2:
            return _resize_centre_only(image, new_w, new_h, spec.input_size, resample, spec.crop_offset_rounding)
        return _centre_crop(image.resize((new_w, new_h), resample), spec.input_size, spec.crop_offset_rounding)
    if spec.resize_mode == "exact":
        resized = image.resize((spec.resize, spec.resize), resample)
        return _centre_crop(resized, spec.input_size, spec.crop_offset_rounding)
    if spec.resize_mode == "pad":
        return _letterbox(image, spec, resample)
    raise ValueError(f"unknown resize_mode {spec.resize_mode!r}: expected 'shortest', 'exact' or 'pad'")


def _letterbox_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, new width, new height): the image scaled so its longer side is `size` (the shorter rounded, at
    least 1 px), centred (offsets floored) in a size x size square."""
    scale = size / max(width, height)
    new_w, new_h = max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale)))
    return (size - new_w) // 2, (size - new_h) // 2, new_w, new_h


def _letterbox(image: Image.Image, spec: PreprocessSpec, resample: Image.Resampling) -> Image.Image:
    """The whole image on a square of the mean colour (which normalises to ~0), at the positions of _letterbox_box."""
    left, top, new_w, new_h = _letterbox_box(image.width, image.height, spec.input_size)
    canvas = Image.new("RGB", (spec.input_size, spec.input_size), tuple(round(255 * m) for m in spec.mean))
    canvas.paste(image.resize((new_w, new_h), resample), (left, top))
    return canvas


def eval_region(width: int, height: int, spec: PreprocessSpec) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the source pixels that `eval_view` shows, for an image of that size:
    training crops are taken inside it, so that what is learnt is seen in the geometry of inference."""
    size = spec.input_size
    if spec.resize_mode == "pad":  # nothing is cut
        return 0.0, 0.0, float(width), float(height)
    if spec.resize_mode == "shortest":
        new_w, new_h = _shorter_side_size(width, height, spec.resize)
    else:
        new_w = new_h = spec.resize
    scale_x, scale_y = width / new_w, height / new_h  # source pixels per resized pixel
    left = max(0.0, (new_w - size) / 2) * scale_x
    top = max(0.0, (new_h - size) / 2) * scale_y
    right, bottom = min(width, left + size * scale_x), min(height, top + size * scale_y)
    return left, top, right, bottom


def _shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision `Resize(size)`'s output (width, height): shorter side -> size, longer side truncated."""
    new_long = int(size * max(width, height) / min(width, height))
    return (size, new_long) if width <= height else (new_long, size)


def _resize_centre_only(image: Image.Image, new_w: int, new_h: int, size: int,
                        resample: Image.Resampling, rounding: str) -> Image.Image:
    """The centre crop of an image resized to (new_w, new_h), computed without that resized image: a thin
    strip (1 x 50,000 px) would otherwise become a 224 x 11-million-pixel intermediate. Only the crop's part
    of the pixel grid is resampled (a side shorter than the crop is zero-padded, as `_crop_offset` places it); the
    values differ from resize-then-crop by resampling round-off."""
    # per axis: (first resized px, count, offset out)
    spans = [_crop_span(new_w, size, rounding), _crop_span(new_h, size, rounding)]
    scale_x, scale_y = image.width / new_w, image.height / new_h  # source pixels per resized pixel
    (x0, w, px), (y0, h, py) = spans
    part = image.resize((w, h), resample, box=(x0 * scale_x, y0 * scale_y, (x0 + w) * scale_x, (y0 + h) * scale_y))
    if (w, h) == (size, size):
        return part
    canvas = Image.new("RGB", (size, size))
    canvas.paste(part, (px, py))
    return canvas


def _crop_offset(side: int, size: int, rounding: str) -> int:
    """Where a centre crop of `size` starts on an axis of length `side` (negative: zeros before the image).
    "half_even": torchvision's CenterCrop, round((side - size) / 2) half to even, a too-small side padded with
    (size - side) // 2 zeros before it. "floor": transformers' center_crop, (side - size) // 2, which places a
    too-small side after ceil((size - side) / 2) zeros."""
    if rounding == "floor":
        return (side - size) // 2
    return int(round((side - size) / 2.0)) if side >= size else -((size - side) // 2)


def _crop_span(side: int, size: int, rounding: str) -> tuple[int, int, int]:
    """A centre crop on one axis of length `side`: (first kept pixel, pixels kept, offset in the crop)."""
    offset = _crop_offset(side, size, rounding)
    return (offset, size, 0) if offset >= 0 else (0, side, -offset)


def _centre_crop(image: Image.Image, size: int, rounding: str) -> Image.Image:
    """A size x size centre crop at `_crop_offset`; PIL's crop fills the area outside the image with zeros."""
    left, top = _crop_offset(image.width, size, rounding), _crop_offset(image.height, size, rounding)
    return image.crop((left, top, left + size, top + size))


@functools.lru_cache(maxsize=64)
def _normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: the normalized value of every uint8 level per channel, computed as transformers does it
    (rescale in float64, cast to float32, normalize in float32): same steps, same bits. torchvision's float32
    x / 255 differs from this by at most one float32 ulp."""
    scaled = (np.arange(256) * (1 / 255)).astype(np.float32)[None, :]  # (1, 256)
    return (scaled - np.asarray(mean, dtype=np.float32)[:, None]) / np.asarray(std, dtype=np.float32)[:, None]


def _normalize(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> float32 (3, H, W), by table lookup: exactly the arithmetic of `_normalize_table`,
    a third cheaper than computing it per pixel."""
    pixels = np.asarray(image)  # (H, W, 3) uint8
    table = _normalize_table(tuple(spec.mean), tuple(spec.std))
    out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
    for c in range(3):
        out[c] = table[c][pixels[:, :, c]]
    return out
