"""The linear probe (`vitkit finetune --recipe linear-probe`) and LP-FT, run as a user runs them, against
scikit-learn on the same features and split:

- real DeiT-Ti (ImageNet) on scikit-learn's handwritten digits written as small PNGs (10 classes, train /
  val / test folders): the default probe's validation top-1 is within 1 point of a scikit-learn
  LogisticRegression on the standardised pre-logit features with C tuned on the same validation split (the
  same grid), and so is its top-1 on the held-out test folder; `full` with every default starts from that
  probe and ends at least as good on validation, both far above chance;
- a second architecture: the shipped digits ViT (width 64, patch 4, 32 px) as the backbone of a new 3-class
  task (digit mod 3): the same comparison with scikit-learn, and `full` with defaults >= the probe;
- mechanics on tiny random models of every head layout (plain, distilled with two heads, BEiT mean pooling
  + fc_norm, a pre-logits layer, which is dropped as transformers and timm drop it): the saved head reproduces the probe's logits on the features
  (standardisation folded in), the features are cached on disk and a re-run reads them back, k-fold
  selection without a validation split, and --views adds augmented rows.

Run:  .venv/bin/python -m pytest tests/test_probe.py -q
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from vitkit.checkpoints.save import save_vitkit
from vitkit.cli import main as cli
from vitkit.config import HALF, PreprocessSpec
from vitkit.models.vit import VisionTransformer
from vitkit.cache import cache_dir
from vitkit.train.probe import L2_GRID, fit_probe

from conftest import TINY_VARIANTS, randomise_
from test_eval_layouts import train_digits_example

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEIT = SHARED / "weights" / "deit-tiny-patch16-224" / "model.safetensors"
DIGITS_MODEL = Path(vitkit.__file__).parent / "assets" / "digits-vit"
SPLITS = {"train": 24, "val": 12, "test": 12}  # images per class and split

def run_cli(args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli([str(a) for a in args])
    return code, err.getvalue()


def log_rows(out: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def write_digits(root: Path, label_of, per_split: dict[str, int], noise: float = 0.0) -> Path:
    """scikit-learn digits as DATA/{train,val,test}/<label>/<n>.png (32 px, dark ink on white); `noise`: the
    std of Gaussian pixel noise added, and a random shift of up to 4 px, so that the task is not trivial."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    digit_image = train_digits_example().digit_image
    counts: dict[str, int] = {}
    for i, (scan, digit) in enumerate(zip(digits.images, digits.target)):
        label = label_of(int(digit))
        k = counts.get(label, 0)
        counts[label] = k + 1
        edges = np.cumsum(list(per_split.values()))
        if k >= edges[-1]:
            continue
        split = list(per_split)[int(np.searchsorted(edges, k, side="right"))]
        path = root / split / label / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = digit_image(scan)
        if noise:
            rng = np.random.default_rng(i)
            pixels = np.roll(np.asarray(image, dtype=np.float64), tuple(rng.integers(-4, 5, 2)), axis=(0, 1))
            image = Image.fromarray(np.clip(pixels + rng.normal(0, noise, pixels.shape), 0, 255).astype(np.uint8))
        image.save(path)
    return root


