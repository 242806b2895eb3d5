"""Every kind of image a Python caller may hand over, turned into an RGB PIL image the way `vitkit.data.decode` does
it for files (the same format allow-list, pixel limit, EXIF orientation and alpha on white).

    path (str or Path), encoded bytes, a binary file object    decoded by decode_image
    PIL.Image                                                   converted to RGB (to_rgb)
    numpy array (H, W) or (H, W, C), C in 1, 3, 4               uint8 as is; float in [0, 1] scaled by 255
    torch tensor (C, H, W) or (H, W), C in 1, 3, 4              the same, channels first (torchvision's layout)

Anything else, or an array of another shape, is refused with the reason (`ImageDecodeError`), so that in a batch with
errors="skip" it is that input's error and the others go on.

Try it:  python -c "import numpy as np; from vitkit.data.inputs import to_image; \
print(to_image(np.zeros((32, 48, 3), np.uint8)).size)"
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, Union

import numpy as np
import torch
from PIL import Image

from vitkit.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, ImageTooLarge, decode_image, to_rgb

ImageInput = Union[Image.Image, str, Path, bytes, np.ndarray, torch.Tensor, IO[bytes]]


def _as_uint8(pixels: np.ndarray, what: str) -> np.ndarray:
    """Floats in [0, 1] -> round(x * 255); other integer types within 0..255 as they are."""
    if np.issubdtype(pixels.dtype, np.floating):
        values, high = pixels.astype(np.float64), 1.0
    elif np.issubdtype(pixels.dtype, np.integer) and pixels.dtype != np.bool_:
        values, high = pixels.astype(np.int64), 255
    else:
        raise ImageDecodeError(f"{what} of dtype {pixels.dtype} is not an image: use uint8, or floats in [0, 1]")
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > high:
        raise ImageDecodeError(f"{what} values must be in 0..{high} for dtype {pixels.dtype}, got "
                               f"{values.min():.3g}..{values.max():.3g}")
    return (np.round(values * 255) if high == 1.0 else values).astype(np.uint8)


def _from_array(pixels: np.ndarray, what: str, max_pixels: int) -> Image.Image:
    """(H, W) or (H, W, C) -> RGB: uint8 as is, floats in [0, 1] scaled by 255 and rounded."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (3, 4)):
        raise ImageDecodeError(f"{what} of shape {tuple(pixels.shape)} is not an image: expected (H, W), (H, W, 3) "
                               "or (H, W, 4)" + (" (torch tensors: (C, H, W))" if what == "tensor" else ""))
    height, width = pixels.shape[:2]
    if not height or not width:
        raise ImageDecodeError(f"{what} of shape {tuple(pixels.shape)} has no pixels")
    if height * width > max_pixels:
        raise ImageTooLarge(f"image too large: {width}x{height} = {width * height / 1e6:.1f} MP exceeds the "
                            f"{max_pixels / 1e6:.1f} MP limit (raise max_pixels to allow it)")
    if pixels.dtype != np.uint8:
        pixels = _as_uint8(pixels, what)
    return to_rgb(Image.fromarray(np.ascontiguousarray(pixels)))  # (H, W) L, (H, W, 3) RGB, (H, W, 4) RGBA


def to_image(source: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Any `ImageInput` -> an RGB PIL image (see the module docstring); ImageDecodeError with the reason."""
    if isinstance(source, Image.Image):
        return source if source.mode == "RGB" else to_rgb(source)
    if isinstance(source, (str, Path, bytes, bytearray, memoryview)):
        return decode_image(bytes(source) if isinstance(source, (bytearray, memoryview)) else source,
                            max_pixels=max_pixels)
    if isinstance(source, torch.Tensor):
        pixels = source.detach().cpu()
        if pixels.ndim == 3 and pixels.shape[0] in (1, 3, 4):
            pixels = pixels.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
        elif pixels.ndim == 3:
            raise ImageDecodeError(f"tensor of shape {tuple(source.shape)} is not an image: expected (C, H, W) with "
                                   "C in 1, 3, 4, or (H, W)")
        return _from_array(pixels.float().numpy() if pixels.is_floating_point() else pixels.numpy(), "tensor",
                           max_pixels)
    if isinstance(source, np.ndarray):
        return _from_array(source, "array", max_pixels)
    if hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, bytes):
            raise ImageDecodeError("the file object gave text, not bytes: open it in binary mode ('rb')")
        return decode_image(data, max_pixels=max_pixels)
    raise ImageDecodeError(f"cannot read an image from a {type(source).__name__}: give a path, bytes, a binary file, a "
                           "PIL image, a numpy array (H, W, C) or a torch tensor (C, H, W)")


def describe(source: ImageInput) -> str:
    """What a result says its input was: the path, else the kind and shape."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, Image.Image):
        return f"<PIL image {source.width}x{source.height} {source.mode}>"
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return f"<{type(source).__name__} {'x'.join(map(str, source.shape))}>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    name = getattr(source, "name", None)
    return str(name) if isinstance(name, str) else f"<{type(source).__name__}>"
