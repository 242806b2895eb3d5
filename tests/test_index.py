"""The image index (vitkit/index): search, incremental add, identical content stored once, ANN, CLI.

- exact search equals a numpy brute-force search over the same vectors (same ids, same order up to ties);
- an IVF-PQ index on a few thousand clustered vectors: `stats --check` measures its recall@10 against exact
  search, and `add` builds it by itself past a (here low) threshold, then folds later rows into it;
- `add` embeds only new or changed files (counted at the model), links identical files to one row, reports
  unreadable files and goes on, prunes deleted files, refuses another model or pooling naming both models;
- the `vitkit index` commands (add/search/remove/stats/dups) end to end, with decode workers.

The 100k-vector ANN benchmark is benchmarks/index_ann.py (not run here); the SIGKILL test is
tests/test_index_crash.py, retrieval evaluation tests/test_index_retrieval.py.

Run:  .venv/bin/python -m pytest tests/test_index.py -q
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("lancedb")

import vitkit  # noqa: E402
import vitkit.cli as cli  # noqa: E402
from vitkit.index import ImageIndex, IndexMismatch  # noqa: E402
from vitkit.index.search import MIN_ANN_ROWS  # noqa: E402
from vitkit.runtime import cpu_bf16_native  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from index_ann import clustered, row_id, synthetic_index  # noqa: E402  (the benchmark's data, at small scale)

torch.set_num_threads(1)
DIGITS = str(Path(__file__).resolve().parents[1] / "vitkit" / "assets" / "digits-vit")  # 0.2M params, 32 px


def write_images(folder: Path, count: int, seed: int, start: int = 0, side: int = 12) -> list[Path]:
    """`count` distinct random RGB PNGs named <start>.png, <start + 1>.png, ... (zero-padded)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(start, start + count):
        path = folder / f"{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def model():
    return vitkit.load(DIGITS)


def test_exact_search_equals_numpy_brute_force(tmp_path):
    vectors, held_out = np.split(clustered(3020, 48, 30), [3000])
    vectors[2000:2050] = vectors[:50]  # exact ties: the same vector under two ids
    index = synthetic_index(tmp_path / "db", vectors)
    queries = np.concatenate([held_out, vectors[[0, 7, 2999]] * 3.0])  # stored ones unnormalised, too
    k = 15
    hits = index.search_vectors(queries, k=k, exact=True)
    ids = {row_id(i): i for i in range(len(vectors))}
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    for q, row in zip(unit, hits):
        scores = vectors @ q  # (N,) numpy brute force
        reference = np.argsort(-scores, kind="stable")[:k]
        found = np.array([ids[h.id] for h in row])
        assert len(found) == k
        # same order up to ties: the numpy score of the i-th hit is numpy's i-th best score
        np.testing.assert_allclose(scores[found], scores[reference], atol=1e-6)
        np.testing.assert_allclose([h.score for h in row], scores[reference], atol=1e-5)
        for rank, (got, want) in enumerate(zip(found, reference)):
            if got != want:  # only where two vectors score the same
                assert abs(scores[got] - scores[want]) < 1e-6, (rank, got, want)
        assert [h.path for h in row] == [f"/synthetic/{i:07d}" for i in found]


def test_ann_index_recall_check_and_exact_fallback(tmp_path, report):
    vectors, queries = np.split(clustered(4005, 64, 40, seed=2), [4000])
    index = synthetic_index(tmp_path / "db", vectors)
    assert index.info["ann"] is None
    index.build_ann()
    info = index.info
    assert info["ann"]["type"] == "IvfPq" and info["ann"]["indexed_rows"] == 4000
    check = index.stats(check=True, samples=50)["check"]
    assert check["repeated_ids"] == check["repeated_paths"] == check["rows_without_files"] == 0
    recall = check["ann_recall@10"]
    report(f"index: IVF-PQ recall@10 vs exact at 4,000 x 64-d clustered vectors: {recall:.3f} (50 queries)")
    assert recall >= 0.8
    exact = index.search_vectors(queries, k=10, exact=True)
    approx = index.search_vectors(queries, k=10)
    overlap = np.mean([len({h.id for h in a} & {h.id for h in e}) / 10 for a, e in zip(approx, exact)])
    assert overlap >= 0.8
    reference = np.argsort(-(vectors @ queries[0]))[:10]  # exact=True still bypasses the ANN index
    assert [h.id for h in exact[0]] == [row_id(i) for i in reference]


def test_ann_index_refused_on_a_tiny_index(tmp_path):
    index = synthetic_index(tmp_path / "db", clustered(MIN_ANN_ROWS - 1, 16, 4, seed=0))
    with pytest.raises(ValueError, match="at least"):
        index.build_ann()


def counting_embeddings(model, monkeypatch) -> list[int]:
    """The sizes of the batches the model embeds from now on."""
    counts = []
    original = model.embed_pixels

    def counting(pixels, *args, **kwargs):
        counts.append(len(pixels))
        return original(pixels, *args, **kwargs)

    monkeypatch.setattr(model, "embed_pixels", counting)
    return counts


