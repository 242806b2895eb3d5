"""Classify many images: one row per input, in input order, with a per-file error instead of a crash.

Try it:  vitkit classify ../shared/images/imagenet-sample-100 --arch deit_tiny_patch16_224 \
           --model ../shared/weights/deit-tiny-patch16-224/model.safetensors --format jsonl
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from tqdm import tqdm

from vitkit.api import Model
from vitkit.data.decode import DEFAULT_MAX_PIXELS
from vitkit.data.loader import iter_batches

PROGRESS_MIN_INPUTS = 32  # short runs finish before a bar would help


def classify_paths(model: Model, paths: list[str], top_k: int = 5, batch_size: int = 16, workers: int = 0,
                   max_pixels: int = DEFAULT_MAX_PIXELS, fast_decode: bool = False, progress: bool = True
                   ) -> Iterator[dict]:
    """Rows {"path", "top_k": [{"index", "label", "score"}, ...], "error": None | reason}."""
    show = progress and len(paths) >= PROGRESS_MIN_INPUTS
    with tqdm(total=len(paths), unit="img", disable=not show, file=sys.stderr, dynamic_ncols=True) as bar:
        batches = iter_batches(paths, model.spec, batch_size, workers, max_pixels, fast_decode,
                               pin_memory=model.device.type == "cuda")
        for batch in batches:
            predictions = model.top_k(model(batch.pixels), top_k) if batch.indices else []
            by_index = dict(zip(batch.indices, predictions))
            for i in sorted(set(by_index) | set(batch.errors)):
                preds = [p.to_dict() for p in by_index.get(i, [])]
                yield {"path": paths[i], "top_k": preds, "error": batch.errors.get(i)}
            bar.update(len(batch.indices) + len(batch.errors))
