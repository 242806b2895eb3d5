"""How well a model (and pooling) retrieves your own images: `vitkit eval retrieval FOLDER --model M`.

FOLDER holds one subfolder per class (or train/ val/ splits, or a CSV/JSONL manifest: anything
`vitkit finetune` reads). Leave-one-out: every image queries all the others by cosine similarity;
  recall@k  fraction of queries with at least one image of their class among the k nearest
  mAP       mean over queries of the average precision of the full ranking
Queries whose class has no other image are left out. Chance levels are the exact expectations under a
random ranking, so a score can be read against them.

Try it:  vitkit eval retrieval photos-by-class/ --model ../shared/weights/deit-tiny-patch16-224/model.safetensors \
           --arch deit_tiny_patch16_224
"""

from __future__ import annotations

import numpy as np

from vitkit.api import Model
from vitkit.data.decode import DEFAULT_MAX_PIXELS
from vitkit.index.embedding import check_pool, embed_files
from vitkit.data.labelled import discover

KS = (1, 5, 10)
BLOCK = 1024  # queries ranked at once


def evaluate_retrieval(folder: str, model: Model, pool: str | None = None, batch_size: int = 32, workers: int = 0,
                       max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False) -> dict:
    """Embed every labelled image of `folder` and measure leave-one-out retrieval (see the module doc)."""
    pool = check_pool(pool or model.default_pool)
    splits = discover(folder)
    items = splits.train + splits.val + splits.test
    paths = [path for path, _ in items]
    vectors, kept, errors = [], [], []
    for positions, batch, failed in embed_files(model, paths, pool, batch_size, workers, max_pixels,
                                                progress=progress):
        vectors.append(batch)
        kept += positions
        errors += [{"path": paths[p], "error": reason} for p, reason in sorted(failed.items())]
    if len(kept) < 2:
        raise ValueError(f"{folder}: fewer than 2 readable images, nothing to retrieve")
    labels = np.array([items[p][1] for p in kept])
    metrics = retrieval_metrics(np.concatenate([v for v in vectors if len(v)]), labels)
    return {"folder": str(folder), "model": model.source_id, "pool": pool, "classes": len(splits.labels),
            **metrics, "errors": errors}


def retrieval_metrics(vectors: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = KS) -> dict:
    """Leave-one-out recall@k and mAP of unit `vectors` (N, D) with integer class `labels` (N,), and
    their chance levels."""
    n = len(vectors)
    relevant = np.bincount(labels)[labels] - 1  # (N,) other images of each query's class
    valid = relevant > 0
    if not valid.any():
        raise ValueError("no class has two images: nothing to retrieve")
    found = {k: 0 for k in ks}
    ap_sum = 0.0
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        sims = vectors[start:stop] @ vectors.T  # (b, N)
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # the query itself ranks last
        order = np.argsort(-sims, axis=1, kind="stable")[:, :n - 1]  # (b, N - 1) the others, best first
        rel = labels[order] == labels[start:stop, None]  # (b, N - 1)
        keep = valid[start:stop]
        for k in ks:
            found[k] += int(rel[:, :k].any(axis=1)[keep].sum())
        precision = np.cumsum(rel, axis=1) / np.arange(1, n)  # (b, N - 1) precision at each rank
        ap = (precision * rel).sum(axis=1) / np.maximum(relevant[start:stop], 1)  # (b,)
        ap_sum += float(ap[keep].sum())
    queries = int(valid.sum())
    others, rel_valid = n - 1, relevant[valid]
    return {"images": n, "queries": queries,
            **{f"recall@{k}": found[k] / queries for k in ks}, "mAP": ap_sum / queries,
            "chance": {**{f"recall@{k}": float(np.mean(chance_recall(others, rel_valid, k))) for k in ks},
                       "mAP": float(np.mean(chance_ap(others, rel_valid)))}}


def chance_recall(others: int, relevant: np.ndarray, k: int) -> np.ndarray:
    """P(at least one of `relevant` among `others` candidates lands in a random top k) = 1 - C(M-R, k)/C(M, k)."""
    miss = np.ones(len(relevant))
    for i in range(min(k, others)):
        miss *= np.clip((others - relevant - i) / (others - i), 0.0, None)
    return 1.0 - miss


def chance_ap(others: int, relevant: np.ndarray) -> np.ndarray:
    """Expected average precision of a random ranking of M candidates with R relevant:
    (1/M) * (H_M + (R-1)/(M-1) * (M - H_M)), H_M the M-th harmonic number."""
    harmonic = float(np.sum(1.0 / np.arange(1, others + 1)))
    spread = (relevant - 1) / (others - 1) if others > 1 else np.zeros(len(relevant))
    return (harmonic + spread * (others - harmonic)) / others
