"""Nearest neighbours in an index by cosine similarity: exact (LanceDB's flat scan over every vector: the
reference) or approximate (an IVF-PQ index, re-ranked on the full vectors) once the index is large, and the
measure of the approximate search's recall@k against the exact one.

Vectors are stored L2-normalised, so LanceDB's "dot" distance (1 - q.v) gives the cosine: score = 1 - distance.

Try it:  vitkit index stats my.db --check
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from vitkit.index.store import Store, vectors_from_arrow

ANN_THRESHOLD = 50_000  # rows from which `add` builds the ANN index (exact search stays available)
MIN_ANN_ROWS = 512  # PQ codebooks need 256 training rows; below this size an ANN index makes no sense
NPROBES = 20  # IVF partitions visited per query
REFINE_FACTOR = 10  # PQ candidates re-ranked on the full vectors: k * REFINE_FACTOR
# Chosen by benchmarks/index_ann.py: recall@10 >= 0.95 against exact at 100k x 384 clustered vectors.


@dataclass(frozen=True)
class Hit:
    id: str  # content id (sha256 of the file's bytes)
    path: str  # the first of the files with that content
    score: float  # cosine similarity
    label: str | None


def unit_rows(vectors: np.ndarray, dim: int) -> np.ndarray:
    """(Q, D) or (D,) -> (Q, D) float32 with unit rows; a zero or non-finite query is an error."""
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors = vectors.reshape(1, -1) if vectors.ndim == 1 else vectors  # (Q, D)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"query vectors must be (Q, {dim}) for this index, got {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (Q, 1)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise ValueError("a query vector is zero or not finite")
    return vectors / norms


def search(store: Store, vectors: np.ndarray, k: int = 10, exact: bool = False) -> list[list[Hit]]:
    """The k nearest rows of each query, best first. ANN only when the index has one and `exact` is False."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    queries = unit_rows(vectors, store.meta.dim)
    hits: list[list[Hit]] = [[] for _ in range(len(queries))]
    if not len(queries) or not store.count():
        return hits
    query = store.table.search(list(queries), vector_column_name="vector").distance_type("dot").limit(k) \
        .select(["id", "files", "_distance"])
    if exact or store.vector_index() is None:
        query = query.bypass_vector_index()
    else:
        query = query.nprobes(NPROBES).refine_factor(REFINE_FACTOR)
    result = query.to_arrow()
    columns = [result.column(c).to_pylist() for c in ("id", "files", "_distance")]
    owners = result.column("query_index").to_pylist() if len(queries) > 1 else [0] * result.num_rows
    for q, row_id, files, distance in zip(owners, *columns):
        first = files[0]
        hits[q].append(Hit(row_id, first["path"], 1.0 - float(distance), first["label"]))
    for row in hits:  # each query's rows come best first; keep them so whatever the batch layout
        row.sort(key=lambda h: -h.score)
    return hits


def build_ann(store: Store) -> None:
    """(Re)build the IVF-PQ index over every row: sqrt(N) partitions (at most N/256: LanceDB trains no more),
    D/8 sub-vectors of 8 bits."""
    from lancedb.index import IvfPq

    count, dim = store.count(), store.meta.dim
    if count < MIN_ANN_ROWS:
        raise ValueError(f"an ANN index needs at least {MIN_ANN_ROWS} images, this index has {count}: "
                         "exact search is fast at this size")
    sub_vectors = next(s for s in (dim // 8, dim // 4, dim // 2, dim) if s and dim % s == 0)
    partitions = max(1, min(round(count ** 0.5), count // 256))
    config = IvfPq(distance_type="dot", num_partitions=partitions, num_sub_vectors=sub_vectors,
                   max_iterations=20)
    store.table.create_index("vector", config=config, replace=True)


def ann_recall(store: Store, k: int = 10, samples: int = 100, seed: int = 0) -> float:
    """Mean recall@k of the ANN search against exact search, over `samples` stored vectors used as queries
    (each query's own row is left out of both result lists)."""
    if store.vector_index() is None:
        raise ValueError(f"{store.path} has no ANN index: every search is exact")
    ids = [i for batch in store.scan(["id"]) for i in batch.column("id").to_pylist()]
    chosen = np.random.default_rng(seed).choice(len(ids), min(samples, len(ids)), replace=False)
    picked = pa.concat_tables(store.select([ids[i] for i in chosen], ["id", "vector"]))
    queries = vectors_from_arrow(picked.column("vector"), store.meta.dim)  # (S, D)
    exact = search(store, queries, k + 1, exact=True)
    approx = search(store, queries, k + 1, exact=False)
    recalls = []
    for own, truth, found in zip(picked.column("id").to_pylist(), exact, approx):
        truth_ids = [h.id for h in truth if h.id != own][:k]
        found_ids = [h.id for h in found if h.id != own][:k]
        recalls.append(len(set(found_ids) & set(truth_ids)) / max(1, len(truth_ids)))
    return float(np.mean(recalls))
