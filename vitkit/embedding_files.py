"""Embedding files: write (from a job's chunks, in order) and read back .npy, .safetensors and .parquet.

  .npy          the array (N, *shape), NaN rows for failed inputs, plus `<name>.rows.jsonl` beside it with
                each row's path and error, and the settings (model, pool, ...) on its first line
  .safetensors  tensor "embeddings" (N, *shape); paths, errors and settings in the metadata
  .parquet      columns path, error, embedding (fixed-size list of float32, flattened); settings and the
                shape in the schema metadata (needs pyarrow: pip install "vitkit[parquet]")

Try it:  python -c "from vitkit.embedding_files import read_embeddings; print(read_embeddings('emb.npy')[0].shape)"
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from math import prod
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vitkit.checkpoints.io import atomic_path, publish
from vitkit.output import json_text
from vitkit.batch.map import Chunk

SUFFIXES = (".npy", ".safetensors", ".parquet")


def check_suffix(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"embedding output {path}: use a {', '.join(SUFFIXES)} file name")
    if suffix == ".parquet":
        _pyarrow()
    return suffix


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as err:
        raise ValueError('.parquet output needs pyarrow: pip install "vitkit[parquet]"') from err
    return pyarrow


def rows_path(npy: str | Path) -> Path:
    return Path(npy).with_suffix(".rows.jsonl")


def write_embeddings(chunks: Iterator[Chunk], tmp: Path, final: Path, count: int, shape: tuple[int, ...],
                     settings: dict) -> None:
    """Write all chunks to `tmp` (the caller renames it to `final`), streaming where the format allows."""
    suffix = final.suffix.lower()
    if suffix == ".npy":
        _write_npy(chunks, tmp, final, count, shape, settings)
    elif suffix == ".safetensors":
        rows, arrays = [], []
        for chunk in chunks:
            rows += chunk.rows
            arrays.append(chunk.arrays["embeddings"])
        metadata = {"paths": json_text([r["path"] for r in rows]), "errors": json_text([r["error"] for r in rows]),
                    "settings": json.dumps(settings)}
        save_file({"embeddings": torch.cat(arrays).contiguous()}, tmp, metadata=metadata)
    else:
        _write_parquet(chunks, tmp, shape, settings)


def _write_npy(chunks, tmp: Path, final: Path, count: int, shape: tuple[int, ...], settings: dict) -> None:
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(count, *shape))  # on disk, not RAM
    rows_tmp = atomic_path(rows_path(final))
    try:
        with open(rows_tmp, "w") as fh:
            fh.write(json.dumps({"settings": settings}) + "\n")
            start = 0
            for chunk in chunks:
                block = chunk.arrays["embeddings"].numpy()
                array[start:start + len(block)] = block
                start += len(block)
                for row in chunk.rows:
                    fh.write(json_text(row) + "\n")
        array.flush()
        del array
        publish(rows_tmp, rows_path(final))
    finally:
        rows_tmp.unlink(missing_ok=True)


def _write_parquet(chunks, tmp: Path, shape: tuple[int, ...], settings: dict) -> None:
    pa = _pyarrow()
    import pyarrow.parquet as pq

    schema = pa.schema([("path", pa.string()), ("error", pa.string()),
                        ("embedding", pa.list_(pa.float32(), prod(shape)))],
                       metadata={"vitkit": json.dumps({"shape": list(shape), "settings": settings})})
    with pq.ParquetWriter(tmp, schema) as writer:
        for chunk in chunks:
            flat = chunk.arrays["embeddings"].reshape(len(chunk.rows), -1).numpy()  # (n, prod(shape))
            writer.write_table(pa.table({
                "path": [_utf8(r["path"]) for r in chunk.rows], "error": [r["error"] for r in chunk.rows],
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), prod(shape)),
            }, schema=schema))


def _utf8(path: str) -> str:
    """Parquet strings are UTF-8: a name that is not shows its other bytes as \\xHH."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def read_embeddings(path: str | Path) -> tuple[np.ndarray, list[dict], dict]:
    """(array (N, *shape) float32 with NaN rows for failures, rows [{"path", "error"}], settings)."""
    path = Path(path)
    suffix = check_suffix(path)
    if suffix == ".npy":
        lines = rows_path(path).read_text().splitlines()
        return np.load(path, mmap_mode="r"), [json.loads(line) for line in lines[1:]], json.loads(lines[0])["settings"]
    if suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt") as fh:
            meta = fh.metadata()
        rows = [{"path": p, "error": e} for p, e in zip(json.loads(meta["paths"]), json.loads(meta["errors"]))]
        return load_file(path)["embeddings"].numpy(), rows, json.loads(meta["settings"])
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    info = json.loads(table.schema.metadata[b"vitkit"])
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    array = flat.reshape(len(table), *info["shape"]).astype(np.float32)
    rows = [{"path": p, "error": e} for p, e in zip(table.column("path").to_pylist(), table.column("error").to_pylist())]
    return array, rows, info["settings"]