def test_add_is_incremental_and_stores_identical_content_once(tmp_path, model, monkeypatch):
    photos = tmp_path / "photos"
    write_images(photos / "cats", 12, seed=0)
    write_images(photos / "dogs", 12, seed=1)
    shutil.copy(photos / "cats" / "0000.png", photos / "dogs" / "copy.png")
    (photos / "cats" / "broken.png").write_bytes(b"not an image")
    index = ImageIndex.create(tmp_path / "db", model)
    counts = counting_embeddings(model, monkeypatch)

    def add(**options):
        """index.add, and the number of images the model embedded (each new content once, nothing else)"""
        counts.clear()
        result = index.add([str(photos)], model, class_folders=True, **options)
        return result, sum(counts) - 1  # minus the model check's probe image

    first, embedded = add(chunk_size=5, batch_size=4)
    assert (first.files, first.embedded, first.linked, embedded) == (26, 24, 0, 24)
    assert first.errors == [(str(photos / "cats" / "broken.png"), "not an image: cannot identify image file")]
    assert index.info["count"] == 24
    hit = index.search_images(model, [photos / "dogs" / "copy.png"], k=1)[0][0]
    assert hit.score > 0.9999 and hit.path == str(photos / "cats" / "0000.png") and hit.label == "cats"
    row = index.get(hit.id)
    assert row["hash"] == hashlib.sha256((photos / "dogs" / "copy.png").read_bytes()).hexdigest()
    assert [(f["path"], f["label"]) for f in row["files"]] == [(str(photos / "cats" / "0000.png"), "cats"),
                                                               (str(photos / "dogs" / "copy.png"), "dogs")]
    assert row["size"] == (photos / "dogs" / "copy.png").stat().st_size
    assert index.get("0" * 64) is None and index.get("'; DROP TABLE images; --") is None

    again, embedded = add()
    assert (again.embedded, again.linked, again.unchanged, embedded) == (0, 0, 25, 0)

    write_images(photos / "cats", 1, seed=7, start=1)  # cats/0001.png: new content
    write_images(photos / "cats", 1, seed=8, start=50)  # a new file
    shutil.copy(photos / "cats" / "0002.png", photos / "dogs" / "another-copy.png")  # known content
    changed, embedded = add()
    assert (changed.embedded, changed.linked, changed.unchanged, embedded) == (2, 1, 24, 2)
    assert index.info["count"] == 25  # 24 - the old cats/0001 content + 2 new
    new_hit = index.search_images(model, [photos / "cats" / "0001.png"], k=1)[0][0]
    assert new_hit.path == str(photos / "cats" / "0001.png") and new_hit.score > 0.9999

    (photos / "cats" / "0003.png").unlink()
    pruned, embedded = add(prune=True)
    assert (pruned.pruned, pruned.embedded, embedded, index.info["count"]) == (1, 0, 0, 24)

    removed = index.remove([str(photos / "dogs")])
    assert removed == 14  # 12 dogs + copy.png + another-copy.png
    assert index.info["count"] == 12  # cats 0000..0011 minus 0003, plus 0050; copies' contents stay with cats
    assert [f["path"] for f in index.get(hit.id)["files"]] == [str(photos / "cats" / "0000.png")]
    check = index.stats(check=True)["check"]
    assert check["repeated_ids"] == check["repeated_paths"] == check["rows_without_files"] == 0
    assert check["max_norm_error"] < 1e-5


def test_another_model_or_pool_is_refused_naming_both(tmp_path, model):
    index = ImageIndex.create(tmp_path / "db", model)
    other = vitkit.load(arch="vit_tiny_patch16_224", image_size=32)
    with pytest.raises(IndexMismatch) as err:
        index.add([str(tmp_path)], other)
    assert index.meta.model in str(err.value) and "vit_tiny_patch16_224" in str(err.value)
    with pytest.raises(IndexMismatch, match="pool mean instead of cls"):
        index.check_model(model, pool="mean")
    other_runtime = {"dtype": "bf16"} if cpu_bf16_native() else {"backend": "onnx"}  # whichever this CPU runs
    index.check_model(vitkit.load(DIGITS, **other_runtime), pool="cls")  # same weights, another runtime: accepted
    with pytest.raises(FileExistsError):
        ImageIndex.create(tmp_path / "db", model)
    with pytest.raises(FileNotFoundError):
        ImageIndex.open(tmp_path / "nothing-here")


def test_one_writer_at_a_time(tmp_path, model):
    """A second writer (another process in `index add`) is refused at once with a clear error; the lock goes with
    its holder, so the next add works."""
    import subprocess

    index = ImageIndex.create(tmp_path / "db", model)
    paths = write_images(tmp_path / "imgs", 3, seed=4)
    hold = ("import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "db" / "write.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match="another process is writing to the index"):
            index.add([str(p) for p in paths], model)
        with pytest.raises(RuntimeError, match="another process is writing"):
            index.remove()
        assert index.info["count"] == 0
    finally:
        holder.kill()
        holder.wait()
    assert index.add([str(p) for p in paths], model).embedded == 3 and index.info["count"] == 3


