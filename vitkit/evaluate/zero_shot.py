"""Zero-shot evaluation: an image-text model scored on a labelled folder with class names as its only
knowledge of the classes, beside the published zero-shot figure when the registry knows it.

Class names come from --labels / --labels-file when given; otherwise ImageNet-1k's, as OpenAI curated them for
CLIP's published zero-shot figures (vitkit.labels.imagenet_1k_clip_names), when the data is laid out the ImageNet way (synset folders n01440764/, index folders 0/ .. 999/, or a flat folder with a labels
file), else the class folders' own names (underscores read as spaces).

Try it:  python -m pytest tests/test_zero_shot.py -q
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from vitkit.data.labelled import class_folders
from vitkit.evaluate.layouts import LABEL_FILES, VAL_DIRS
from vitkit.evaluate.run import Evaluation, evaluate_folder
from vitkit.image_text import ZeroShotClassifier
from vitkit.labels import imagenet_1k_clip_names
from vitkit.models.registry import MODELS

WNID = re.compile(r"^n\d{8}$")


def class_names(data: str | Path, truth_file: str | None = None) -> tuple[tuple[str, ...], bool]:
    """(the class names to score, whether they are ImageNet-1k's) for a labelled folder."""
    root = Path(data)
    root = next((root / name for name in VAL_DIRS if (root / name).is_dir()), root)
    if truth_file or any((root / name).is_file() for name in LABEL_FILES):
        return imagenet_1k_clip_names(), True
    folders = class_folders(root)
    if not folders:
        raise ValueError(f"{data} has no class folders: give the class names with --labels or --labels-file")
    if all(WNID.match(name) for name in folders) or all(name.isdigit() for name in folders):
        return imagenet_1k_clip_names(), True
    return tuple(name.replace("_", " ") for name in folders), False


def evaluate_zero_shot(classifier: ZeroShotClassifier, data: str, truth_file: str | None = None,
                       layout: str = "auto", batch_size: int = 32, workers: int = 1, progress: bool = True,
                       model_arg: str | None = None, imagenet: bool = False) -> Evaluation:
    """Top-1 / top-5 of `classifier` on `data`; `imagenet`: the labels are ImageNet-1k's, so the registry's
    published zero-shot ImageNet figure for `model_arg` is shown beside it."""
    evaluation = evaluate_folder(classifier, data, truth_file, layout, batch_size, workers, progress)
    row = MODELS.get(model_arg or "")
    published = (model_arg, row.zero_shot, True) if imagenet and row and row.zero_shot else None
    return dataclasses.replace(evaluation, published=published)
