"""Embed many images into one file (.npy, .safetensors or .parquet by suffix), in input order, with each
input's path and error; a resumable, shardable job (see vitkit/batch/job.py).

Try it:  vitkit embed ../shared/images/imagenet-sample-100 --arch deit_tiny_patch16_224 \
           --model ../shared/weights/deit-tiny-patch16-224/model.safetensors -o /tmp/emb.npy
"""

from __future__ import annotations

from pathlib import Path

import torch

from vitkit.api import Model
from vitkit.batch.job import Loader, Stats, run_to_file
from vitkit.batch.map import Chunk, Step
from vitkit.data.loader import Batch
from vitkit.embedding_files import check_suffix, write_embeddings


def embed_fn(model: Model, pool: str | None, layers: list[int] | None, normalize: bool) -> Step:
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


def embed_to_file(model: Model, paths: list[str], output: str | Path, pool: str | None = None,
                  layers: list[int] | None = None, normalize: bool = True, chunk_size: int = 256,
                  loader: Loader = Loader(), arch: str | None = None) -> Stats:
    """Embeddings of every input into `output` (its suffix picks the format), atomically at the end; a re-run
    after an interruption resumes where it stopped (vitkit.batch.job)."""
    check_suffix(output)
    depth = model.config.depth
    if layers and any(not -depth <= i < depth for i in layers):
        raise ValueError(f"--layers {','.join(map(str, layers))}: {model.source} has {depth} blocks "
                         f"(indices {-depth}..{depth - 1})")
    pool = pool or model.default_pool
    shape = model.embedding_shape(pool, layers)
    settings = {"task": "embed", "arch": arch, "pool": pool, "layers": layers, "normalize": normalize,
                **model.job_settings}

    def merge(chunks, tmp: Path) -> None:
        job_settings = {"model": model.source_id, "input_size": model.spec.input_size, **settings}
        write_embeddings(chunks, tmp, Path(output), len(paths), shape, job_settings)

    return run_to_file(model, paths, output, settings, embed_fn(model, pool, layers, normalize), merge, chunk_size,
                       loader)
