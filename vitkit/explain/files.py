"""Explain many image files: per input a PNG (the image the model saw, the heatmap overlay, the top-k
labels), a row (path, png, top_k, error) and optionally contact sheets, through the one batch loop
(vitkit.batch.map): one unreadable file gets its error row and the rest go on; one batch is held at a time.

Try it:  vitkit explain ../shared/images/imagenet-sample-100 --arch deit_tiny_patch16_224 \
           --model ../shared/weights/deit-tiny-patch16-224/model.safetensors --out explained/ --sheet
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from vitkit.api import Model
from vitkit.batch.job import Loader
from vitkit.batch.map import Chunk, map_images
from vitkit.checkpoints.io import write_atomic_text
from vitkit.data.loader import Batch
from vitkit.explain.explanation import Explanation, Failed, explain_pixels
from vitkit.explain.maps import MapSpec
from vitkit.explain.overlay import render, save_png
from vitkit.explain.sheet import COLUMNS, write_sheets
from vitkit.output import json_text

SHEET_NAME = re.compile(r"sheet-\d+")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
ITEM = "_item"  # the row key that carries an input's Explanation or Failed to the sheet writer


def png_names(paths: list[str]) -> list[str]:
    """One distinct PNG name per input: its stem (control characters, which a file name may hold, replaced
    by "_"), with its position added where two inputs share a stem, where the stem is a contact sheet's
    name, or where that name is already taken by another input's."""
    stems = [CONTROL.sub("_", Path(p).stem) or "image" for p in paths]
    counts = Counter(stems)
    names, taken = [], set()
    for i, stem in enumerate(stems):
        name = f"{stem}-{i}.png" if counts[stem] > 1 or SHEET_NAME.fullmatch(stem) else f"{stem}.png"
        while name in taken:
            name = f"{Path(name).stem}-{i}.png"
        taken.add(name)
        names.append(name)
    return names


def explain_files(model: Model, paths: list[str], out: str | Path, spec: MapSpec, top_k: int = 5,
                  loader: Loader = Loader(batch_size=4), pngs: bool = True, sheets: bool = False,
                  columns: int = COLUMNS) -> tuple[list[dict], list[Path]]:
    """Rows of every input, in order, written to OUT/explain.jsonl, and the contact sheets written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder for the PNGs")
    out.mkdir(parents=True, exist_ok=True)
    names = png_names(paths)

    def step(batch: Batch, paths: list[str]) -> Chunk:
        good = explain_pixels(model, batch.pixels, [paths[i] for i in batch.indices], spec, top_k) \
            if batch.indices else []
        found = dict(zip(batch.indices, good)) | {i: Failed(paths[i], e) for i, e in batch.errors.items()}
        rows = []
        for i in sorted(found):
            item = found[i]
            png = str(save_png(render(item), out / names[i])) if isinstance(item, Explanation) and pngs else None
            rows.append({"path": paths[i], "png": png, "top_k": [p.to_dict() for p in getattr(item, "predictions", [])],
                         "error": getattr(item, "error", None), ITEM: item})
        return Chunk(rows)

    rows: list[dict] = []

    def items() -> Iterator[Explanation | Failed]:
        for _, chunk in map_images(paths, model.spec, step, batch_size=loader.batch_size, workers=loader.workers,
                                   max_pixels=loader.max_pixels, fast_decode=loader.fast_decode,
                                   pin_memory=model.device.type == "cuda", progress=loader.progress):
            for row in chunk.rows:
                item = row.pop(ITEM)
                rows.append(row)
                yield item

    written: list[Path] = []
    if sheets:
        written = write_sheets(items(), out, columns=columns)
    else:
        for _ in items():  # writes the PNGs and the rows
            pass
    write_atomic_text("".join(json_text(row) + "\n" for row in rows), out / "explain.jsonl")
    return rows, written
