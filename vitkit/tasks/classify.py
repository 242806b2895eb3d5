"""Classify many images: one row per input, in input order, with a per-file error instead of a crash.
Streamed (`classify_paths`), or written to a file as a resumable, shardable job (`classify_to_file`).

Try it:  vitkit classify ../shared/images/imagenet-sample-100 --arch deit_tiny_patch16_224 \
           --model ../shared/weights/deit-tiny-patch16-224/model.safetensors --format jsonl
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vitkit.api import Model
from vitkit.batch.job import Loader, Stats, run_to_file
from vitkit.batch.map import Chunk, Step, map_images
from vitkit.data.loader import Batch
from vitkit.output import write_rows


def classify_fn(model: Model, top_k: int) -> Step:
    """Rows {"path", "top_k": [{"index", "label", "score"}, ...], "error": None | reason} for one batch."""

    def process(batch: Batch, paths: list[str]) -> Chunk:
        predictions = model.top_k(model(batch.pixels), top_k) if batch.indices else []
        by_index = dict(zip(batch.indices, predictions))
        positions = sorted(set(by_index) | set(batch.errors))
        return Chunk([{"path": paths[i], "top_k": [p.to_dict() for p in by_index.get(i, [])],
                       "error": batch.errors.get(i)} for i in positions])

    return process


def classify_paths(model: Model, paths: list[str], top_k: int = 5, loader: Loader = Loader()) -> Iterator[dict]:
    """Rows as batches finish (no resume: that needs an output file, see `classify_to_file`)."""
    for _, chunk in map_images(paths, model.spec, classify_fn(model, top_k), batch_size=loader.batch_size,
                               workers=loader.workers, max_pixels=loader.max_pixels,
                               fast_decode=loader.fast_decode, pin_memory=model.device.type == "cuda",
                               progress=loader.progress):
        yield from chunk.rows


def classify_to_file(model: Model, paths: list[str], output: str | Path, top_k: int = 5, format: str = "jsonl",
                     chunk_size: int = 256, loader: Loader = Loader(), arch: str | None = None) -> Stats:
    """Rows of every input into `output` (any of vitkit.output.FORMATS), atomically at the end; a re-run after an
    interruption resumes where it stopped (vitkit.batch.job)."""

    def merge(chunks, tmp: Path) -> None:
        with open(tmp, "w", newline="", errors="surrogateescape") as out:  # names that are not UTF-8: their bytes
            write_rows((row for chunk in chunks for row in chunk.rows), format, out, top_k, paths, model.labels)

    settings = {"task": "classify", "arch": arch, "top_k": top_k, "format": format, **model.job_settings}
    return run_to_file(model, paths, output, settings, classify_fn(model, top_k), merge, chunk_size, loader)
