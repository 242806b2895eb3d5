"""ANN against exact search in a vitkit image index: build time, recall@10, query latency p50/p95.

    .venv/bin/python benchmarks/index_ann.py                      # 100k x 384-d, 200 held-out queries
    .venv/bin/python benchmarks/index_ann.py --rows 20000 --dim 768 --dups 0.9 --json

The vectors are synthetic but clustered like embeddings (not uniform noise, on which every neighbour is as
far as any other): `--clusters` random centres, each vector a centre plus Gaussian noise of `--noise` per
dimension, L2-normalised; the queries are drawn the same way and are not in the index. The truth is a numpy
brute-force search; the benchmark checks that the index's exact search returns it, then builds the IVF-PQ
index exactly as `vitkit index add` does (vitkit.index.search.build_ann) and searches with the same settings
(NPROBES, REFINE_FACTOR). Latencies are one query per call through `ImageIndex.search_vectors`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vitkit.index.image_index import ImageIndex  # noqa: E402
from vitkit.index.search import NPROBES, REFINE_FACTOR  # noqa: E402
from vitkit.index.store import FileRef, IndexMeta, Row, Store  # noqa: E402

COMMIT_ROWS = 10_000


def clustered(n: int, dim: int, clusters: int, noise: float = 0.6, seed: int = 0) -> np.ndarray:
    """(n, dim) unit vectors, each a random one of `clusters` random centres plus N(0, noise^2) per dimension."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    vectors = centres[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, dim))  # (n, dim)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def row_id(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def synthetic_index(path: str | Path, vectors: np.ndarray) -> ImageIndex:
    """An index of `vectors`: row i has id row_id(i) and the single file /synthetic/<i>."""
    store = Store.create(path, IndexMeta("synthetic", None, "cls", vectors.shape[1], {}, ()))
    for start in range(0, len(vectors), COMMIT_ROWS):
        store.commit(inserts=[Row(row_id(i), vectors[i], 0, [FileRef(f"/synthetic/{i:07d}", 0.0, None)])
                              for i in range(start, min(start + COMMIT_ROWS, len(vectors)))])
    return ImageIndex(store)


def latencies(index: ImageIndex, queries: np.ndarray, k: int, exact: bool) -> tuple[list[list[str]], np.ndarray]:
    ids, ms = [], []
    for q in queries:
        start = time.perf_counter()
        hits = index.search_vectors(q[None], k, exact=exact)[0]  # (1, D) -> one query
        ms.append(1000 * (time.perf_counter() - start))
        ids.append([h.id for h in hits])
    return ids, np.array(ms)


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.6)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--exact-queries", type=int, default=50, help="queries timed one by one on exact search")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--dups", type=float, metavar="T", help="also time `vitkit index dups --threshold T`")
    parser.add_argument("--db", help="index folder (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")
    args = parser.parse_args(argv)

    data = clustered(args.rows + args.queries, args.dim, args.clusters, args.noise)
    vectors, queries = data[:args.rows], data[args.rows:]  # queries are held out
    truth = [[row_id(i) for i in np.argsort(-(vectors @ q))[:args.k]] for q in queries]  # numpy brute force
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        index = synthetic_index(args.db or Path(tmp) / "db", vectors)
        insert_s = time.perf_counter() - start
        exact_ids, exact_ms = latencies(index, queries[:args.exact_queries], args.k, exact=True)
        start = time.perf_counter()
        batch_ids = [[h.id for h in row] for row in index.search_vectors(queries, args.k, exact=True)]
        exact_batch_s = time.perf_counter() - start
        start = time.perf_counter()
        index.build_ann()
        build_s = time.perf_counter() - start
        ann_ids, ann_ms = latencies(index, queries, args.k, exact=False)
        check = index.stats(check=True, samples=100)["check"]["ann_recall@10"]
        if args.dups is not None:
            start = time.perf_counter()
            pairs = len(index.duplicates(args.dups))
            dups_s = time.perf_counter() - start
    result = {
        "rows": args.rows, "dim": args.dim, "clusters": args.clusters, "noise": args.noise, "queries": args.queries,
        "insert_s": insert_s, "build_s": build_s, "nprobes": NPROBES, "refine_factor": REFINE_FACTOR,
        "exact_recall_vs_numpy": recall(batch_ids, truth), "exact_one_by_one_recall_vs_numpy": recall(
            exact_ids, truth[:args.exact_queries]),
        "exact_ms_p50": float(np.percentile(exact_ms, 50)), "exact_ms_p95": float(np.percentile(exact_ms, 95)),
        "exact_batch_ms_per_query": 1000 * exact_batch_s / args.queries,
        "ann_recall_at_k": recall(ann_ids, truth), "ann_ms_p50": float(np.percentile(ann_ms, 50)),
        "ann_ms_p95": float(np.percentile(ann_ms, 95)), "stats_check_recall@10": check,
    }
    print(f"{args.rows} x {args.dim}-d clustered vectors ({args.clusters} clusters, noise {args.noise}), "
          f"{args.queries} held-out queries, k={args.k}")
    print(f"  insert {insert_s:.1f} s; exact search = numpy brute force: recall {result['exact_recall_vs_numpy']:.4f}")
    print(f"  exact   p50 {result['exact_ms_p50']:7.1f} ms  p95 {result['exact_ms_p95']:7.1f} ms per query "
          f"({result['exact_batch_ms_per_query']:.1f} ms/query in one batch of {args.queries})")
    print(f"  IVF-PQ  build {build_s:.1f} s; nprobes {NPROBES}, refine x{REFINE_FACTOR}: recall@{args.k} "
          f"{result['ann_recall_at_k']:.4f} vs exact; p50 {result['ann_ms_p50']:.1f} ms  p95 "
          f"{result['ann_ms_p95']:.1f} ms per query")
    print(f"  `vitkit index stats --check` (stored vectors as queries): recall@10 {check:.4f}")
    if args.dups is not None:
        result |= {"dups_threshold": args.dups, "dups_pairs": pairs, "dups_s": dups_s}
        print(f"  near-duplicates (exact, all pairs) at cosine >= {args.dups}: {pairs} pairs in {dups_s:.1f} s")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
