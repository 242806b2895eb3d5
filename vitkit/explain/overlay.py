"""Pictures of an explanation with PIL and numpy only (no matplotlib): a heatmap blended over the image the
model saw, and the PNG `vitkit explain` writes per image: [image | overlay] above the caption and the top-k
labels with their scores.

The heat is min-max scaled per image (a map's absolute values differ between methods and models) and
coloured with the "turbo" colormap (Google, 2019), stored here as a 33-entry table and interpolated
linearly (within 3.3/255 of matplotlib's 256-entry one).

Try it:  python -c "import vitkit; from vitkit.explain import explain; from vitkit.explain.overlay import \
render; m = vitkit.load(arch='deit_tiny_patch16_224'); from PIL import Image; \
render(explain(m, [Image.new('RGB', (300, 200), 'teal')])[0]).save('/tmp/explained.png')"
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from typing import TYPE_CHECKING

from PIL import Image

if TYPE_CHECKING:
    from PIL import ImageDraw
# PIL.ImageDraw (and the ImageFont it loads) costs ~50 ms to import: it is imported where a PNG is drawn, so that
# `vitkit --help`, which reads this package's flags, stays fast

from vitkit.checkpoints.io import write_atomic_bytes
from vitkit.explain.explanation import Explanation

TURBO = np.array([  # matplotlib's turbo at 33 evenly spaced points, RGB 0..255
    [48, 18, 59], [57, 42, 115], [64, 64, 162], [68, 86, 199], [70, 107, 227], [70, 128, 246], [66, 148, 255],
    [55, 168, 250], [40, 188, 235], [28, 205, 216], [24, 221, 194], [31, 233, 175], [50, 242, 152], [78, 249, 125],
    [109, 254, 98], [139, 255, 75], [164, 252, 60], [185, 246, 53], [205, 236, 52], [223, 223, 55], [238, 207, 58],
    [248, 190, 57], [253, 172, 52], [254, 150, 43], [251, 126, 33], [244, 102, 23], [235, 80, 14], [223, 63, 8],
    [208, 47, 5], [190, 33, 2], [169, 22, 1], [146, 11, 1], [122, 4, 3]], dtype=np.float32)
ALPHA = 0.5  # weight of the heatmap colour in the overlay
PANEL = 336  # the image panels of a per-image PNG are at least this many pixels on their longer side
BACKGROUND, INK, MUTED, BAR = (255, 255, 255), (20, 20, 20), (110, 110, 110), (66, 133, 244)


def colorize(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1], any shape -> uint8 RGB (*shape, 3) through TURBO."""
    position = np.clip(values, 0.0, 1.0) * (len(TURBO) - 1)
    low = np.minimum(position.astype(np.int64), len(TURBO) - 2)
    frac = (position - low)[..., None]
    return np.round(TURBO[low] * (1 - frac) + TURBO[low + 1] * frac).astype(np.uint8)


def scale_heat(heat: np.ndarray) -> np.ndarray:
    """Min-max scaled to [0, 1]; a constant map gives all zeros."""
    low, high = float(heat.min()), float(heat.max())
    return (heat - low) / (high - low) if high > low else np.zeros_like(heat)


def blend(image: Image.Image, heat: np.ndarray, alpha: float = ALPHA) -> Image.Image:
    """The image (H, W) with the coloured, scaled heat (H, W) over it."""
    if heat.shape != (image.height, image.width):
        raise ValueError(f"heat {heat.shape} does not match the image ({image.height}, {image.width})")
    colour = colorize(scale_heat(heat)).astype(np.float32)  # (H, W, 3)
    mixed = np.asarray(image.convert("RGB"), dtype=np.float32) * (1 - alpha) + colour * alpha
    return Image.fromarray(np.round(mixed).astype(np.uint8))


