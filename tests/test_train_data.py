"""Fine-tuning data: discovery of every DATA layout and its errors, the stratified split, per-sample seeded
augmentation (deterministic, independent of global RNG and of DataLoader workers), the augmentation ops, and
mixup/cutmix (against timm's own Mixup where its file is installed).

Run:  .venv/bin/python -m pytest tests/test_train_data.py -q
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vitkit.config import PreprocessSpec
from vitkit.data.decode import ImageDecodeError
from vitkit.data.transforms import eval_region, preprocess
from vitkit.train.augment import (
    OPS, _mix, apply_op, cutmix_box, eval_transform, mixup_cutmix, parse_auto_augment, rand_augment_space,
    random_resized_crop_params, smooth_one_hot, train_transform, trivial_augment_space,
)
from vitkit.data.labelled import DatasetError, discover
from vitkit.train.datasets import BadImageWarning, LabelledImages, find_bad_images, sample_generator, sample_seed

SPEC = PreprocessSpec(input_size=32, crop_pct=0.875)


def png(path: Path, size=(12, 10), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def class_folder(root: Path, counts: dict[str, int]) -> Path:
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            png(root / name / f"{i:03d}.png", seed=100 * c + i)
    return root


def paths(items) -> set[str]:
    return {p for p, _ in items}


# -- discovery: layouts --------------------------------------------------------------------------------------
def test_class_folders(tmp_path):
    root = class_folder(tmp_path / "data", {"dog": 2, "cat": 3})
    png(root / "cat" / "nested" / "deep.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    png(root / "dog" / ".hidden.png")
    (root / ".cache").mkdir()
    splits = discover(root)
    assert splits.labels == ["cat", "dog"] and splits.layout == "classes"
    assert splits.val == [] and splits.test == []
    assert [label for _, label in splits.train] == [0, 0, 0, 0, 1, 1]
    assert str(root / "cat" / "nested" / "deep.png") in paths(splits.train)
    assert not any(p.endswith((".txt", ".hidden.png")) for p in paths(splits.train))


def test_numeric_class_names_sort_as_numbers(tmp_path):
    root = class_folder(tmp_path, {"10": 1, "2": 1, "1": 1})
    assert discover(root).labels == ["1", "2", "10"]


def test_split_folders(tmp_path):
    class_folder(tmp_path / "train", {"a": 3, "b": 3})
    class_folder(tmp_path / "val", {"b": 1})
    class_folder(tmp_path / "test", {"a": 1, "b": 1})
    splits = discover(tmp_path, val_split=0.5, seed=0)  # an explicit val/ wins over val_split
    assert splits.layout == "splits" and splits.labels == ["a", "b"]
    assert len(splits.train) == 6 and splits.val == [(str(tmp_path / "val" / "b" / "000.png"), 1)]
    assert [label for _, label in splits.test] == [0, 1]
    # without val/: the fraction comes from train/
    shutil.rmtree(tmp_path / "val")
    splits = discover(tmp_path, val_split=0.3, seed=0)
    assert len(splits.val) == 2 and len(splits.train) == 4


def test_split_folder_errors(tmp_path):
    class_folder(tmp_path / "train", {"a": 2})
    class_folder(tmp_path / "validation", {"zebra": 1})
    with pytest.raises(DatasetError, match="zebra.*not in"):
        discover(tmp_path)
    class_folder(tmp_path / "val", {"a": 1})
    with pytest.raises(DatasetError, match="both"):
        discover(tmp_path)
    other = tmp_path / "other"
    class_folder(other / "train", {"a": 2})
    class_folder(other / "extra", {"a": 2})
    with pytest.raises(DatasetError, match="extra"):
        discover(other)


def test_class_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        discover(tmp_path / "missing")
    root = class_folder(tmp_path / "d", {"a": 2})
    (root / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images in class folder.*empty"):
        discover(root)
    loose = tmp_path / "loose"
    png(loose / "x.png")
    with pytest.raises(DatasetError, match="no class subfolders.*1 images lie directly"):
        discover(loose)
    single = class_folder(tmp_path / "single", {"a": 3, "b": 1})
    assert len(discover(single).train) == 4  # no split needed: fine
    with pytest.raises(DatasetError, match="at least 2 images.*b has one"):
        discover(single, val_split=0.2)
    with pytest.raises(ValueError, match="val_split"):
        discover(single, val_split=1.0)
    with pytest.raises(DatasetError, match="csv or .jsonl"):
        discover(png(tmp_path / "one.png"))


# -- the stratified split ------------------------------------------------------------------------------------
def test_stratified_split_is_deterministic_and_stratified(tmp_path):
    root = class_folder(tmp_path / "d", {"a": 10, "b": 5, "c": 2})
    first = discover(root, val_split=0.2, seed=7)
    again = discover(root, val_split=0.2, seed=7)
    assert first == again
    val_counts = np.bincount([label for _, label in first.val], minlength=3).tolist()
    assert val_counts == [2, 1, 1]  # round(0.2 n), at least one per class, at least one left to train
    assert paths(first.train).isdisjoint(paths(first.val))
    assert len(first.train) + len(first.val) == 17
    assert [discover(root, 0.2, seed).val for seed in range(6)].count(first.val) < 6  # the seed matters
    # a new class does not move the other classes' files between train and val
    class_folder(root, {"d": 4})
    grown = discover(root, val_split=0.2, seed=7)
    assert paths(first.val) <= paths(grown.val)


# -- manifests -----------------------------------------------------------------------------------------------
def test_csv_manifest(tmp_path):
    png(tmp_path / "imgs" / "1.png")
    png(tmp_path / "imgs" / "2.png")
    png(tmp_path / "imgs" / "3.png")
    elsewhere = png(tmp_path / "other" / "4.png")
    manifest = tmp_path / "lists" / "train.csv"
    manifest.parent.mkdir()
    manifest.write_text(f"path,label\n../imgs/1.png,dog\n../imgs/2.png,cat\n../imgs/3.png,cat\n{elsewhere},dog\n\n")
    splits = discover(manifest, val_split=None)
    assert splits.layout == "csv" and splits.labels == ["cat", "dog"]
    assert sorted(splits.train) == sorted([(str(tmp_path / "imgs" / "1.png"), 1), (str(tmp_path / "imgs" / "2.png"), 0),
                                           (str(tmp_path / "imgs" / "3.png"), 0), (str(elsewhere), 1)])
    split = discover(manifest, val_split=0.5, seed=1)
    assert sorted(label for _, label in split.val) == [0, 1] and len(split.train) == 2
    # an explicit split column
    manifest.write_text("Path , LABEL,split\n../imgs/1.png,dog,train\n../imgs/2.png,cat,train\n"
                        "../imgs/3.png,cat,val\n")
    splits = discover(manifest, val_split=0.5)
    assert splits.val == [(str(tmp_path / "imgs" / "3.png"), 0)] and len(splits.train) == 2


def test_jsonl_manifest(tmp_path):
    for i in range(4):
        png(tmp_path / "x" / f"{i}.png")
    rows = [{"path": f"x/{i}.png", "label": label} for i, label in enumerate([10, 2, 2, 10])]
    rows[3]["split"] = "test"
    manifest = tmp_path / "data.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")
    splits = discover(manifest)
    assert splits.layout == "jsonl" and splits.labels == ["2", "10"]
    assert splits.train == [(str(tmp_path / "x" / "1.png"), 0), (str(tmp_path / "x" / "2.png"), 0),
                            (str(tmp_path / "x" / "0.png"), 1)]
    assert splits.test == [(str(tmp_path / "x" / "3.png"), 1)]


@pytest.mark.parametrize("text, message", [
    ("file,label\na.png,x\n", r"unknown column\(s\) file; missing column\(s\) path"),
    ("path,label,notes\na.png,x,hi\n", r"unknown column\(s\) notes"),
    ("path\na.png\n", r"missing column\(s\) label"),
    ("path,label\nmissing.png,x\n", r"1 file\(s\) listed in .* do not exist: missing.png"),
    ("path,label\na.png,x\na.png,y\n", "listed twice"),
    ("path,label\na.png,\n", "empty label"),
    ("path,label\na.png,x,extra\n", "3 values for 2 columns"),
    ("path,label,split\na.png,x,holdout\n", "'holdout' is not one of train, val, test"),
    ("path,label,split\na.png,x,train\nb.png,y,val\n", r"val label\(s\) y have no training rows"),
    ("", "empty manifest"),
])
def test_csv_manifest_errors(tmp_path, text, message):
    png(tmp_path / "a.png")
    png(tmp_path / "b.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(DatasetError, match=message):
        discover(manifest)


@pytest.mark.parametrize("line, message", [
    ('{"path": "a.png", "label": "x"', "not valid JSON"),
    ('["a.png", "x"]', "expected an object"),
    ('{"path": "a.png", "class": "x"}', r"unknown column\(s\) class"),
    ('{"path": "a.png", "label": 1.5}', "'label' must be a string or integer"),
])
def test_jsonl_manifest_errors(tmp_path, line, message):
    png(tmp_path / "a.png")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(line + "\n")
    with pytest.raises(DatasetError, match=message):
        discover(manifest)


# -- the dataset: per-sample seeding -------------------------------------------------------------------------
@pytest.fixture
def items(tmp_path):
    return discover(class_folder(tmp_path / "d", {"a": 3, "b": 3})).train


def test_seeds_are_pure_and_distinct():
    assert sample_seed(1, 2, 3) == sample_seed(1, 2, 3)
    assert len({sample_seed(0, 0, 0), sample_seed(0, 0), sample_seed(0, 0, 0, 0), sample_seed(1, 0, 0)}) == 4
    with pytest.raises(ValueError, match="non-negative"):
        sample_seed(-1)


def test_dataset_is_deterministic_per_seed_epoch_index(items):
    data = LabelledImages(items, train_transform(SPEC), seed=3)
    pixels, label = data[4]
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32 and label == 1
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(9)
    torch.rand(10)
    assert torch.equal(data[4][0], pixels)  # global RNG state changes nothing
    assert torch.equal(LabelledImages(items, train_transform(SPEC), seed=3)[4][0], pixels)
    assert not torch.equal(data[3][0], pixels)
    data.set_epoch(1)
    assert not torch.equal(data[4][0], pixels)
    data.set_epoch(0)
    assert torch.equal(data[4][0], pixels)
    assert not torch.equal(LabelledImages(items, train_transform(SPEC), seed=4)[4][0], pixels)


def test_dataset_independent_of_workers(items):
    data = LabelledImages(items, train_transform(SPEC, auto_augment="rand-m9-n2"), seed=1)
    data.set_epoch(2)
    plan = [[5, 0, 3], [1, 4, 2]]
    single = [b for b in DataLoader(data, batch_sampler=plan, num_workers=0)]
    pooled = [b for b in DataLoader(data, batch_sampler=plan, num_workers=2)]
    for (p1, l1), (p2, l2) in zip(single, pooled):
        assert torch.equal(p1, p2) and torch.equal(l1, l2)


def test_eval_transform_is_preprocess(items):
    data = LabelledImages(items, eval_transform(SPEC))
    image = Image.open(items[2][0]).convert("RGB")
    assert torch.equal(data[2][0], preprocess(image, SPEC))


# -- the dataset: unreadable images --------------------------------------------------------------------------
def test_bad_images_are_substituted_and_reported(tmp_path, items):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    gone = str(tmp_path / "gone.png")
    mixed = [(str(bad), 0), (gone, 1)] + items
    data = LabelledImages(mixed, eval_transform(SPEC))
    with pytest.warns(BadImageWarning) as record:
        pixels, label = data[0]
    assert ["bad.png" in str(w.message) for w in record] == [True, False]
    assert torch.equal(pixels, data[2][0]) and label == items[0][1]  # the next readable item stands in
    assert set(data.failures) == {str(bad), gone} and "not an image" in data.failures[str(bad)]
    assert data.failures[gone] == "no such file"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data[0]  # warned once per file
    strict = LabelledImages(mixed, eval_transform(SPEC), on_error="raise")
    with pytest.raises(ImageDecodeError, match="bad.png: not an image"):
        strict[0]
    with pytest.raises(FileNotFoundError):
        strict[1]
    hopeless = LabelledImages([(str(bad), 0)] * 40, eval_transform(SPEC), max_consecutive_failures=4)
    with pytest.warns(BadImageWarning), pytest.raises(RuntimeError, match="5 images in a row"):
        hopeless[0]
    assert find_bad_images(mixed) == {str(bad): "not an image: cannot identify image file", gone: "no such file"}


def test_truncated_image_found_by_full_decode(tmp_path):
    path = png(tmp_path / "t.png", size=(64, 64))
    path.write_bytes(path.read_bytes()[:-200])
    assert find_bad_images([(str(path), 0)]) == {}  # the header is fine
    assert "truncated" in find_bad_images([(str(path), 0)], full_decode=True)[str(path)]


# -- crop and flip -------------------------------------------------------------------------------------------
def image(width=37, height=29, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_the_full_crop_is_the_eval_view():
    """scale 1 crops the whole region the eval transform shows: the training pixels are the eval pixels."""
    for size in ((41, 41), (60, 37), (23, 51)):
        photo = image(*size)
        for spec in (SPEC, PreprocessSpec(input_size=32, crop_pct=0.9, resize_mode="exact", interpolation="bilinear")):
            t = train_transform(spec, scale=(1, 1), hflip=0.0, auto_augment=None)
            assert torch.equal(t(photo, sample_generator(0, 0)), preprocess(photo, spec))
    square = image(41, 41)
    expected = preprocess(square, SPEC)
    flipped = train_transform(SPEC, scale=(1, 1), ratio=(1, 1), hflip=1.0, auto_augment=None)
    out = flipped(square, sample_generator(0, 0))
    assert torch.equal(out, expected.flip(-1))  # a centred crop commutes with a mirror: the flip is a flip


def test_random_crops_stay_inside_the_eval_view():
    """A smaller crop of a photo whose eval view is its centre square holds only pixels of that square (and
    the resampling filter's reach): on an image black from 3 px outside the eval region, every training
    pixel is white."""
    spec = PreprocessSpec(input_size=32, crop_pct=0.5, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1))
    photo = Image.new("RGB", (200, 100), "black")
    left, top, right, bottom = eval_region(200, 100, spec)
    assert (left, top, right, bottom) == pytest.approx((75, 25, 125, 75), abs=0.5)
    photo.paste((255, 255, 255), (round(left) - 3, round(top) - 3, round(right) + 3, round(bottom) + 3))
    t = train_transform(spec, scale=(0.2, 0.6), hflip=0.0, auto_augment=None)
    for index in range(20):
        assert t(photo, sample_generator(0, index)).min() == 1.0


def test_flip_probability():
    square = image(33, 33)
    plain = train_transform(SPEC, scale=(1, 1), ratio=(1, 1), hflip=0.0, auto_augment=None)(square, sample_generator(0))
    t = train_transform(SPEC, scale=(1, 1), ratio=(1, 1), hflip=0.5, auto_augment=None)
    outs = [t(square, sample_generator(0, i)) for i in range(40)]
    assert all(torch.equal(o, plain) or torch.equal(o, plain.flip(-1)) for o in outs)
    assert 8 < sum(torch.equal(o, plain) for o in outs) < 32


def test_random_resized_crop_params():
    g = sample_generator(0, 1)
    for _ in range(50):
        top, left, h, w = random_resized_crop_params(37, 29, (0.08, 1.0), (3 / 4, 4 / 3), g)
        assert 0 <= top and top + h <= 29 and 0 <= left and left + w <= 37 and h > 0 and w > 0
    # nothing fits -> centre crop clamped to the ratio range (torchvision's fallback)
    assert random_resized_crop_params(40, 20, (2.0, 3.0), (1.0, 1.0), g) == (0, 10, 20, 20)
    assert random_resized_crop_params(20, 40, (2.0, 3.0), (0.75, 1.0), g) == (6, 0, 27, 20)
    assert random_resized_crop_params(30, 30, (2.0, 3.0), (0.75, 1.25), g) == (0, 0, 30, 30)


def test_train_transform_outputs_and_errors():
    for aug in ("trivial", "rand", "rand-m15-n3", None):
        out = train_transform(SPEC, auto_augment=aug)(image().convert("L"), sample_generator(1, 2))
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32 and torch.isfinite(out).all()
    with pytest.raises(TypeError, match="Generator"):
        train_transform(SPEC)(image(), None)
    for bad in ("auto", "rand-x3", "trivial-m3"):
        with pytest.raises(ValueError, match="auto_augment"):
            train_transform(SPEC, auto_augment=bad)
    with pytest.raises(ValueError, match="magnitude"):
        train_transform(SPEC, auto_augment="rand-m31")
    assert parse_auto_augment("rand-n1") == ("rand", 9, 1) and parse_auto_augment("none") is None


# -- the ops -------------------------------------------------------------------------------------------------
def test_op_tables_match_torchvision():
    trivial = trivial_augment_space(31)
    assert list(trivial) == list(OPS)
    assert trivial["Rotate"][0][-1] == 135.0 and trivial["TranslateX"][0][-1] == 32.0
    assert trivial["ShearX"][0][-1] == pytest.approx(0.99) and trivial["Posterize"][0][0] == 8
    assert trivial["Posterize"][0][-1] == 2 and trivial["Solarize"][0][0] == 255.0
    rand = rand_augment_space(31, 224, 100)
    assert rand["ShearX"][0][9] == pytest.approx(0.09) and rand["Rotate"][0][9] == pytest.approx(9.0)
    assert rand["Posterize"][0][9] == 7 and rand["Posterize"][0][-1] == 4
    assert rand["TranslateX"][0][-1] == pytest.approx(150 / 331 * 224)
    assert rand["TranslateY"][0][-1] == pytest.approx(150 / 331 * 100)
    assert [name for name, (mags, signed) in rand.items() if signed] == list(OPS[1:10])


@pytest.mark.parametrize("size", [(31, 17), (1, 1), (8, 33)])
def test_every_op_runs_on_odd_sizes(size):
    img = image(*size)
    for space in (trivial_augment_space(31), rand_augment_space(31, *size)):
        for name, (magnitudes, signed) in space.items():
            for magnitude in (magnitudes[-1], magnitudes[len(magnitudes) // 2]) if magnitudes else (0.0,):
                for sign in (1, -1) if signed else (1,):
                    out = apply_op(img, name, sign * magnitude)
                    assert out.mode == "RGB" and out.size == img.size, name


def test_op_geometry():
    img = image(20, 12)
    pixels = np.asarray(img)
    moved = np.asarray(apply_op(img, "TranslateX", 5.7))  # int(5.7) = 5 pixels to the right, black behind
    assert np.array_equal(moved[:, 5:], pixels[:, :-5]) and not moved[:, :5].any()
    moved = np.asarray(apply_op(img, "TranslateY", -3.0))
    assert np.array_equal(moved[:-3], pixels[3:]) and not moved[-3:].any()
    sheared = np.asarray(apply_op(img, "ShearX", 0.3))  # about the top-left corner: row 0 stays
    assert np.array_equal(sheared[0], pixels[0]) and not np.array_equal(sheared, pixels)
    sheared = np.asarray(apply_op(img, "ShearY", 0.3))
    assert np.array_equal(sheared[:, 0], pixels[:, 0])
    assert np.array_equal(np.asarray(apply_op(img, "Rotate", 0.0)), pixels)
    assert np.array_equal(np.asarray(apply_op(img, "Identity", 0.0)), pixels)
    assert np.array_equal(np.asarray(apply_op(img, "Solarize", 0.0)), 255 - pixels)
    assert np.array_equal(np.asarray(apply_op(img, "Posterize", 2.0)), pixels & 0b11000000)
    assert np.array_equal(np.asarray(apply_op(img, "Brightness", -1.0)), np.zeros_like(pixels))
    filled = np.asarray(apply_op(img, "TranslateX", 4.0, fill=(1, 2, 3)))
    assert (filled[:, :4] == [1, 2, 3]).all()
    with pytest.raises(ValueError, match="unknown augmentation op"):
        apply_op(img, "Invert!", 0.0)


def test_augmentation_uses_many_ops():
    t = train_transform(SPEC, scale=(1, 1), ratio=(1, 1), hflip=0.0, auto_augment="trivial")
    square = image(32, 32)
    plain = train_transform(SPEC, scale=(1, 1), ratio=(1, 1), hflip=0.0, auto_augment=None)(square, sample_generator(0))
    outs = [t(square, sample_generator(5, i)) for i in range(30)]
    assert sum(not torch.equal(o, plain) for o in outs) > 15
    assert len({o.sum().item() for o in outs}) > 10


# -- mixup / cutmix ------------------------------------------------------------------------------------------
def batch(b=6, size=16):
    x = torch.arange(b, dtype=torch.float32)[:, None, None, None].expand(b, 3, size, size).clone()  # sample i == i
    return x, torch.tensor([0, 1, 2, 3, 4, 0][:b])


def test_smooth_one_hot():
    soft = smooth_one_hot(torch.tensor([2, 0]), 4, 0.1)
    assert torch.allclose(soft, torch.tensor([[0.025, 0.025, 0.925, 0.025], [0.925, 0.025, 0.025, 0.025]]))
    assert torch.equal(smooth_one_hot(torch.tensor([1]), 3), torch.tensor([[0.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="0..3"):
        smooth_one_hot(torch.tensor([4]), 4)


def test_mixup_lambda_and_targets():
    x, t = batch()
    original = x.clone()
    for seed in range(5):
        images, soft = mixup_cutmix(x, t, 5, 0.8, 0.0, 1.0, 0.5, 0.0, sample_generator(seed))
        # sample 0 (value 0) mixed with sample 5 (value 5): pixel = 5 * (1 - lam)
        lam = 1 - images[0, 0, 0, 0].item() / 5
        assert torch.allclose(images, original * lam + original.flip(0) * (1 - lam), atol=1e-5)
        assert torch.allclose(soft.sum(-1), torch.ones(6), atol=1e-6)
        expected = smooth_one_hot(t, 5) * lam + smooth_one_hot(t.flip(0), 5) * (1 - lam)
        assert torch.allclose(soft, expected, atol=1e-5)
    assert torch.equal(x, original)  # inputs untouched


def test_cutmix_area_matches_lambda():
    x, t = batch(size=20)
    for seed in range(30):
        images, soft = mixup_cutmix(x, t, 5, 0.0, 1.0, 1.0, 0.5, 0.1, sample_generator(seed))
        pasted = (images[0] != x[0]).all(dim=0)  # (H, W): where sample 0 now shows sample 5
        rows, cols = pasted.any(dim=1).nonzero(), pasted.any(dim=0).nonzero()
        if len(rows):  # one rectangle
            assert pasted.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        lam = 1 - pasted.float().mean().item()
        off = 0.1 / 5
        # sample 1 (class 1) takes its box from sample 4 (class 4)
        assert soft[1, 1].item() == pytest.approx(lam * (1 - 0.1 + off) + (1 - lam) * off, abs=1e-6)
        assert soft[1, 4].item() == pytest.approx((1 - lam) * (1 - 0.1 + off) + lam * off, abs=1e-6)
        assert torch.allclose(soft.sum(-1), torch.ones(6), atol=1e-6)


def test_cutmix_box_is_clipped_and_lambda_corrected():
    clipped = 0
    for seed in range(50):
        state = np.random.RandomState(seed)
        lam = state.beta(1.0, 1.0)
        (top, bottom, left, right), corrected = cutmix_box((20, 30), lam, state)
        assert 0 <= top <= bottom <= 20 and 0 <= left <= right <= 30
        assert corrected == pytest.approx(1 - (bottom - top) * (right - left) / 600)
        full = int(20 * np.sqrt(1 - lam)) * int(30 * np.sqrt(1 - lam))
        clipped += (bottom - top) * (right - left) < full
        (_, _, _, _), raw = cutmix_box((20, 30), lam, np.random.RandomState(seed + 1000), correct_lam=False)
        assert raw == lam
    assert clipped > 5


def test_mixup_is_deterministic_by_generator():
    x, t = batch()
    a = mixup_cutmix(x, t, 5, 0.8, 1.0, 1.0, 0.5, 0.1, sample_generator(3, 1))
    torch.manual_seed(99)
    np.random.seed(99)
    b = mixup_cutmix(x, t, 5, 0.8, 1.0, 1.0, 0.5, 0.1, sample_generator(3, 1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    outcomes = {mixup_cutmix(x, t, 5, 0.8, 1.0, 1.0, 0.5, 0.1, sample_generator(3, s))[1][1, 1].item()
                for s in range(8)}
    assert len(outcomes) > 4
    never = mixup_cutmix(x, t, 5, 0.8, 1.0, 0.0, 0.5, 0.1, sample_generator(0))  # prob 0: smoothing only
    assert torch.equal(never[0], x) and torch.equal(never[1], smooth_one_hot(t, 5, 0.1))
    with pytest.raises(TypeError, match="Generator"):
        mixup_cutmix(x, t, 5, 0.8, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        mixup_cutmix(x, t, 5, 0.0, 0.0, generator=sample_generator(0))


def _timm_mixup_module():
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "data" / "mixup.py"
    if not path.is_file():
        return None
    module_spec = importlib.util.spec_from_file_location("timm_mixup_reference", path)  # numpy + torch only
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_mixup_matches_timm():
    timm_mixup = _timm_mixup_module()
    if timm_mixup is None:
        pytest.skip("timm is not installed")
    x = torch.randn(8, 3, 24, 20)
    t = torch.tensor([0, 1, 2, 3, 4, 5, 6, 1])
    for seed in range(12):
        for mix, cut, prob in ((0.8, 1.0, 1.0), (0.2, 0.0, 0.7), (0.0, 1.0, 1.0)):
            np.random.seed(seed)
            reference = timm_mixup.Mixup(mixup_alpha=mix, cutmix_alpha=cut, prob=prob, switch_prob=0.5,
                                         mode="batch", label_smoothing=0.1, num_classes=7)
            ref_images, ref_soft = reference(x.clone(), t)
            images, soft = _mix(x, t, 7, mix, cut, prob, 0.5, 0.1, True, np.random.RandomState(seed))
            assert torch.equal(images, ref_images) and torch.equal(soft, ref_soft), (seed, mix, cut)
