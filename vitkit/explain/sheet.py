"""Contact sheets: many explanations on one PNG, a grid of heatmap overlays each with its file name and top-1
label, for a quick visual check of a dataset (what the model looks at, what it predicts, which files are
unreadable). Large folders are split over pages of `columns * rows` tiles: sheet-001.png, sheet-002.png, ...

Try it:  vitkit explain ../shared/images/imagenet-sample-100 --arch deit_tiny_patch16_224 \
           --model ../shared/weights/deit-tiny-patch16-224/model.safetensors --out explained/ --sheet
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path

from PIL import Image, ImageOps

from vitkit.explain.explanation import Explanation, Failed
from vitkit.explain.options import COLUMNS, ROWS
from vitkit.explain.overlay import BACKGROUND, INK, MUTED, blend, fit, font, save_png

TILE = 192  # overlay side in pixels
CAPTION = 36  # pixels under each tile: file name, top-1 label and score
GAP = 6
ERROR_FILL = (236, 236, 236)


def tile(item: Explanation | Failed, size: int = TILE) -> Image.Image:
    """One grid cell: the overlay (or the error, for an input that failed) above two caption lines."""
    cell = Image.new("RGB", (size, size + CAPTION), BACKGROUND)
    from PIL import ImageDraw  # drawn only here (see overlay.py)

    draw = ImageDraw.Draw(cell)
    if isinstance(item, Failed):
        draw.rectangle((0, 0, size - 1, size - 1), fill=ERROR_FILL)
        lines = textwrap.wrap(f"error: {item.error}", width=max(size // 8, 10))[: size // 16]
        draw.multiline_text((6, 6), "\n".join(lines), fill=(170, 30, 30), font=font(12), spacing=3)
        top = "unreadable"
    else:
        overlay = ImageOps.contain(blend(item.image, item.upsampled), (size, size), Image.Resampling.BICUBIC)
        # (fills the tile, up or down, keeping the aspect of non-square inputs)
        cell.paste(overlay, ((size - overlay.width) // 2, (size - overlay.height) // 2))
        best = item.predictions[0] if item.predictions else None
        top = f"{best.label} {best.score:.0%}" if best else "no classifier head"
    draw.text((2, size + 2), fit(draw, Path(item.source).name, font(12), size - 4), fill=MUTED, font=font(12))
    draw.text((2, size + 18), fit(draw, top, font(13), size - 4), fill=INK, font=font(13))
    return cell


def sheet(items: list[Explanation | Failed], columns: int = COLUMNS, size: int = TILE) -> Image.Image:
    """One page: tiles in reading order, `columns` per row."""
    if not items:
        raise ValueError("a contact sheet needs at least one image")
    columns = min(columns, len(items))
    rows = math.ceil(len(items) / columns)
    step_x, step_y = size + GAP, size + CAPTION + GAP
    page = Image.new("RGB", (columns * step_x + GAP, rows * step_y + GAP), BACKGROUND)
    for i, item in enumerate(items):
        row, column = divmod(i, columns)
        page.paste(tile(item, size), (GAP + column * step_x, GAP + row * step_y))
    return page


def _pages(items: Iterable[Explanation | Failed], per_page: int) -> Iterator[list[Explanation | Failed]]:
    page: list[Explanation | Failed] = []
    for item in items:
        page.append(item)
        if len(page) == per_page:
            yield page
            page = []
    if page:
        yield page


def write_sheets(items: Iterable[Explanation | Failed], out_dir: str | Path, columns: int = COLUMNS,
                 rows: int = ROWS, size: int = TILE) -> list[Path]:
    """Pages of `columns * rows` tiles as out_dir/sheet-001.png, ... (consumes `items` as it goes: only one
    page of tiles is held at a time). Returns the paths written, in order."""
    if columns < 1 or rows < 1:
        raise ValueError(f"a contact sheet needs at least one column and one row, got {columns}x{rows}")
    return [save_png(sheet(page, columns, size), Path(out_dir) / f"sheet-{number:03d}.png")
            for number, page in enumerate(_pages(items, columns * rows), start=1)]
