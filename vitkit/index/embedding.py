"""Embed image files for the index, in batches through vitkit's decode/preprocess loader: one bad file
gives an error for that file and never stops the rest. Decode workers are started by a fork server, not
forked from this process (whose LanceDB threads must not be forked).

Try it:  python -c "import vitkit; from vitkit.index.embedding import embed_files; \
m = vitkit.load('vitkit/assets/digits-vit'); print([v.shape for _, v, _ in embed_files(m, ['x.png'], 'cls')])"
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from vitkit.api import Model
from vitkit.batch.map import Chunk, map_images
from vitkit.data.decode import DEFAULT_MAX_PIXELS
from vitkit.data.loader import Batch
from vitkit.api import VECTOR_POOLS

# LanceDB's runtime (threads) must not be forked: decode workers start from a fresh server process instead
START_METHOD = "forkserver"


def check_pool(pool: str) -> str:
    if pool not in VECTOR_POOLS:
        raise ValueError(f"an index holds one vector per image: pool must be one of {', '.join(VECTOR_POOLS)}, "
                         f"not {pool!r}")
    return pool


EmbeddedBatch = tuple[list[int], np.ndarray, dict[int, str]]


def embed_files(model: Model, paths: list[str], pool: str, batch_size: int = 32, workers: int = 0,
                max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False) -> Iterator[EmbeddedBatch]:
    """Per batch, in input order: (positions in `paths` of the decoded images, their L2-normalised
    vectors (n, D) float32, {position: reason} for the files that could not be read)."""

    def step(batch: Batch, _: list[str]) -> Chunk:
        vectors = model.embed_pixels(batch.pixels, pool) if batch.indices else torch.empty(0, 0)  # (n, D)
        return Chunk([], {"vectors": vectors})

    for batch, chunk in map_images(paths, model.spec, step, batch_size=batch_size, workers=workers,
                                   max_pixels=max_pixels, pin_memory=model.device.type == "cuda", progress=progress,
                                   start_method=START_METHOD):
        yield batch.indices, chunk.arrays["vectors"].numpy(), batch.errors
