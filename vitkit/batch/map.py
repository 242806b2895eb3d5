"""The one batch loop: decode an ordered list of image paths in worker processes, hand each decoded batch to
a `step` (classify, embed, explain, index, ...) that turns it into one row per input (errors included) and,
for tasks that produce arrays, array rows, and show one progress bar. One bad file never stops the rest: the
loader gives it an error instead of pixels, and the step writes that error into its row.

    for batch, chunk in map_images(paths, model.spec, step, batch_size=16, workers=1):
        ...  # chunk.rows: one per input of the batch, in input order

Resumable output goes through vitkit.batch.job, which runs this loop over a job's unfinished chunks.

Try it:  python -m pytest tests/test_classify.py -q
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from vitkit.config import PreprocessSpec
from vitkit.data.decode import DEFAULT_MAX_PIXELS
from vitkit.data.loader import Batch, iter_batches
from vitkit.progress import bar

PROGRESS_MIN_INPUTS = 32  # short runs finish before a bar would help


@dataclass
class Chunk:
    """Results for a run of consecutive inputs: one row per input (path, error, task fields) and, for
    tasks that produce arrays, one array row per input (NaN where the input failed)."""

    rows: list[dict]
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)


# A step turns one decoded batch into rows (and array rows) for its inputs, errors included.
Step = Callable[[Batch, list[str]], Chunk]


def concat_chunks(pieces: list[Chunk]) -> Chunk:
    """Consecutive pieces of one chunk as one Chunk."""
    rows = [row for piece in pieces for row in piece.rows]
    arrays = {k: torch.cat([piece.arrays[k] for piece in pieces]) for k in pieces[0].arrays}
    return Chunk(rows, arrays)


def positions(batch: Batch) -> list[int]:
    """The input positions a batch covers, decoded or not, in order."""
    return sorted(set(batch.indices) | set(batch.errors))


def map_images(paths: list[str], spec: PreprocessSpec, step: Step, *, batch_size: int = 16, workers: int = 0,
               max_pixels: int = DEFAULT_MAX_PIXELS, fast_decode: bool = False, pin_memory: bool = False,
               progress: bool = True, plan: list[list[int]] | None = None, start_method: str | None = None,
               desc: str | None = None) -> Iterator[tuple[Batch, Chunk]]:
    """(batch, step(batch, paths)) for every batch over `paths` in order, or over `plan` (lists of positions,
    e.g. a job's unfinished chunks); a progress bar on stderr when there are enough inputs."""
    todo = len(paths) if plan is None else sum(len(p) for p in plan)
    show = progress and todo >= PROGRESS_MIN_INPUTS
    with bar(todo, desc, show=show) as done:
        for batch in iter_batches(paths, spec, batch_size, workers, max_pixels, fast_decode, pin_memory, plan,
                                  start_method):
            yield batch, step(batch, paths)
            done.update(len(batch.indices) + len(batch.errors))
