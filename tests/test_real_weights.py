"""A real classifier on real photos: DeiT-Ti/16 (ImageNet-1k, timm layout) on 100 ImageNet photos.

  * vitkit's logits equal an independent reference forward -- timm's `deit_tiny_patch16_224` with the
    same safetensors loaded strictly -- on the same preprocessed tensors (same top-1 on all 100,
    max abs logit diff <= 1e-4);
  * accuracy against labels.csv with the DeiT authors' preprocessing (resize 256, crop 224, i.e.
    crop_pct 0.875, bicubic, ImageNet mean/std), which vitkit's deit arch row uses, must be a real
    classifier's (top-1 > 50%); timm's current pretrained_cfg (crop_pct 0.9) is measured and printed;
  * `vitkit classify` (the CLI, JSONL output) gives the same top-1 per file.

vitkit's preprocessing of these photos against a step-by-step reimplementation of timm's eval transform
(crop_pct 0.875 and 0.9, ImageNet mean/std, all 100 photos, <= 1e-5) is tests/test_preprocess.py
(`test_shortest_mode_matches_timm_eval`), so it is not repeated here.

Needs ../shared (weights and photos; absent in a fresh clone: the module is skipped) and, for the
reference forward, timm (through tests/reference_timm.py).

Run:  .venv/bin/python -m pytest tests/test_real_weights.py -q -s --durations=5
"""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights" / "deit-tiny-patch16-224" / "model.safetensors"
PHOTOS = SHARED / "images" / "imagenet-sample-100"
LABELS = PHOTOS / "labels.csv"
ARCH = "deit_tiny_patch16_224"
TOL = 1e-4
MIN_TOP1 = 0.5

for _needed, _what in ((WEIGHTS, "DeiT-Ti weights"), (LABELS, "photos' labels.csv")):
    if not _needed.is_file():
        pytest.skip(f"{_what} not found at {_needed} (../shared is absent in a fresh clone)", allow_module_level=True)

import vitkit  # noqa: E402
from vitkit.cli import main as cli  # noqa: E402
from vitkit.data.decode import decode_image  # noqa: E402
from vitkit.data.transforms import preprocess_batch  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Photo:
    path: Path
    class_index: int
    class_name: str


@pytest.fixture(scope="module")
def photos() -> list[Photo]:
    with open(LABELS, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = [Photo(PHOTOS / r["file"], int(r["class_index"]), r["class_name"]) for r in rows]
    missing = [str(p.path) for p in out if not p.path.is_file()]
    if missing:
        pytest.skip(f"{len(missing)} photos listed in labels.csv are missing, e.g. {missing[0]}")
    assert len(out) == 100
    return out


@pytest.fixture(scope="module")
def model() -> vitkit.Model:
    return vitkit.load(str(WEIGHTS), arch=ARCH)


@pytest.fixture(scope="module")
def images(photos):
    return [decode_image(p.path) for p in photos]


@pytest.fixture(scope="module")
def pixels(model, photos) -> torch.Tensor:
    """vitkit's own preprocessing of every photo, from the files, with the arch row's spec (256 -> 224)."""
    return model.preprocess([p.path for p in photos])


@pytest.fixture(scope="module")
def logits(model, pixels) -> torch.Tensor:
    return model(pixels)


def accuracy(logits: torch.Tensor, photos: list[Photo]) -> tuple[float, float]:
    target = torch.tensor([p.class_index for p in photos])
    top5 = logits.topk(5, dim=-1).indices  # (N, 5)
    return (top5[:, 0] == target).float().mean().item(), (top5 == target[:, None]).any(-1).float().mean().item()


def test_spec_is_the_deit_recipe(model):
    spec = model.spec
    assert (spec.input_size, spec.resize, spec.crop_pct, spec.resize_mode, spec.interpolation) == (
        224, 256, 0.875, "shortest", "bicubic")
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    assert model.config.num_classes == 1000 and model.labels[0] == "tench"


def test_logits_match_timm_reference(pixels, logits, report):
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from reference_timm import create_reference, import_timm
        import_timm()
    except ImportError as err:
        pytest.skip(f"timm, the reference forward, cannot be imported: {err}")
    from safetensors.torch import load_file

    ref = create_reference(ARCH, seed=None)  # pretrained=False; every value replaced by the strict load
    ref.load_state_dict(load_file(str(WEIGHTS)), strict=True)
    with torch.no_grad():
        expected = ref(pixels)
    assert logits.shape == expected.shape == (100, 1000)
    diff = (logits - expected).abs().max().item()
    agree = (logits.argmax(-1) == expected.argmax(-1)).sum().item()
    report(f"DeiT-Ti vs timm on 100 photos: max abs logit diff {diff:.3g}, top-1 agreement {agree}/100")
    assert agree == 100
    assert diff <= TOL


@pytest.mark.slow
def test_accuracy_on_labelled_photos(model, photos, images, pixels, logits, report):
    top1, top5 = accuracy(logits, photos)
    # timm's current pretrained_cfg for deit_tiny_patch16_224: crop_pct 0.9 (resize 248 -> crop 224)
    spec_09 = dataclasses.replace(model.spec, crop_pct=0.9)
    assert spec_09.resize == 248
    top1_09, top5_09 = accuracy(model(preprocess_batch(images, spec_09)), photos)
    report(f"DeiT-Ti on 100 ImageNet photos: crop_pct 0.875 (256->224) top-1 {top1:.0%} top-5 {top5:.0%}; "
           f"crop_pct 0.9 (248->224) top-1 {top1_09:.0%} top-5 {top5_09:.0%}")
    assert top1 > MIN_TOP1, f"top-1 {top1:.0%} with the DeiT recipe: not a working classifier"
    assert top5 >= top1


def test_cli_classify_gives_the_same_top1(tmp_path, model, photos, logits):
    out = tmp_path / "predictions.jsonl"
    argv = ["classify", str(PHOTOS), "--model", str(WEIGHTS), "--arch", ARCH, "--format", "jsonl",
            "--top-k", "5", "-o", str(out), "--no-progress"]
    assert cli(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by_name = {Path(r["path"]).name: r for r in rows}
    assert sorted(by_name) == sorted(p.path.name for p in photos)  # labels.csv is not an image: not listed
    expected = logits.argmax(-1).tolist()
    mismatched = []
    for photo, want in zip(photos, expected):
        row = by_name[photo.path.name]
        assert row["error"] is None, (photo.path.name, row["error"])
        assert len(row["top_k"]) == 5
        if row["top_k"][0]["index"] != want:
            mismatched.append((photo.path.name, row["top_k"][0]["index"], want))
    assert not mismatched, f"CLI top-1 differs from the API's on {len(mismatched)} photos: {mismatched[:5]}"
    # the CLI's label is the name of that index in vitkit's ImageNet-1k label list
    first = by_name[photos[0].path.name]["top_k"][0]
    assert first["label"] == model.labels[first["index"]]
