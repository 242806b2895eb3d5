"""The index records the provenance of its model (the sha256 of each weights file); a later run whose weights file
changed but whose vectors still pass the probe check is warned (WeightsChanged, naming the file and both short
digests) when it adds to, searches or serves the index; one whose vectors fail it is refused as before, the message
naming the changed file too. Anchor: the digests are hashlib's of the files' bytes.

Run:  .venv/bin/python -m pytest tests/test_index_provenance.py -q
"""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

pytest.importorskip("lancedb")

import vitkit  # noqa: E402
from vitkit.index import ImageIndex, IndexMismatch, WeightsChanged  # noqa: E402
from vitkit.index.image_index import changed_weights  # noqa: E402

torch.set_num_threads(1)
DIGITS = Path(__file__).resolve().parents[1] / "vitkit" / "assets" / "digits-vit"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rewrite_weights(weights: Path, noise: float) -> None:
    """The same checkpoint saved again with every tensor moved by `noise` (relative), under a new mtime."""
    generator = torch.Generator().manual_seed(0)
    tensors = {name: t + noise * t.abs().mean() * torch.randn(t.shape, generator=generator) if t.is_floating_point()
               else t for name, t in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})


@pytest.fixture
def indexed(tmp_path):
    """(a copy of the digits model's folder, its index with a few images, the weights' sha256 then)."""
    folder = tmp_path / "model"
    shutil.copytree(DIGITS, folder)
    model = vitkit.load(str(folder))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
    index = ImageIndex.create(tmp_path / "db", model)
    index.add([str(images)], model)
    return folder, index, sha256(folder / "model.safetensors")


def test_the_index_records_the_weights_digest_and_an_unchanged_model_is_not_warned(indexed):
    folder, index, digest = indexed
    assert ImageIndex.open(index.store.path).meta.provenance["sha256"] == {"model.safetensors": digest}
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeightsChanged)
        index.check_model(vitkit.load(str(folder)))


def test_a_changed_weights_file_whose_vectors_still_match_is_warned(indexed, tmp_path):
    from vitkit.service.app import create_app
    from vitkit.service.engine import Engine

    folder, index, before = indexed
    rewrite_weights(folder / "model.safetensors", 1e-5)
    after = sha256(folder / "model.safetensors")
    assert after != before
    model = vitkit.load(str(folder))
    line = (rf"{index.store.path}: the model's weights changed since the index was built: model\.safetensors "
            rf"\(sha256 {before[:12]} then, {after[:12]} now\); its vectors still match the index's, so it is used")
    with pytest.warns(WeightsChanged, match=line):  # `vitkit index add`
        report = index.add([str(tmp_path / "images")], model)
    assert report.unchanged == 3
    with pytest.warns(WeightsChanged, match=line):  # `vitkit index search`
        index.check_model(model)
    with pytest.warns(WeightsChanged, match=line):  # `vitkit serve --index`
        create_app(Engine(model, threads=1), ImageIndex.open(index.store.path))
    assert index.search_images(model, [tmp_path / "images" / "1.png"], k=1)[0][0].score > 0.9999


def test_a_changed_weights_file_whose_vectors_differ_is_refused_naming_it(indexed):
    folder, index, before = indexed
    rewrite_weights(folder / "model.safetensors", 1.0)
    after = sha256(folder / "model.safetensors")
    with pytest.raises(IndexMismatch, match=rf"other weights \(its vector for a fixed probe image differs; "
                                            rf"model\.safetensors \(sha256 {before[:12]} then, {after[:12]} now\)\)"):
        index.check_model(vitkit.load(str(folder)))


def test_only_files_of_the_same_name_are_compared():
    recorded = {"sha256": {"model.safetensors": "a" * 64}}
    assert changed_weights(recorded, {"sha256": {"model.onnx": "b" * 64}}) == []  # another format: unknown
    assert changed_weights(recorded, {}) == changed_weights(None, recorded) == []
    assert changed_weights(recorded, {"sha256": {"model.safetensors": "b" * 64}}) == [
        f"model.safetensors (sha256 {'a' * 12} then, {'b' * 12} now)"]
