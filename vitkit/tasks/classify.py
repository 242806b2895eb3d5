"""Classify many images: one row per input, in input order, with a per-file error instead of a crash.
With an output file the run is a resumable job (see tasks/job.py); to stdout it streams.

Try it:  vitkit classify ../shared/images/imagenet-sample-100 --arch deit_tiny_patch16_224 \
           --model ../shared/weights/deit-tiny-patch16-224/model.safetensors --format jsonl
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from tqdm import tqdm

from vitkit.api import Model
from vitkit.data.decode import DEFAULT_MAX_PIXELS
from vitkit.data.loader import Batch, iter_batches
from vitkit.tasks.job import PROGRESS_MIN_INPUTS, BatchFn, Chunk


def classify_fn(model: Model, top_k: int) -> BatchFn:
    """Rows {"path", "top_k": [{"index", "label", "score"}, ...], "error": None | reason} for one batch."""

    def process(batch: Batch, paths: list[str]) -> Chunk:
        predictions = model.top_k(model(batch.pixels), top_k) if batch.indices else []
        by_index = dict(zip(batch.indices, predictions))
        positions = sorted(set(by_index) | set(batch.errors))
        return Chunk([{"path": paths[i], "top_k": [p.to_dict() for p in by_index.get(i, [])],
                       "error": batch.errors.get(i)} for i in positions])

    return process


def classify_paths(model: Model, paths: list[str], top_k: int = 5, batch_size: int = 16, workers: int = 0,
                   max_pixels: int = DEFAULT_MAX_PIXELS, fast_decode: bool = False, progress: bool = True
                   ) -> Iterator[dict]:
    """Streams rows as batches finish (no resume: that needs an output file, see tasks/job.py)."""
    process = classify_fn(model, top_k)
    show = progress and len(paths) >= PROGRESS_MIN_INPUTS
    with tqdm(total=len(paths), unit="img", disable=not show, file=sys.stderr, dynamic_ncols=True) as bar:
        for batch in iter_batches(paths, model.spec, batch_size, workers, max_pixels, fast_decode,
                                  pin_memory=model.device.type == "cuda"):
            rows = process(batch, paths).rows
            yield from rows
            bar.update(len(rows))
