"""A generated calibration set: images to check a fast runtime against exact fp32 when the user gives none
(`precision="fast"` without images, `vitkit bench --fast`, `vitkit serve --fast`). Nothing is shipped or downloaded:
each image is drawn from a fixed seed, so the set is the same everywhere, and no dataset licence applies.

Each image mixes what photos have and noise lacks: a smooth colour field (low-frequency noise, upsampled), a few
filled shapes with hard edges, a texture band, and a little sensor-like noise. Predictions on such images have small
top-1 margins, so agreement measured on them is a stricter test than on real photos, not a looser one.

Try it:  python -c "from vitkit.data.calibration import calibration_images; calibration_images(4)[0].show()"
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

CALIBRATION_KIND = "generated calibration images (vitkit.data.calibration)"
SIZE = 256


def _image(rng: np.random.Generator) -> Image.Image:
    coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)  # a smooth colour field
    field = Image.fromarray(coarse).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(field)
    for _ in range(int(rng.integers(2, 6))):  # filled shapes with hard edges
        x0, y0 = rng.integers(0, SIZE - 32, 2)
        x1, y1 = x0 + rng.integers(24, SIZE // 2), y0 + rng.integers(24, SIZE // 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((int(x0), int(y0), int(x1), int(y1)), fill=colour)
    pixels = np.asarray(field, dtype=np.float32)  # (SIZE, SIZE, 3)
    rows = slice(int(rng.integers(0, SIZE // 2)), None)
    period = rng.uniform(4, 24)
    stripes = 40 * np.sin(np.arange(SIZE) * 2 * np.pi / period)  # a texture band
    pixels[rows] += stripes[None, :, None]
    pixels += rng.normal(0, 6, pixels.shape)  # sensor-like noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def calibration_images(count: int = 32, seed: int = 0) -> list[Image.Image]:
    """`count` RGB images of SIZE x SIZE, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return [_image(rng) for _ in range(count)]
