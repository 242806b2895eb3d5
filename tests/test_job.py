"""Resumable jobs (vitkit/batch/job.py) through the CLI, over 2,000 small images of which 37 are corrupt:

- `embed` and `classify --output`: exactly one row per input, in input (sorted path) order, an error on each
  corrupt input and only there, NaN embedding rows exactly for those, the rest equal to `Model.embed`;
- SIGKILL mid-way, then re-run: the parts written before the kill are intact and reused (never
  recomputed), the re-run says what it resumed, and the output equals an uninterrupted run's;
- a re-run with other settings or other inputs over an unfinished parts folder is refused, naming what
  changed, and leaves the parts alone; --chunk-size must be a multiple of --batch-size.

Every run uses one saved random model (`--model`), so that all runs compute with identical weights.

Run:  .venv/bin/python -m pytest tests/test_job.py -q
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

import vitkit
from vitkit.cli import main as cli
from vitkit.embedding_files import read_embeddings
from vitkit.batch import job as job_module

from conftest import sigkill_when

ARCH = "vit_tiny_patch16_224"
SIDE = 32  # patch 16 on 32 px: 4 patches, milliseconds per batch
WIDTH = 192  # vit_tiny
COUNT = 2000
CHUNK, BATCH = 64, 16
NUM_CHUNKS = -(-COUNT // CHUNK)  # 32, the last one of 16 inputs
BAD_AT = tuple(sorted({(i * COUNT) // 37 + 13 for i in range(37)}))  # 37 corrupt inputs, spread out
KILL_AFTER_PARTS = 5
TOL = 1e-6


# ----------------------------------------------------------------------------- inputs and model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, here and in the subprocesses: on batches of 16 x 5 tokens, two threads on two
    shared cores spend their time synchronising (measured 2 s vs 13-45 s for 2,000 inputs under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **({"compress_level": 1} if fmt == "PNG" else {"quality": 90}))
    return out.getvalue()


def _corrupt(kind: int, rng: np.random.Generator, png: bytes, jpg: bytes) -> tuple[str, bytes]:
    """(suffix, content) of one of seven kinds of broken file; each must get an error row."""
    garbage = bytes(rng.integers(0, 256, 200, dtype=np.uint8))
    return [
        (".jpg", b""),  # empty
        (".png", png[: len(png) // 2]),  # truncated PNG
        (".jpg", jpg[: len(jpg) // 2]),  # truncated JPEG
        (".jpg", b"definitely not an image\n"),  # text
        (".png", b"\x89PNG\r\n\x1a\n" + garbage),  # PNG signature, garbage header
        (".jpg", b"\xff\xd8\xff\xe0" + garbage),  # JPEG SOI, garbage segments
        (".jpg", jpg[: len(jpg) // 3] + b"\0" * (len(jpg) - len(jpg) // 3)),  # JPEG body zeroed
    ][kind % 7]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """2,000 distinct 32x24 images (PNG and JPEG, alternately) named in input order; 37 of them corrupt."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (COUNT, 24, 32, 3), dtype=np.uint8)
    bad = set(BAD_AT)
    for i in range(COUNT):
        image = Image.fromarray(pixels[i])
        if i in bad:
            suffix, content = _corrupt(BAD_AT.index(i), rng, _encoded(image, "PNG"), _encoded(image, "JPEG"))
            (root / f"img_{i:05d}{suffix}").write_bytes(content)
        elif i % 2:
            image.save(root / f"img_{i:05d}.png", compress_level=1)
        else:
            image.save(root / f"img_{i:05d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def paths(folder) -> list[str]:
    found = sorted(str(p) for p in folder.iterdir())
    assert len(found) == COUNT
    return found


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """One random model on disk: every run (in this process or another) computes with the same weights."""
    return vitkit.load(arch=ARCH).save(tmp_path_factory.mktemp("model") / "tiny.safetensors", format="safetensors")


@pytest.fixture(scope="module")
def model(saved):
    return vitkit.load(str(saved), image_size=SIDE)


def _common(saved: Path, chunk: int = CHUNK) -> list[str]:
    return ["--model", str(saved), "--image-size", str(SIDE), "--batch-size", str(BATCH),
            "--chunk-size", str(chunk), "--workers", "0", "--no-progress"]


def run_cli(args: list[str]) -> tuple[int, str]:
    """`vitkit ARGS` in this process -> (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli([str(a) for a in args])
    return code, err.getvalue()


def _chunk_range(chunk: int) -> range:
    return range(chunk * CHUNK, min((chunk + 1) * CHUNK, COUNT))


def _summary(out: Path, earlier: int, now: int, errors: int) -> str:
    return f"wrote {out}: {COUNT} rows ({earlier} from an earlier run, {now} now, {errors} unreadable)"


# ----------------------------------------------------------------------------- uninterrupted runs


@pytest.fixture(scope="module")
def clean_embed(folder, saved, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "emb.npy"
    start = time.perf_counter()
    code, err = run_cli(["embed", folder, *_common(saved), "--output", out])
    assert code == 0, err
    return out, err, time.perf_counter() - start


@pytest.fixture(scope="module")
def clean_classify(folder, saved, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "rows.jsonl"
    code, err = run_cli(["classify", folder, *_common(saved), "--format", "jsonl", "--output", out])
    assert code == 0, err
    return out, err


def test_embed_one_row_per_input_in_order_with_errors_only_on_corrupt_files(clean_embed, paths, model, report):
    out, err, seconds = clean_embed
    report(f"job: vitkit embed, {COUNT} inputs ({len(BAD_AT)} corrupt), {ARCH} at {SIDE} px, one thread: "
           f"{seconds:.1f} s")
    array, rows, settings = read_embeddings(out)
    assert array.shape == (COUNT, WIDTH) and array.dtype == np.float32
    assert [r["path"] for r in rows] == paths  # exactly one row per input, in input order
    failed = [i for i, r in enumerate(rows) if r["error"] is not None]
    assert failed == list(BAD_AT), "errors on the corrupt inputs and only on them"
    assert all(isinstance(rows[i]["error"], str) and rows[i]["error"] for i in BAD_AT)
    assert "empty file" in rows[BAD_AT[0]]["error"] and "truncated" in rows[BAD_AT[1]]["error"]
    nan_rows = np.flatnonzero(np.isnan(array).any(axis=1)).tolist()
    assert nan_rows == list(BAD_AT) and np.isnan(array[list(BAD_AT)]).all()
    good = [i for i in range(COUNT) if i not in set(BAD_AT)]
    assert np.isfinite(array[good]).all()
    np.testing.assert_allclose(np.linalg.norm(array[good], axis=1), 1.0, atol=1e-5)  # --normalize is the default
    assert settings["pool"] == "cls" and settings["normalize"] is True and settings["input_size"] == SIDE
    # the right vector on the right row: a sample from every chunk, against the Python API
    sample = good[5::CHUNK]
    direct = model.embed([paths[i] for i in sample]).numpy()
    diff = np.abs(array[sample] - direct).max()
    assert diff <= 1e-5, f"CLI rows differ from Model.embed by {diff:.2e}"
    assert len(np.unique(array[good].round(4), axis=0)) == len(good), "distinct images, distinct vectors"
    assert err.strip().splitlines()[-1] == _summary(out, 0, COUNT, len(BAD_AT))
    assert "resuming" not in err
    assert not out.with_name(out.name + ".parts").exists()
    assert not list(out.parent.glob(".*.tmp"))


def test_classify_output_one_row_per_input_in_order(clean_classify, paths, model):
    out, err = clean_classify
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in rows] == paths
    assert [i for i, r in enumerate(rows) if r["error"] is not None] == list(BAD_AT)
    for i, row in enumerate(rows):
        assert set(row) == {"path", "top_k", "error"}
        assert (row["top_k"] == []) if i in set(BAD_AT) else (len(row["top_k"]) == 5)
    sample = [i for i in range(7, COUNT, 97) if i not in set(BAD_AT)]
    direct = model.classify([paths[i] for i in sample], top_k=5)
    for i, predictions in zip(sample, direct):
        assert [p["index"] for p in rows[i]["top_k"]] == [p.index for p in predictions]
        assert max(abs(p["score"] - q.score) for p, q in zip(rows[i]["top_k"], predictions)) <= 1e-6
    assert err.strip().splitlines()[-1] == f"wrote {out}: {COUNT} rows (0 from an earlier run, {COUNT} now, " \
                                           f"{len(BAD_AT)} unreadable)"


# ----------------------------------------------------------------------------- SIGKILL, then resume


def _start(args: list, log: Path) -> subprocess.Popen:
    """`python -m vitkit ARGS` in another process, its stderr to `log` (a pipe could fill and block it)."""
    with open(log, "wb") as fh:
        return subprocess.Popen([sys.executable, "-m", "vitkit", *map(str, args)], stdout=subprocess.DEVNULL,
                                stderr=fh, cwd=log.parent, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _kill_when_parts(proc: subprocess.Popen, parts: Path, log: Path, count: int, timeout: float = 90) -> set[int]:
    """SIGKILL `proc` once `parts` holds at least `count` part files; returns the chunks done at death."""
    sigkill_when(proc, lambda: len(list(parts.glob("part-*.safetensors"))) >= count, f"{count} parts were written",
                 log, timeout)
    return {int(p.stem.split("-")[1]) for p in parts.glob("part-*.safetensors")}


def _check_killed_state(out: Path, parts: Path, done: set[int], paths: list[str]) -> list[dict]:
    """Nothing merged yet; the parts are whole, contiguous from chunk 0 and hold the right inputs.
    Returns the parts' rows, in order."""
    assert not out.exists(), "the output must appear only once every chunk is done"
    assert (parts / "job.json").is_file()
    assert KILL_AFTER_PARTS <= len(done) < NUM_CHUNKS, done
    assert done == set(range(len(done))), f"one process runs its chunks in order: {sorted(done)}"
    rows = []
    for chunk in sorted(done):
        with safe_open(parts / f"part-{chunk:07d}.safetensors", framework="np") as fh:
            part_rows = json.loads(fh.metadata()["rows"])
            arrays = {k: fh.get_tensor(k) for k in fh.keys()}
        assert [r["path"] for r in part_rows] == [paths[i] for i in _chunk_range(chunk)]
        assert [r["error"] is not None for r in part_rows] == [i in set(BAD_AT) for i in _chunk_range(chunk)]
        if "embeddings" in arrays:
            assert arrays["embeddings"].shape == (len(_chunk_range(chunk)), WIDTH)
        rows += part_rows
    return rows


def _spy_on_writes(monkeypatch) -> list[int]:
    """The chunks that this process writes (a finished chunk must never be computed again)."""
    written: list[int] = []
    original = job_module.Job.write

    def write(self, chunk, result):
        written.append(chunk)
        return original(self, chunk, result)

    monkeypatch.setattr(job_module.Job, "write", write)
    return written


def test_sigkill_then_resume_reuses_finished_parts_and_equals_a_clean_run(folder, saved, paths, clean_embed,
                                                                         tmp_path, monkeypatch, report):
    out = tmp_path / "emb.npy"
    parts = tmp_path / "emb.npy.parts"
    args = ["embed", folder, *_common(saved), "--output", out]
    log = tmp_path / "killed.log"
    done = _kill_when_parts(_start(args, log), parts, log, KILL_AFTER_PARTS)
    _check_killed_state(out, parts, done, paths)
    assert not out.with_suffix(".rows.jsonl").exists()
    clean, clean_rows, _ = read_embeddings(clean_embed[0])
    for chunk in done:  # what the killed run wrote is what an uninterrupted run computes
        with safe_open(parts / f"part-{chunk:07d}.safetensors", framework="np") as fh:
            got = fh.get_tensor("embeddings")
        np.testing.assert_allclose(got, clean[_chunk_range(chunk).start:_chunk_range(chunk).stop], atol=TOL,
                                   rtol=0, equal_nan=True)

    written = _spy_on_writes(monkeypatch)
    code, err = run_cli(args)
    assert code == 0, err
    already = sum(len(_chunk_range(c)) for c in done)  # 64 per part: the killed run never reached the last one
    assert already == CHUNK * len(done)
    assert f"resuming: {already} of {COUNT} inputs already done" in err
    errors_now = sum(1 for i in BAD_AT if i >= already)
    assert err.strip().splitlines()[-1] == _summary(out, already, COUNT - already, errors_now)
    assert sorted(written) == sorted(set(range(NUM_CHUNKS)) - done), "finished chunks were computed again"
    assert not parts.exists() and not list(tmp_path.glob(".*.tmp"))

    array, rows, _ = read_embeddings(out)
    assert rows == clean_rows  # paths, order and errors
    assert [i for i, r in enumerate(rows) if r["error"]] == list(BAD_AT)
    diff = float(np.nanmax(np.abs(array - clean)))
    np.testing.assert_allclose(array, clean, atol=TOL, rtol=0, equal_nan=True)
    assert np.isnan(array[list(BAD_AT)]).all()
    report(f"job: SIGKILL with {len(done)} of {NUM_CHUNKS} parts done; the re-run resumed {already} of {COUNT} "
           f"inputs, computed {COUNT - already}; max|diff| vs an uninterrupted run {diff:.1e}")


def test_classify_sigkill_then_resume_gives_the_uninterrupted_rows(folder, saved, paths, clean_classify,
                                                                   tmp_path, monkeypatch):
    out = tmp_path / "rows.jsonl"
    parts = tmp_path / "rows.jsonl.parts"
    args = ["classify", folder, *_common(saved), "--format", "jsonl", "--output", out]
    log = tmp_path / "killed.log"
    done = _kill_when_parts(_start(args, log), parts, log, KILL_AFTER_PARTS)
    _check_killed_state(out, parts, done, paths)

    written = _spy_on_writes(monkeypatch)
    code, err = run_cli(args)
    assert code == 0, err
    already = CHUNK * len(done)
    assert f"resuming: {already} of {COUNT} inputs already done" in err
    assert err.strip().splitlines()[-1] == _summary(out, already, COUNT - already,
                                                    sum(1 for i in BAD_AT if i >= already))
    assert sorted(written) == sorted(set(range(NUM_CHUNKS)) - done)
    assert not parts.exists()

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [json.loads(line) for line in clean_classify[0].read_text().splitlines()]
    assert [(r["path"], r["error"]) for r in rows] == [(r["path"], r["error"]) for r in expected]
    assert [[p["index"] for p in r["top_k"]] for r in rows] == [[p["index"] for p in r["top_k"]] for r in expected]
    assert [[p["label"] for p in r["top_k"]] for r in rows] == [[p["label"] for p in r["top_k"]] for r in expected]
    diff = max(abs(p["score"] - q["score"]) for r, e in zip(rows, expected) for p, q in zip(r["top_k"], e["top_k"]))
    assert diff <= TOL


# ----------------------------------------------------------------------------- refusals


def _interrupt_after(monkeypatch, chunks: int) -> None:
    """Ctrl-C right after the `chunks`-th part is written."""
    original = job_module.Job.write
    count = [0]

    def write(self, chunk, result):
        original(self, chunk, result)
        count[0] += 1
        if count[0] == chunks:
            raise KeyboardInterrupt

    monkeypatch.setattr(job_module.Job, "write", write)


def test_other_settings_over_an_unfinished_job_are_refused(folder, saved, tmp_path, monkeypatch):
    out = tmp_path / "emb.safetensors"
    parts = tmp_path / "emb.safetensors.parts"
    inputs = str(folder / "img_000*")  # the first 100 inputs (a glob)
    common = _common(saved, chunk=32)
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 2)
        code, err = run_cli(["embed", inputs, *common, "--output", out])
    assert code == 130 and "resumes where it stopped" in err, err
    before = sorted((p.name, p.stat().st_mtime_ns) for p in parts.iterdir() if p.name != "job.lock")
    assert [name for name, _ in before] == ["job.json", "part-0000000.safetensors", "part-0000001.safetensors"]

    changes = {
        "pool": ["--pool", "mean"],
        "normalize": ["--no-normalize"],
        "layers": ["--layers=-1,-2"],  # "--layers -1,-2" is taken for an option by argparse
        "input_size": ["--image-size", "48"],
    }
    for name, extra in changes.items():
        code, err = run_cli(["embed", inputs, *common, *extra, "--output", out])
        assert code == 2, (name, err)
        assert "unfinished job" in err and f"other {name}:" in err and str(parts) in err, (name, err)
        assert "delete that folder" in err
    code, err = run_cli(["embed", inputs, *_common(saved, chunk=48), "--output", out])
    assert code == 2 and "other chunk_size:" in err, err
    code, err = run_cli(["embed", str(folder / "img_0000*"), *common, "--output", out])  # 10 inputs, not 100
    assert code == 2 and "other count, inputs:" in err, err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in parts.iterdir() if p.name != "job.lock") == before, \
        "a refusal touched the parts"
    assert not out.exists()

    code, err = run_cli(["embed", inputs, *common, "--output", out])  # the same settings finish the job
    assert code == 0, err
    assert "resuming: 64 of 100 inputs already done" in err
    assert err.strip().splitlines()[-1].startswith(f"wrote {out}: 100 rows (64 from an earlier run, 36 now, ")
    array, rows, _ = read_embeddings(out)
    assert len(rows) == 100 and array.shape == (100, WIDTH) and not parts.exists()