def font(size: int):
    """Pillow's bundled font at `size` px (a fixed bitmap font where Pillow has no FreeType)."""
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def fit(draw: ImageDraw.ImageDraw, text: str, typeface, width: float) -> str:
    """`text`, shortened with an ellipsis in the middle until it is at most `width` pixels wide."""
    if draw.textlength(text, font=typeface) <= width:
        return text
    keep = len(text)
    while keep > 1:
        keep -= 1
        short = f"{text[: (keep + 1) // 2]}…{text[len(text) - keep // 2:]}"
        if draw.textlength(short, font=typeface) <= width:
            return short
    return "…"


def render(explanation: Explanation, panel: int = PANEL) -> Image.Image:
    """[image | overlay], then the source, the caption, a low-to-high colour key and the top-k bars."""
    image = explanation.image
    scale = max(1.0, panel / max(image.size))
    size = (round(image.width * scale), round(image.height * scale))
    panels = [image.resize(size, Image.Resampling.BICUBIC),
              blend(image, explanation.upsampled).resize(size, Image.Resampling.BICUBIC)]
    gap, margin, line = 8, 12, 22
    width = 2 * size[0] + gap + 2 * margin
    rows = max(len(explanation.predictions), 1)
    height = margin + size[1] + margin + 3 * line + rows * line + margin
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    for i, picture in enumerate(panels):
        canvas.paste(picture, (margin + i * (size[0] + gap), margin))
    from PIL import ImageDraw

    draw = ImageDraw.Draw(canvas)
    text_width = width - 2 * margin
    y = margin + size[1] + margin
    caption = re.sub(r"[\x00-\x1f\x7f]", "?", explanation.source)  # a file name may hold a newline
    draw.text((margin, y), fit(draw, caption, font(15), text_width), fill=INK, font=font(15))
    y += line
    _colour_key(canvas, draw, (margin, y), explanation.caption, text_width)
    y += 2 * line
    _prediction_bars(draw, explanation, (margin, y), text_width, line)
    return canvas


def _colour_key(canvas: Image.Image, draw: ImageDraw.ImageDraw, at: tuple[int, int], caption: str,
                width: int) -> None:
    """The caption, then 'low [gradient] high' so the colours can be read."""
    x, y = at
    draw.text((x, y), fit(draw, caption, font(13), width), fill=MUTED, font=font(13))
    y += 20
    draw.text((x, y), "low", fill=MUTED, font=font(12))
    start = x + 30
    gradient = colorize(np.linspace(0, 1, 160, dtype=np.float32))[None].repeat(10, axis=0)  # (10, 160, 3)
    canvas.paste(Image.fromarray(gradient), (start, y + 3))
    draw.text((start + 166, y), "high", fill=MUTED, font=font(12))


def _prediction_bars(draw: ImageDraw.ImageDraw, explanation: Explanation, at: tuple[int, int], width: int,
                     line: int) -> None:
    x, y = at
    if not explanation.predictions:
        draw.text((x, y), "no classifier head: map only", fill=MUTED, font=font(14))
        return
    bar_width = width // 3
    label_width = width - bar_width - 70
    for rank, p in enumerate(explanation.predictions, start=1):
        label = fit(draw, f"{rank}. {p.label}", font(14), label_width)
        draw.text((x, y), label, fill=INK, font=font(14))
        bar_x = x + label_width + 8
        draw.rectangle((bar_x, y + 4, bar_x + bar_width, y + 16), outline=(210, 210, 210))
        draw.rectangle((bar_x, y + 4, bar_x + round(bar_width * p.score), y + 16), fill=BAR)
        draw.text((bar_x + bar_width + 8, y), f"{p.score:6.1%}", fill=INK, font=font(14))
        y += line


def save_png(image: Image.Image, target: str | Path) -> Path:
    """Write atomically: the PNG appears complete or not at all."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # zlib level 6: optimize=True is 4x slower for 1% smaller files
    write_atomic_bytes(buffer.getvalue(), target)
    return Path(target)
