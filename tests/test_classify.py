"""Classify over a batch that mixes good and bad files: one row per input, in order, each bad file with
a clear error and every good file classified; the CLI's formats and its atomic --output."""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import vitkit
from vitkit.cli import main as cli
from vitkit.batch.job import Loader
from vitkit.tasks.classify import classify_paths

ARCH = "vit_tiny_patch16_224"


def _png_header_only(path, side: int) -> None:
    """A PNG that claims side x side pixels (a decompression bomb) without the cost of writing it."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(  # noqa: E731
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Good images of many kinds interleaved with each kind of bad input named in the issue."""
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    photo.save(root / "a_good.jpg", quality=90)
    (root / "b_empty.jpg").write_bytes(b"")
    full = (root / "a_good.jpg").read_bytes()
    (root / "c_truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "d_text.jpg").write_text("definitely not an image\n")
    Image.new("RGB", (1, 1), (10, 200, 30)).save(root / "e_one_pixel.png")
    Image.fromarray((rng.integers(0, 65535, (64, 48))).astype(np.uint16)).save(root / "f_sixteen_bit.png")
    photo.convert("CMYK").save(root / "g_cmyk.jpg")
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    palette.save(root / "h_palette_alpha.png", transparency=0)
    frames = [Image.new("RGB", (50, 40), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(root / "i_animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    _png_header_only(root / "j_bomb.png", 20000)
    photo.convert("L").save(root / "k_gray.jpg")
    return root


BAD = {"b_empty.jpg", "c_truncated.jpg", "d_text.jpg", "j_bomb.png"}


@pytest.fixture(scope="module")
def model():
    return vitkit.load(arch=ARCH)


def test_bad_files_get_errors_and_the_rest_is_classified(mixed_folder, model):
    paths = sorted(str(p) for p in mixed_folder.iterdir())
    rows = list(classify_paths(model, paths, top_k=3, loader=Loader(batch_size=4, workers=0, progress=False)))
    assert [r["path"] for r in rows] == paths  # one row per input, input order
    for row in rows:
        name = row["path"].rsplit("/", 1)[-1]
        if name in BAD:
            assert row["top_k"] == [] and row["error"], name
        else:
            assert row["error"] is None, (name, row["error"])
            assert len(row["top_k"]) == 3 and row["top_k"][0]["score"] >= row["top_k"][1]["score"]
    errors = {r["path"].rsplit("/", 1)[-1]: r["error"] for r in rows if r["error"]}
    assert "0 bytes" in errors["b_empty.jpg"] or "empty" in errors["b_empty.jpg"]
    assert "20000x20000" in errors["j_bomb.png"]


def test_worker_processes_give_the_same_rows(mixed_folder, model):
    paths = sorted(str(p) for p in mixed_folder.iterdir())
    inline = list(classify_paths(model, paths, loader=Loader(batch_size=3, workers=0, progress=False)))
    workers = list(classify_paths(model, paths, loader=Loader(batch_size=3, workers=2, progress=False)))
    assert inline == workers


def test_cli_jsonl_rows_follow_the_schema(mixed_folder, tmp_path):
    out = tmp_path / "rows.jsonl"
    code = cli(["classify", str(mixed_folder), "--arch", ARCH, "--format", "jsonl", "--top-k", "2",
                "--workers", "0", "--output", str(out)])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(list(mixed_folder.iterdir()))
    for row in rows:
        assert set(row) == {"path", "top_k", "error"}
        assert all(set(p) == {"index", "label", "score"} for p in row["top_k"])
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left nothing behind


def test_cli_csv_has_one_row_per_input(mixed_folder, capsys):
    assert cli(["classify", str(mixed_folder / "a_good.jpg"), str(mixed_folder / "missing.jpg"), "--arch", ARCH,
                "--format", "csv", "--top-k", "1", "--workers", "0"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["path"].rsplit("/", 1)[-1] for r in rows] == ["a_good.jpg", "missing.jpg"]
    assert rows[0]["top1_label"] and not rows[0]["error"]
    assert rows[1]["error"] and not rows[1]["top1_label"]


def test_cli_reports_unknown_model_clearly(capsys):
    assert cli(["classify", "x.jpg", "--model", "no-such-model"]) == 2
    assert "cannot find model 'no-such-model'" in capsys.readouterr().err


def test_image_size_changes_the_input_and_runs(mixed_folder):
    model = vitkit.load(arch=ARCH, image_size=288)
    pixels = model.preprocess([str(mixed_folder / "a_good.jpg")])
    assert pixels.shape == (1, 3, 288, 288)
    assert model(pixels).shape == (1, 1000)
