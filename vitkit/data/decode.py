"""Decode an image file or bytes into an 8-bit RGB PIL image, or fail with one clear reason.

`decode_image` is the one entry point for pixels coming from outside: it refuses empty, non-image,
truncated and oversized inputs with an `ImageDecodeError` whose message says why, applies the EXIF
orientation, keeps the first frame of animations, and converts every PIL mode to RGB (`to_rgb`).

Try it:  python -c "from vitkit.data.decode import decode_image; print(decode_image('photo.jpg'))"
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vitkit.limits import IMAGE_FORMATS, MAX_PIXELS

DEFAULT_MAX_PIXELS = MAX_PIXELS

# Pillow's own bomb guard reads this module global on every open and warns or raises at sizes of its
# choosing (89 MP / 179 MP), before we could see the size. Overriding it temporarily around each open
# would race between threads, so it is switched off once, here, and `decode_image` checks
# width * height against its per-call `max_pixels` right after the header is read, before any pixel
# is decoded. This also disables the guard for other Pillow users in the same process.
Image.MAX_IMAGE_PIXELS = None

FORMATS = IMAGE_FORMATS  # the only Pillow plugins that run (see vitkit.limits)
REFUSED_MAGIC = ((b"\x00\x00\x01\x00", "ICO"), (b"\x00\x00\x02\x00", "CUR"), (b"icns", "ICNS"),
                 (b"8BPS", "PSD"), (b"%!PS", "EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"))

# grey modes deeper than 8 bits, which Pillow's own convert("RGB") would clip at 255
HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageDecodeError(ValueError):
    """The input cannot be turned into an RGB image; the message says why in plain words."""


class ImageTooLarge(ImageDecodeError):
    """The image's width * height exceeds `max_pixels` (a decompression-bomb guard)."""


def decode_image(
    source: str | Path | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode `source` (a path or the file's bytes) into an 8-bit RGB image.

    - Larger than `max_pixels` (width * height from the header): refused before decoding (ImageTooLarge).
    - `draft_size`: for JPEGs, let the decoder shrink by 1/2, 1/4 or 1/8 while keeping both sides at
      least `draft_size` (much faster on large photos; pixels differ slightly from a full decode).
    - Truncated data is an error, not a partially grey image.
    - EXIF orientation is applied; animated images give their first frame.
    - Transparent pixels (RGBA, LA, PA, P or L/RGB with a transparency key) are composited over a white
      background, as transformers' `convert_to_rgb` does, so a cut-out object is seen on white, not black.

    - Only the formats in FORMATS are opened; a path that is not a regular file (a FIFO, a device, a
      folder) is refused before it is opened, so it cannot block.

    File-system problems (missing file, permission denied) are raised unchanged (FileNotFoundError,
    PermissionError); everything wrong with the content raises ImageDecodeError, whatever the decoder raised.
    """
    with _open_stream(source) as stream:
        return _decode_stream(stream, max_pixels, draft_size)


def read_error(err: BaseException) -> str:
    """The one-line reason an input could not be used, for its error row: the decoder's own words, or what
    the file system said."""
    if isinstance(err, ImageDecodeError):
        return str(err)
    if isinstance(err, FileNotFoundError):
        return "no such file"
    if isinstance(err, OSError):
        return f"cannot read file: {err.strerror or err}"
    return f"cannot process image: {type(err).__name__}: {err}"


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. High-bit-depth and float greys are rescaled, not clipped."""
    if image.mode in HIGH_DEPTH_MODES:
        return Image.fromarray(_to_uint8(image)).convert("RGB")
    if "A" in image.getbands() or "transparency" in image.info:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as e:
        raise ImageDecodeError(f"unsupported image mode {image.mode!r}") from e


def _open_stream(source: str | Path | bytes) -> BinaryIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source)
    if isinstance(source, (str, Path)):
        if not str(source):
            raise FileNotFoundError("an empty path names no file")
        mode = os.stat(source).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
            raise ImageDecodeError(f"not a regular file ({kind})")
        return open(source, "rb")
    raise TypeError(f"decode_image takes a path or bytes, not {type(source).__name__}")


def _decode_stream(stream: BinaryIO, max_pixels: int, draft_size: int | None) -> Image.Image:
    if not stream.read(1):
        raise ImageDecodeError("empty file (0 bytes)")
    stream.seek(0)
    try:
        image = Image.open(stream, formats=FORMATS)
    except UnidentifiedImageError as e:
        stream.seek(0)
        head = stream.read(8)
        kind = next((name for magic, name in REFUSED_MAGIC if head.startswith(magic)), None)
        if kind:
            raise ImageDecodeError(f"{kind} files are not read by vitkit (it reads {', '.join(FORMATS)})") from e
        raise ImageDecodeError("not an image: cannot identify image file") from e
    except Exception as e:  # noqa: BLE001 - a decoder's failure on one file is that file's error, whatever it is
        raise ImageDecodeError(f"truncated or corrupt image data: {_reason(e)}") from e

    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image too large: {width}x{height} = {width * height / 1e6:.1f} MP exceeds the "
            f"{max_pixels / 1e6:.1f} MP limit (raise max_pixels to allow it)"
        )
    if draft_size is not None and image.format == "JPEG":
        image.draft("RGB", (draft_size, draft_size))

    try:
        image.load()  # the first frame: Image.open is positioned on frame 0 of an animation
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except ImageDecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - as above (Pillow's AVIF reader raises RuntimeError, for one)
        raise ImageDecodeError(f"truncated or corrupt image data: {_reason(e)}") from e


def _reason(err: Exception) -> str:
    text = str(err) or "no message"
    return text if isinstance(err, (OSError, SyntaxError, ValueError, EOFError)) else f"{type(err).__name__}: {text}"


def _to_uint8(image: Image.Image) -> np.ndarray:
    """Grey 16-bit, 32-bit integer or float pixels -> uint8 (H, W).

    16-bit modes map 0..65535 onto 0..255 (rounded). Mode "I" carries no bit depth: values within
    0..65535 are read as 16-bit samples (how Pillow stores 16-bit PNG/TIFF/PPM greys), anything else
    is stretched from its own min..max. Mode "F" within 0..1 is scaled by 255, otherwise stretched too.
    """
    pixels = np.asarray(image).astype(np.float64)  # (H, W)
    pixels = np.nan_to_num(pixels, nan=0.0, posinf=0.0, neginf=0.0)
    low, high = pixels.min(), pixels.max()
    if image.mode == "F" and low >= 0.0 and high <= 1.0:
        scaled = pixels * 255.0
    elif image.mode != "F" and low >= 0 and high <= 65535:
        scaled = pixels * (255.0 / 65535.0)
    elif high > low:
        scaled = (pixels - low) * (255.0 / (high - low))
    else:
        scaled = np.zeros_like(pixels)
    return np.round(scaled).astype(np.uint8)
