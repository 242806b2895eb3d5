"""The roots of an index (vitkit/index/roots.py): `add` records the folders it was given (and the folder of each file
named directly) under unique names, kept in roots.json across opens and processes; `place` gives each hit its
root's name and its path below it, the outermost root first; an index without roots.json places a file in its own
folder. The `vitkit index search` CLI keeps printing full paths (it runs on the user's own machine).

Run:  .venv/bin/python -m pytest tests/test_index_roots.py -q
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("lancedb")

import vitkit  # noqa: E402
from vitkit.index import ImageIndex, Place  # noqa: E402
from vitkit.index.roots import ROOTS_FILE  # noqa: E402

torch.set_num_threads(1)
DIGITS = str(Path(__file__).resolve().parents[1] / "vitkit" / "assets" / "digits-vit")


def write_image(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def model():
    return vitkit.load(DIGITS)


def test_hits_are_placed_by_root_name_and_relative_path(tmp_path, model):
    files = {"a/photos/cats/1.png": Place("photos", "cats/1.png"), "a/photos/2.png": Place("photos", "2.png"),
             "b/photos/3.png": Place("photos~2", "3.png"), "c/lone.png": Place("c", "lone.png"),
             "a/photos/cats/deep/4.png": Place("photos", "cats/deep/4.png")}
    paths = {tmp_path / name: place for name, place in files.items()}
    for seed, path in enumerate(paths):
        write_image(path, seed)
    db = tmp_path / "db"
    index = ImageIndex.create(db, model)
    index.add([str(tmp_path / "a" / "photos"), str(tmp_path / "b" / "photos")], model)
    index.add([str(tmp_path / "c" / "lone.png"), str(tmp_path / "a" / "photos")], model)  # a known root again
    assert index.store.roots.folders == {"photos": str(tmp_path / "a" / "photos"),
                                         "photos~2": str(tmp_path / "b" / "photos"), "c": str(tmp_path / "c")}
    reopened = ImageIndex.open(db)  # roots.json, as another process reads it
    for path, place in paths.items():
        (hit,) = reopened.search_images(model, [path], k=1)[0]
        assert hit.path == str(path)  # the Python API and the CLI keep the absolute path
        assert reopened.place(hit.path) == place

    index.add([str(tmp_path / "a")], model)  # an outer root: files below it are placed from it, uniquely
    outer = tmp_path / "a" / "photos" / "2.png"
    assert reopened.place(str(outer)) == Place("a", "photos/2.png")
    assert reopened.place(str(tmp_path / "b" / "photos" / "3.png")) == Place("photos~2", "3.png")

    (db / ROOTS_FILE).unlink()  # an index made before roots were recorded
    assert reopened.place(str(outer)) == Place("photos", "2.png")
    assert json.loads(json.dumps(reopened.place(str(outer)))) == ["photos", "2.png"]


def test_the_cli_still_prints_full_paths(tmp_path, monkeypatch, capsys):
    import vitkit.cli as cli

    photo = write_image(tmp_path / "photos" / "x.png", 1)
    shutil.copy(photo, tmp_path / "query.png")
    monkeypatch.setattr(cli, "FEATURE_CLIS", ("vitkit.index.cli",))
    db = str(tmp_path / "db")
    assert cli.main(["index", "add", db, str(tmp_path / "photos"), "--model", DIGITS, "--workers", "0"]) == 0
    capsys.readouterr()
    assert cli.main(["index", "search", db, str(tmp_path / "query.png"), "--k", "1", "--format", "jsonl"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["results"][0]["path"] == str(photo)
