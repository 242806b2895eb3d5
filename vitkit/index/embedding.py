"""Embed image files for the index, in batches through vitkit's decode/preprocess loader: one bad file
gives an error for that file and never stops the rest. Decode workers are started by a fork server, not
forked from this process (whose LanceDB threads must not be forked).

Try it:  python -c "import vitkit; from vitkit.index.embedding import embed_files; \
m = vitkit.load('vitkit/assets/digits-vit'); print([v.shape for _, v, _ in embed_files(m, ['x.png'], 'cls')])"
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vitkit.api import Model
from vitkit.data.decode import DEFAULT_MAX_PIXELS
from vitkit.data.loader import iter_batches
from vitkit.index import INDEX_POOLS
from vitkit.tasks.job import PROGRESS_MIN_INPUTS

# LanceDB's runtime (threads) must not be forked: decode workers start from a fresh server process instead
START_METHOD = "forkserver"


def model_id(model: Model) -> str:
    """The model's source, as an absolute path when it is a local file or folder."""
    source = str(model.source)
    return str(Path(source).resolve()) if Path(source).exists() else source


def check_pool(pool: str) -> str:
    if pool not in INDEX_POOLS:
        raise ValueError(f"an index holds one vector per image: pool must be one of {', '.join(INDEX_POOLS)}, "
                         f"not {pool!r}")
    return pool


EmbeddedBatch = tuple[list[int], np.ndarray, dict[int, str]]


def embed_files(model: Model, paths: list[str], pool: str, batch_size: int = 32, workers: int = 0,
                max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False) -> Iterator[EmbeddedBatch]:
    """Per batch, in input order: (positions in `paths` of the decoded images, their L2-normalised
    vectors (n, D) float32, {position: reason} for the files that could not be read)."""
    show = progress and len(paths) >= PROGRESS_MIN_INPUTS
    with tqdm(total=len(paths), unit="img", disable=not show, file=sys.stderr, dynamic_ncols=True) as bar:
        for batch in iter_batches(paths, model.spec, batch_size, workers, max_pixels, False,
                                  pin_memory=model.device.type == "cuda", start_method=START_METHOD):
            vectors = (model.embed_pixels(batch.pixels, pool).numpy() if batch.indices
                       else np.empty((0, 0), np.float32))  # (n, D)
            yield batch.indices, vectors, batch.errors
            bar.update(len(batch.indices) + len(batch.errors))