def features(model: vitkit.api.Model, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logit features (through the public embed API, not the probe's code) and label indices."""
    paths = sorted(folder.rglob("*.png"))
    labels = np.array([model.labels.index(p.parent.name) for p in paths])
    x = torch.cat([model.embed([str(p) for p in paths[i:i + 64]], pool="prelogits", normalize=False)
                   for i in range(0, len(paths), 64)])
    return x.numpy(), labels


def sklearn_probe(train, val, test) -> tuple[float, float, float]:
    """scikit-learn's LogisticRegression on standardised features, C = 1 / (l2 * n) over the probe's grid,
    chosen by validation accuracy (ties: the stronger regularisation): (val top-1, test top-1, l2)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train[0])
    best = None
    for l2 in sorted(L2_GRID, reverse=True):
        clf = LogisticRegression(C=1 / (l2 * len(train[1])), max_iter=10_000, tol=1e-8)
        clf.fit(scaler.transform(train[0]), train[1])
        score = clf.score(scaler.transform(val[0]), val[1])
        if best is None or score > best[0] + 1e-12:
            best = (score, clf.score(scaler.transform(test[0]), test[1]), l2)
    return best


def probe_and_finetune(data: Path, tmp: Path, model_args: list[str], report, what: str, chance: float):
    """The probe vs scikit-learn, then `full` with defaults vs the probe; returns nothing, asserts all."""
    out = tmp / "probe"
    code, err = run_cli(["finetune", data, *model_args, "--recipe", "linear-probe", "--out", out])
    assert code == 0, err[-3000:]
    (probe,) = log_rows(out, "probe")
    model = vitkit.load(str(out))
    parts = {split: features(model, data / split) for split in SPLITS}
    sk_val, sk_test, sk_l2 = sklearn_probe(parts["train"], parts["val"], parts["test"])
    logits = model(torch.cat([model.preprocess([str(p) for p in sorted((data / "test").rglob("*.png"))])]))
    ours_test = float((logits.argmax(-1).numpy() == parts["test"][1]).mean())
    report(f"probe: {what}: val top-1 {probe['val_top1']:.1%} (scikit-learn {sk_val:.1%}), test top-1 "
           f"{ours_test:.1%} (scikit-learn {sk_test:.1%}); L2 {probe['l2']:.0e} (scikit-learn {sk_l2:.0e}); "
           f"chance {chance:.0%}")
    assert abs(probe["val_top1"] - sk_val) <= 0.01 and abs(ours_test - sk_test) <= 0.01
    assert probe["val_top1"] > chance + 0.4

    tuned = tmp / "full"
    code, err = run_cli(["finetune", data, *model_args, "--out", tuned])  # every default: recipe full, LP-FT
    assert code == 0, err[-3000:]
    assert "lr " in err and "head from a linear probe" in err and "best:" in err
    (start,) = log_rows(tuned, "probe")
    epochs = log_rows(tuned, "epoch")
    best = max([start["val_top1"]] + [e["val_top1"] for e in epochs])
    final = vitkit.load(str(tuned))
    logits = final(torch.cat([final.preprocess([str(p) for p in sorted((data / "test").rglob("*.png"))])]))
    tuned_test = float((logits.argmax(-1).numpy() == parts["test"][1]).mean())
    per_epoch = ", ".join(f"{e['val_top1']:.0%}" for e in epochs)
    report(f"LP-FT: {what}: `finetune` with defaults ({len(epochs)} epochs): val top-1 {best:.1%} (its probe "
           f"{start['val_top1']:.1%}, per epoch {per_epoch}); test top-1 "
           f"{tuned_test:.1%} (probe {ours_test:.1%})")
    # LP-FT's probe minimises the fine-tuning loss (label smoothing 0.1), so it is close to, not equal to, the
    # plain probe; the saved model is the best on validation, the probe included
    assert best >= start["val_top1"] and best > chance + 0.4
    val_paths = sorted((data / "val").rglob("*.png"))
    saved_val = final(final.preprocess([str(p) for p in val_paths])).argmax(-1).numpy() == parts["val"][1]
    assert saved_val.mean() == pytest.approx(best)  # the folder holds the best model, not the last


@pytest.mark.slow
@pytest.mark.skipif(not DEIT.is_file(), reason=f"needs the real DeiT-Ti at {DEIT} (absent in a fresh clone)")
def test_real_deit_tiny_probe_matches_sklearn_and_lp_ft_keeps_it(tmp_path, report):
    data = write_digits(tmp_path / "digits", str, SPLITS)
    probe_and_finetune(data, tmp_path, ["--model", DEIT, "--arch", "deit_tiny_patch16_224"], report,
                       "real DeiT-Ti on digits (10 classes, 240 train / 120 val / 120 test)", 0.1)


@pytest.mark.slow
def test_second_architecture_digits_vit_on_a_new_task(tmp_path, report):
    data = write_digits(tmp_path / "mod3", lambda d: f"mod3_{d % 3}", {"train": 60, "val": 30, "test": 30}, 50.0)
    probe_and_finetune(data, tmp_path, ["--model", DIGITS_MODEL], report,
                       "shipped digits ViT as a backbone for digit mod 3 on shifted, noisy digits (3 classes, "
                       "180 / 90 / 90)", 1 / 3)


# ----------------------------------------------------------------------------- mechanics, tiny models
SPEC = PreprocessSpec(input_size=32, crop_pct=1.0, resize_mode="exact", interpolation="bilinear", mean=HALF, std=HALF)


@pytest.fixture(scope="module")
def blobs(tmp_path_factory, one_thread) -> Path:
    """3 classes of coloured noise, 10 train and 4 val images each."""
    root = tmp_path_factory.mktemp("blobs")
    colours = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]
    for label, colour in enumerate(colours):
        for split, count in (("train", 10), ("val", 4)):
            folder = root / split / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                rng = np.random.default_rng(100 * label + i + (50 if split == "val" else 0))
                pixels = np.clip(rng.normal(colour, 60, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("variant", ["vit", "deit_distilled", "beit", "pre_logits"])
def test_the_saved_head_is_the_probe_on_raw_features(blobs, tmp_path, variant):
    net = randomise_(VisionTransformer(TINY_VARIANTS[variant].replace(num_classes=3)))
    base = save_vitkit(net, SPEC, tmp_path / "base.safetensors")
    out = tmp_path / "out"
    code, err = run_cli(["finetune", blobs, "--model", base, "--recipe", "linear-probe", "--out", out,
                         "--workers", "0"])
    assert code == 0, err[-2000:]
    model = vitkit.load(str(out))
    train, val = features(model, blobs / "train"), features(model, blobs / "val")
    probe = fit_probe(torch.from_numpy(train[0]), torch.from_numpy(train[1]), 3, torch.from_numpy(val[0]),
                      torch.from_numpy(val[1]))
    paths = sorted(str(p) for p in (blobs / "val").rglob("*.png"))
    torch.testing.assert_close(model(model.preprocess(paths)), probe.logits(torch.from_numpy(val[0])),
                               atol=1e-4, rtol=1e-4)
    (row,) = log_rows(out, "probe")
    assert row["l2"] == probe.l2 and row["val_top1"] == pytest.approx(probe.chosen.score)
    frozen = {k: v for k, v in net.state_dict().items() if not k.startswith(("head.", "head_dist.", "pre_logits."))}
    saved = model.net.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in frozen.items())


def test_features_are_cached_and_read_back(blobs, tmp_path, monkeypatch):
    base = save_vitkit(randomise_(VisionTransformer(TINY_VARIANTS["vit"].replace(num_classes=3))), SPEC,
                       tmp_path / "base.safetensors")
    args = ["finetune", blobs, "--model", base, "--recipe", "linear-probe", "--workers", "0"]
    assert run_cli(args + ["--out", tmp_path / "one"])[0] == 0
    entries = sorted(cache_dir("features").glob("*.safetensors"))
    assert entries, f"nothing cached in {cache_dir('features')}"
    calls = []
    monkeypatch.setattr("vitkit.train.features.FeatureExtractor._batch",
                        lambda self, rows: calls.append(len(rows)))
    assert run_cli(args + ["--out", tmp_path / "two"])[0] == 0  # another --out: the same features
    assert calls == [], "the second run computed features instead of reading the cache"
    first, second = (json.loads((tmp_path / d / "log.jsonl").read_text().splitlines()[0]) for d in ("one", "two"))
    assert first["l2"] == second["l2"] and first["val_top1"] == second["val_top1"]


def test_without_validation_the_strength_is_chosen_by_k_fold(blobs, tmp_path):
    base = save_vitkit(randomise_(VisionTransformer(TINY_VARIANTS["vit"].replace(num_classes=3))), SPEC,
                       tmp_path / "base.safetensors")
    code, err = run_cli(["finetune", blobs / "train", "--model", base, "--recipe", "linear-probe", "--val-split", "0",
                         "--out", tmp_path / "out", "--workers", "0"])
    assert code == 0, err[-2000:]
    (row,) = log_rows(tmp_path / "out", "probe")
    assert row["selection"] == "5-fold cross-validation" and "val_top1" not in row
    assert "no validation images" in err


def test_views_add_augmented_rows(blobs, tmp_path, monkeypatch):
    seen = {}
    original = fit_probe

    def spy(train_x, train_y, *args, **kwargs):
        seen["rows"] = len(train_x)
        return original(train_x, train_y, *args, **kwargs)

    monkeypatch.setattr("vitkit.train.trainer.fit_probe", spy)
    base = save_vitkit(randomise_(VisionTransformer(TINY_VARIANTS["vit"].replace(num_classes=3))), SPEC,
                       tmp_path / "base.safetensors")
    code, err = run_cli(["finetune", blobs, "--model", base, "--recipe", "linear-probe", "--views", "2",
                         "--out", tmp_path / "out", "--workers", "0"])
    assert code == 0, err[-2000:]
    assert seen["rows"] == 3 * 30  # the plain view and two augmented views of 30 training images