def test_chunk_size_must_be_a_multiple_of_batch_size(folder, saved, tmp_path):
    out = tmp_path / "emb.npy"
    for command in (["embed"], ["classify", "--format", "jsonl"]):
        code, err = run_cli([*command, str(folder / "img_0000*"), "--model", saved, "--image-size", SIDE,
                             "--batch-size", "16", "--chunk-size", "50", "--workers", "0", "--output", out])
        assert code == 2, err
        assert "--chunk-size 50 must be a multiple of --batch-size 16" in err
    assert not list(tmp_path.iterdir()), "nothing may be written before the settings are checked"


def test_a_job_is_never_resumed_on_changed_weights_and_exports_record_them(tmp_path, monkeypatch, capsys):
    """The sha256 of the weights is in a job's fingerprint: half a job made with one file, then the file changes,
    and the resumed run is refused instead of mixing two models' rows; ONNX exports and `vitkit info` carry it."""
    import hashlib
    import shutil

    from safetensors.torch import load_file, save_file

    import vitkit
    from vitkit.api import Model
    from vitkit.batch.job import Loader
    from vitkit.cli import main
    from vitkit.tasks.classify import classify_to_file

    folder = tmp_path / "digits"
    shutil.copytree(Path(vitkit.__file__).parent / "assets" / "digits-vit", folder)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(8):
        Image.new("RGB", (32, 32), (30 * i, 0, 0)).save(images / f"{i}.png")
    paths = sorted(str(p) for p in images.iterdir())
    model = vitkit.load(str(folder))
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert model.provenance == {"revision": None, "commit": None, "sha256": {"model.safetensors": digest}}
    calls, top_k = [], Model.top_k

    def interrupted(self, logits, k=5):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return top_k(self, logits, k)

    monkeypatch.setattr(Model, "top_k", interrupted)
    with pytest.raises(KeyboardInterrupt):
        classify_to_file(model, paths, tmp_path / "preds.jsonl", 3, "jsonl", 4, Loader(4, 0))
    monkeypatch.setattr(Model, "top_k", top_k)
    tensors = load_file(folder / "model.safetensors")
    save_file({k: v + 0.01 for k, v in tensors.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="unfinished job with other weights"):
        classify_to_file(vitkit.load(str(folder)), paths, tmp_path / "preds.jsonl", 3, "jsonl", 4,
                         Loader(4, 0))
    pytest.importorskip("onnxruntime")
    changed = vitkit.load(str(folder))
    changed.save(tmp_path / "d.onnx", format="onnx")
    assert main(["info", str(tmp_path / "d.onnx")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["exported_from"] == changed.provenance and info["exported_from"]["sha256"]["model.safetensors"] != digest
