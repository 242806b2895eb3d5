"""Embed many images into one file (.npy, .safetensors or .parquet by suffix), in input order, with each
input's path and error; a resumable, shardable job (see tasks/job.py).

Try it:  vitkit embed ../shared/images/imagenet-sample-100 --arch deit_tiny_patch16_224 \
           --model ../shared/weights/deit-tiny-patch16-224/model.safetensors -o /tmp/emb.npy
"""

from __future__ import annotations

import torch

from vitkit.api import Model
from vitkit.data.loader import Batch
from vitkit.tasks.job import BatchFn, Chunk


def embed_fn(model: Model, pool: str | None, layers: list[int] | None, normalize: bool) -> BatchFn:
    """Rows {"path", "error"} and array rows (n, *embedding_shape) for one batch; NaN where an input failed."""
    shape = model.embedding_shape(pool, layers)

    def process(batch: Batch, paths: list[str]) -> Chunk:
        positions = sorted(set(batch.indices) | set(batch.errors))
        out = torch.full((len(positions), *shape), float("nan"))  # (n, *shape)
        if batch.indices:
            row_of = {position: k for k, position in enumerate(positions)}
            rows_ok = [row_of[i] for i in batch.indices]
            out[rows_ok] = model.embed_pixels(batch.pixels, pool, layers, normalize)
        rows = [{"path": paths[i], "error": batch.errors.get(i)} for i in positions]
        return Chunk(rows, {"embeddings": out})

    return process
