"""Images for quantization: calibration views and a labelled evaluation set.

Calibration (`calibration_pixels`): each image gives `views` inputs, the model's own centre crop, its mirror, then
random crops (30-100% of the area, aspect 3:4-4:3, half of them mirrored) resized by the model's preprocessing. A
small folder (tens of photos) thus gives a few hundred distinct activations; the crops are seeded (same views each run).

Evaluation (`eval_set`): a folder of images with their true classes, from (first found)
    labels.csv     columns `file` and `class_index` (0-based, the model's class order) or `label` / `class_name`
                   (a name of the model's labels)
    sub-folders    named like the model's labels (e.g. `tench/`, `goldfish/`): the folder name is the class
else the images are unlabelled: top-1 agreement with fp32 is still measured, accuracy is not.

Try it:  python -c "from vitkit.quantize.data import eval_set; print(eval_set('../shared/images/imagenet-sample-100', \
__import__('vitkit').load(arch='deit_tiny_patch16_224').labels)[1][:5])"
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from vitkit.config import PreprocessSpec
from vitkit.data.decode import decode_image
from vitkit.data.sources import expand_inputs, is_image_name
from vitkit.data.transforms import preprocess_batch


@dataclass
class EvalSet:
    paths: list[str]
    targets: list[int] | None  # None: unlabelled
    labels_from: str  # "labels.csv", "sub-folders" or "none"


def random_view(image: Image.Image, rng: random.Random) -> Image.Image:
    """A random crop of 30-100% of the area, aspect 3:4-4:3, mirrored half of the time."""
    w, h = image.size
    area = rng.uniform(0.3, 1.0) * w * h
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    cw, ch = min(w, max(1, round((area * aspect) ** 0.5))), min(h, max(1, round((area / aspect) ** 0.5)))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    view = image.crop((x0, y0, x0 + cw, y0 + ch))
    return ImageOps.mirror(view) if rng.random() < 0.5 else view


def _views(image: Image.Image, views: int, rng: random.Random) -> list[Image.Image]:
    out = [image, ImageOps.mirror(image)][:views]
    while len(out) < views:
        out.append(random_view(image, rng))
    return out


def calibration_pixels(inputs: list[str], spec: PreprocessSpec, views: int = 4, max_images: int | None = 256,
                       seed: int = 0, exclude: set[str] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Files, folders (recursive) or globs -> (pixels (N * views, 3, S, S), the image paths used). `exclude`: paths
    to leave out (e.g. the evaluation images)."""
    paths = expand_inputs(list(inputs))
    if exclude:
        gone = {str(Path(p).resolve()) for p in exclude}
        paths = [p for p in paths if str(Path(p).resolve()) not in gone]
    if max_images is not None and len(paths) > max_images:
        paths = random.Random(seed).sample(paths, max_images)
        paths.sort()
    if not paths:
        raise ValueError(f"no calibration images in {', '.join(map(str, inputs))}")
    rng = random.Random(seed)
    images = []
    for path in paths:
        images += _views(decode_image(path), max(1, views), rng)
    return preprocess_batch(images, spec), paths


def eval_set(folder: str | Path, labels: tuple[str, ...] | list[str]) -> EvalSet:
    """The images of `folder` and their class indices in the model's label order (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"evaluation folder {folder} does not exist")
    index = {name: i for i, name in enumerate(labels)}
    lowered = {name.lower(): i for i, name in enumerate(labels)}
    manifest = folder / "labels.csv"
    if manifest.is_file():
        return _from_csv(manifest, index, lowered, len(labels))
    paths = expand_inputs([str(folder)])
    if not paths:
        raise ValueError(f"no images in {folder}")
    parents = {Path(p).parent.name for p in paths}
    if all(Path(p).parent != folder for p in paths) and parents <= set(index) | set(lowered):
        targets = [index.get(Path(p).parent.name, lowered.get(Path(p).parent.name.lower())) for p in paths]
        return EvalSet(paths, targets, "sub-folders")
    return EvalSet(paths, None, "none")


def _from_csv(manifest: Path, index: dict[str, int], lowered: dict[str, int], num_classes: int) -> EvalSet:
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "file" not in rows[0]:
        raise ValueError(f"{manifest} needs a `file` column (and `class_index` or `label`)")
    paths, targets = [], []
    for n, row in enumerate(rows, start=2):
        path = manifest.parent / row["file"]
        if not is_image_name(path):
            continue
        if row.get("class_index", "") != "":
            target = int(row["class_index"])
            if not 0 <= target < num_classes:
                raise ValueError(f"{manifest} line {n}: class_index {target} is outside the model's "
                                 f"{num_classes} classes")
        else:
            name = row.get("label") or row.get("class_name") or ""
            target = index.get(name, lowered.get(name.lower()))
            if target is None:
                raise ValueError(f"{manifest} line {n}: {name!r} is not one of the model's labels")
        paths.append(str(path))
        targets.append(target)
    return EvalSet(paths, targets, manifest.name)