def test_add_builds_the_ann_index_past_its_threshold(tmp_path, model, report):
    write_images(tmp_path / "many", MIN_ANN_ROWS + 40, seed=3)
    index = ImageIndex.create(tmp_path / "db", model)
    added = index.add([str(tmp_path / "many")], model, ann_threshold=MIN_ANN_ROWS, chunk_size=128)
    assert added.ann_built and index.info["ann"]["indexed_rows"] == MIN_ANN_ROWS + 40
    write_images(tmp_path / "more", 10, seed=4)
    later = index.add([str(tmp_path / "more")], model, ann_threshold=MIN_ANN_ROWS)
    assert not later.ann_built and later.embedded == 10
    assert index.info["ann"]["unindexed_rows"] == 10  # searched exactly beside the index until a rebuild
    recall = index.stats(check=True, samples=50)["check"]["ann_recall@10"]
    report(f"index: IVF-PQ recall@10 vs exact, {MIN_ANN_ROWS + 50} digits-model embeddings of noise images: "
           f"{recall:.3f}")
    assert recall >= 0.8
    write_images(tmp_path / "more", 150, seed=5, start=10)  # past REINDEX_FRACTION: rebuilt
    assert index.add([str(tmp_path / "more")], model, ann_threshold=MIN_ANN_ROWS).ann_built
    assert index.info["ann"] == {"type": "IvfPq", "indexed_rows": MIN_ANN_ROWS + 200, "unindexed_rows": 0}


def run_cli(monkeypatch, capsys, *argv) -> tuple[int, str, str]:
    monkeypatch.setattr(cli, "FEATURE_CLIS", ("vitkit.index.cli",))
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_index_commands(tmp_path, monkeypatch, capsys):
    photos = tmp_path / "photos"
    write_images(photos / "a", 6, seed=5)
    write_images(photos / "b", 6, seed=6)
    shutil.copy(photos / "a" / "0000.png", photos / "b" / "same.png")
    (photos / "a" / "bad.png").write_bytes(b"")
    db = str(tmp_path / "db")
    code, out, err = run_cli(monkeypatch, capsys, "index", "add", db, str(photos), "--model", DIGITS,
                             "--class-folders", "--workers", "1", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["count"], report["embedded"], report["errors"]) == (
        12, 12, [{"path": str(photos / "a" / "bad.png"), "error": "empty file (0 bytes)"}])
    assert "skipped" in err and "bad.png" in err

    # without --model the index's own model is loaded
    code, out, err = run_cli(monkeypatch, capsys, "index", "search", db, str(photos / "b" / "0001.png"),
                             str(photos / "a" / "bad.png"), "--k", "3", "--format", "jsonl")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["query"] for r in rows] == [str(photos / "b" / "0001.png"), str(photos / "a" / "bad.png")]
    assert rows[0]["error"] is None and len(rows[0]["results"]) == 3
    assert rows[0]["results"][0]["path"] == str(photos / "b" / "0001.png") and rows[0]["results"][0]["score"] > 0.9999
    assert rows[0]["results"][0]["label"] == "b"
    assert rows[1] == {"query": str(photos / "a" / "bad.png"), "results": [], "error": "empty file (0 bytes)"}

    code, out, _ = run_cli(monkeypatch, capsys, "index", "stats", db, "--json")
    stats = json.loads(out)
    assert (stats["count"], stats["files"], stats["labels"], stats["pool"], stats["dim"]) == (12, 13, 2, "cls", 64)
    assert stats["model"] == str(Path(DIGITS).resolve()) and stats["ann"] is None

    code, out, _ = run_cli(monkeypatch, capsys, "index", "dups", db, "--threshold", "0.9999", "--format", "jsonl")
    pairs = [json.loads(line) for line in out.splitlines()]
    assert {"a": str(photos / "a" / "0000.png"), "b": str(photos / "b" / "same.png"), "score": 1.0,
            "identical": True} in pairs

    code, out, _ = run_cli(monkeypatch, capsys, "index", "remove", db, str(photos / "b"))
    assert code == 0 and "removed 7 files; 6 images indexed" in out
    code, out, _ = run_cli(monkeypatch, capsys, "index", "stats", db, "--check")
    assert code == 0 and "0 repeated ids" in out and "no ANN index" in out

    code, _, err = run_cli(monkeypatch, capsys, "index", "add", db, str(photos), "--arch", "vit_tiny_patch16_224",
                           "--image-size", "32")
    assert code == 2 and "vit_tiny_patch16_224" in err and str(Path(DIGITS).resolve()) in err
    code, _, err = run_cli(monkeypatch, capsys, "index", "stats", str(tmp_path / "missing"))
    assert code == 2 and "no image index" in err
