"""`torchrun --nproc-per-node 2 --standalone -m vitkit ...` on the CPU (gloo): two ranks share the chunks of
one job, rank 0 merges; the result equals a single-process run's (rows, order, errors, embeddings within
1e-5), for `embed` and for `classify --output`; a job started by one process is finished by two; under
torchrun a command without --output is refused.

Skipped, with the reason, where torchrun cannot start two gloo ranks on this machine at all.

Run:  .venv/bin/python -m pytest tests/test_distributed.py -q
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vitkit
from vitkit.cli import main as cli
from vitkit.embedding_files import read_embeddings
from vitkit.batch import job as job_module

from conftest import torchrun

ARCH = "vit_tiny_patch16_224"
COUNT = 150
BAD_AT = (9, 40, 77, 111, 149)
BATCH, CHUNK = 8, 16  # 10 chunks, the last of 6: rank 0 takes 0, 2, ..., 8 and rank 1 takes 1, 3, ..., 9
TOL = 1e-5


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # torchrun processes: full suite only


def _ok(result) -> str:
    assert result.returncode == 0, f"torchrun exited {result.returncode}:\n{result.stderr[-6000:]}"
    return result.stderr


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (COUNT, 24, 32, 3), dtype=np.uint8)
    broken = [b"", b"not an image at all\n", b"\x89PNG\r\n\x1a\n" + bytes(range(200)), b"\xff\xd8\xff\xe0garbage"]
    for i in range(COUNT):
        if i in BAD_AT:
            (root / f"img_{i:04d}.png").write_bytes(broken[BAD_AT.index(i) % len(broken)])
        else:
            Image.fromarray(pixels[i]).save(root / f"img_{i:04d}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """One random model on disk, so that every process computes with the same weights."""
    return vitkit.load(arch=ARCH).save(tmp_path_factory.mktemp("model") / "tiny.safetensors", format="safetensors")


def _common(saved: Path) -> list[str]:
    return ["--model", str(saved), "--image-size", "32", "--batch-size", str(BATCH), "--chunk-size", str(CHUNK),
            "--workers", "0", "--no-progress"]


def run_cli(args: list) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli([str(a) for a in args])
    return code, err.getvalue()


@pytest.fixture(scope="module")
def single(folder, saved, tmp_path_factory):
    """The same jobs in this one process: the reference."""
    work = tmp_path_factory.mktemp("single")
    code, err = run_cli(["embed", folder, *_common(saved), "--output", work / "emb.npy"])
    assert code == 0, err
    code, err = run_cli(["classify", folder, *_common(saved), "--format", "jsonl", "--output", work / "rows.jsonl"])
    assert code == 0, err
    return work


@pytest.fixture(scope="module")
def two_ranks_embed(can_torchrun, folder, saved, tmp_path_factory):
    work = tmp_path_factory.mktemp("ranks")
    out = work / "emb.npy"
    err = _ok(torchrun(["-m", "vitkit", "embed", folder, *_common(saved), "--output", out], work))
    return out, err


@pytest.mark.slow
def test_two_ranks_embed_equals_one_process(two_ranks_embed, single, report):
    out, err = two_ranks_embed
    array, rows, settings = read_embeddings(out)
    reference, reference_rows, reference_settings = read_embeddings(single / "emb.npy")
    assert len(rows) == COUNT and rows == reference_rows  # paths, order, errors
    assert [i for i, r in enumerate(rows) if r["error"]] == list(BAD_AT)
    assert settings == reference_settings
    assert np.isnan(array[list(BAD_AT)]).all()
    diff = float(np.nanmax(np.abs(array - reference)))
    np.testing.assert_allclose(array, reference, atol=TOL, rtol=0, equal_nan=True)
    report(f"torchrun 2 ranks vs 1 process, embed {COUNT} inputs: max|diff| {diff:.1e}")
    assert not out.with_name(out.name + ".parts").exists() and not list(out.parent.glob(".*.tmp"))
    assert len([line for line in err.splitlines() if line.startswith("wrote ")]) == 1, "rank 0 alone reports"


def test_two_ranks_summary_counts_every_rank(two_ranks_embed):
    out, err = two_ranks_embed
    assert err.strip().splitlines()[-1] == f"wrote {out}: {COUNT} rows (0 from an earlier run, {COUNT} now, " \
                                           f"{len(BAD_AT)} unreadable)"


def test_two_ranks_classify_equals_one_process(can_torchrun, folder, saved, single, tmp_path):
    out = tmp_path / "rows.jsonl"
    _ok(torchrun(["-m", "vitkit", "classify", folder, *_common(saved), "--format", "jsonl", "--output", out],
                 tmp_path))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [json.loads(line) for line in (single / "rows.jsonl").read_text().splitlines()]
    assert [(r["path"], r["error"]) for r in rows] == [(r["path"], r["error"]) for r in expected]
    assert [i for i, r in enumerate(rows) if r["error"]] == list(BAD_AT)
    assert [[p["index"] for p in r["top_k"]] for r in rows] == [[p["index"] for p in r["top_k"]] for r in expected]
    diff = max(abs(p["score"] - q["score"]) for r, e in zip(rows, expected) for p, q in zip(r["top_k"], e["top_k"]))
    assert diff <= TOL
    assert not (tmp_path / "rows.jsonl.parts").exists()


def test_two_ranks_finish_a_job_that_one_process_started(can_torchrun, folder, saved, single, tmp_path,
                                                         monkeypatch):
    out = tmp_path / "emb.npy"
    original = job_module.Job.write
    written = []

    def write(self, chunk, result):  # Ctrl-C after the third part
        original(self, chunk, result)
        written.append(chunk)
        if len(written) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(job_module.Job, "write", write)
    code, err = run_cli(["embed", folder, *_common(saved), "--output", out])
    assert code == 130, err
    monkeypatch.undo()
    err = _ok(torchrun(["-m", "vitkit", "embed", folder, *_common(saved), "--output", out], tmp_path))
    assert f"resuming: {3 * CHUNK} of {COUNT} inputs already done" in err
    array, rows, _ = read_embeddings(out)
    reference, reference_rows, _ = read_embeddings(single / "emb.npy")
    assert rows == reference_rows
    np.testing.assert_allclose(array, reference, atol=TOL, rtol=0, equal_nan=True)


def test_torchrun_without_output_is_refused(can_torchrun, folder, saved, tmp_path):
    result = torchrun(["-m", "vitkit", "classify", folder, *_common(saved)], tmp_path)
    assert result.returncode != 0
    assert "vitkit classify: error: under torchrun, give --output" in result.stderr, result.stderr[-4000:]
    # each rank exits with the CLI's usage-error code; torchrun reports it (and itself exits 1)
    assert re.search(r"exitcode\s*:\s*2\b", result.stderr), result.stderr[-4000:]
    assert "vitkit/cli.py" not in result.stderr, "a clear error, not a traceback from vitkit"
    assert result.stdout == ""
