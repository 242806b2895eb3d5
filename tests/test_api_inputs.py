"""The forgiving Python API: every kind of image input gives the same answer as its file; errors="raise" names the
input, errors="skip" gives every input its result; one input gives one result; batch_size does not change results;
torch dtypes, device="auto", a fresh head (num_classes / labels); the docstring examples of vitkit.api run.

Run:  .venv/bin/python -m pytest tests/test_api_inputs.py -q
"""

from __future__ import annotations

import doctest
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
import vitkit.api
from vitkit.data.decode import ImageDecodeError
from vitkit.data.inputs import to_image
from vitkit.runtime import cpu_bf16_native

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "vitkit" / "assets" / "digits-vit")
PHOTOS = ROOT.parent / "shared" / "images" / "imagenet-sample-100"


@pytest.fixture(scope="module")
def model():
    return vitkit.load(DIGITS)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A real photo when the shared ones are there (else a drawn one), saved as PNG so every input kind carries
    exactly the same pixels."""
    found = sorted(PHOTOS.glob("*.JPEG"))[:1] if PHOTOS.is_dir() else []
    image = Image.open(found[0]).convert("RGB") if found else Image.radial_gradient("L").convert("RGB")
    path = tmp_path_factory.mktemp("inputs") / "photo.png"
    image.save(path)
    return path


def test_every_input_kind_gives_the_files_answer(model, photo):
    pixels = np.array(Image.open(photo).convert("RGB"))  # (H, W, 3) uint8
    data = photo.read_bytes()
    chw = torch.from_numpy(pixels).permute(2, 0, 1)  # (3, H, W)
    kinds = {  # each made anew for each use: a file object is read once
        "str": lambda: str(photo), "Path": lambda: photo, "bytes": lambda: data, "file": lambda: io.BytesIO(data),
        "PIL": lambda: Image.open(photo), "numpy uint8 HWC": lambda: pixels, "numpy float HWC": lambda: pixels / 255.0,
        "torch uint8 CHW": lambda: chw, "torch float CHW": lambda: chw.float() / 255,
        "numpy RGBA": lambda: np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)]),
    }
    reference = model.preprocess(str(photo))  # (1, 3, 32, 32)
    want = model.classify(str(photo), top_k=3)
    for kind, make in kinds.items():
        assert torch.equal(model.preprocess(make()), reference), kind
        got = model.classify(make(), top_k=3)
        assert [p.index for p in got] == [p.index for p in want], kind
        assert got.error is None and got.score == pytest.approx(want.score, abs=1e-6), kind
    grey = pixels.mean(axis=2).astype(np.uint8)
    assert torch.equal(model.preprocess(grey), model.preprocess(Image.fromarray(grey).convert("RGB")))
    with open(photo, "rb") as f:  # a real file object, read by the API
        assert model.classify(f).label == want.label


def test_one_input_gives_one_result_and_a_list_gives_a_list(model, photo):
    one = model.classify(photo, top_k=2)
    many = model.classify([photo, photo], top_k=2)
    assert isinstance(one, vitkit.Classification) and len(one) == 2 and one.input == str(photo)
    assert isinstance(many, list) and len(many) == 2 and all(isinstance(r, vitkit.Classification) for r in many)
    assert one.to_dict() == {"input": str(photo), "error": None, "predictions": [p.to_dict() for p in one]}
    assert [p.index for p in many[0]] == [p.index for p in one]  # batched: scores equal to float round-off
    assert many[0].score == pytest.approx(one.score, abs=1e-5)
    assert model.embed(photo).shape == (64,) and model.embed([photo]).shape == (1, 64)
    assert model.classify([], top_k=2) == [] and model.embed([]).shape == (0, 64)


def test_errors_raise_names_the_input_and_skip_keeps_every_other_result(model, photo, tmp_path):
    bad = [b"not an image", tmp_path / "missing.png", np.zeros((4, 4, 2), np.uint8), np.full((8, 8), 2.0),
           "text", {"a": 1}]
    with pytest.raises(ImageDecodeError, match="4 bytes|12 bytes"):
        model.classify([photo, b"not an image"])
    inputs = [photo, *bad, photo]
    results = model.classify(inputs, errors="skip")
    assert [r.error is None for r in results] == [True] + [False] * len(bad) + [True]
    assert [p.index for p in results[0]] == [p.index for p in results[-1]]
    assert results[0].label == model.classify(photo).label
    errors = [r.error for r in results[1:-1]]
    assert "not an image" in errors[0] and errors[1] == "no such file" and "(H, W, 3)" in errors[2]
    assert "0..1.0" in errors[3] and errors[4] == "no such file" and "cannot read an image from a dict" in errors[5]
    records = vitkit.to_records(results)
    assert [r["input"] for r in records].count(str(photo)) == 10 and sum(r["error"] is not None for r in records) == 6
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(records)
    assert list(frame.columns) == ["input", "rank", "index", "label", "score", "error"] and len(frame) == 16
    vectors = model.embed(inputs, errors="skip")
    stacked, good = vectors.stack()
    assert good == [0, len(inputs) - 1] and stacked.shape == (2, 64) and vectors.errors[1] == errors[0]
    assert torch.equal(stacked[0], model.embed(photo))
    with pytest.raises(ValueError, match="errors must be one of raise, skip"):
        model.classify(photo, errors="ignore")


def test_batch_size_changes_the_passes_not_the_results(model, photo):
    images = [np.asarray(Image.open(photo).convert("RGB").rotate(angle)) for angle in range(0, 70, 10)]
    one_by_one = model.embed(images, batch_size=1)
    together = model.embed(images, batch_size=16)
    assert one_by_one.shape == (7, 64) and (one_by_one - together).abs().max() < 1e-5
    assert [r.label for r in model.classify(images, batch_size=3)] == [r.label for r in model.classify(images)]
    with pytest.raises(ValueError, match="batch_size"):
        model.embed(images, batch_size=0)


def test_torch_dtypes_auto_device_and_a_fresh_head(photo):
    assert vitkit.load(DIGITS, dtype=torch.float32).net.runtime.dtype == "fp32"
    if cpu_bf16_native():
        assert vitkit.load(DIGITS, dtype=torch.bfloat16).net.runtime.dtype == "bf16"
    else:
        with pytest.raises(ValueError, match="bf16 needs a CPU with bf16 instructions"):
            vitkit.load(DIGITS, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="torch.int8 is not a compute dtype"):
        vitkit.load(DIGITS, dtype=torch.int8)
    assert vitkit.load(DIGITS).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    base = vitkit.load(DIGITS)
    fresh = vitkit.load(DIGITS, num_classes=3)
    named = vitkit.load(DIGITS, labels=["even", "odd"])
    assert fresh.labels == ("class_0", "class_1", "class_2") and named.labels == ("even", "odd")
    assert fresh.net.head.weight.shape == (3, 64) and named.classify(photo).label in ("even", "odd")
    same = {k for k, v in base.net.state_dict().items() if not k.startswith("head")}
    assert all(torch.equal(base.net.state_dict()[k], fresh.net.state_dict()[k]) for k in same)
    with pytest.raises(ValueError, match="2 labels for num_classes=3"):
        vitkit.load(DIGITS, num_classes=3, labels=["a", "b"])


def test_strange_arrays_are_refused_with_the_reason():
    for pixels, reason in ((np.zeros((0, 5, 3), np.uint8), "has no pixels"),
                           (np.zeros((2, 2, 2, 3), np.uint8), "is not an image"),
                           (np.full((4, 4), np.nan, np.float32), "values must be in"),
                           (np.zeros((4, 4), bool), "dtype bool"),
                           (torch.zeros(5, 8, 8), "(C, H, W) with C in 1, 3, 4")):
        with pytest.raises(ImageDecodeError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            to_image(pixels)
    with pytest.raises(ImageDecodeError, match="exceeds"):
        to_image(np.zeros((100, 100), np.uint8), max_pixels=1000)
    with pytest.raises(ImageDecodeError, match="binary mode"):
        to_image(io.StringIO("text"))


def test_the_docstring_examples_of_the_api_run():
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        found = doctest.testmod(vitkit.api, extraglobs={"vitkit": vitkit, "numpy": np, "tempfile": tempfile,
                                                        "model": vitkit.load(DIGITS)}, verbose=False)
    finally:
        os.chdir(cwd)
    assert found.attempted >= 6 and found.failed == 0, found
