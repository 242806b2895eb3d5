"""`vitkit eval retrieval`: leave-one-out recall@1/5/10 and mAP, and their chance levels.

- the metrics equal a direct, one-query-at-a-time computation from their definitions;
- the chance levels (closed forms) equal the means over many random rankings;
- the shipped digits model on the held-out test split of scikit-learn's digits (never trained on) retrieves
  its own digit far above chance;
- the real DeiT-Tiny on a folder built from ../shared/images (photos grouped into coarse ImageNet groups:
  dogs, birds, vehicles, ...) retrieves far above chance with its class token and with mean pooling (which
  does better here); skipped without ../shared.

Run:  .venv/bin/python -m pytest tests/test_index_retrieval.py -q
"""

from __future__ import annotations

import csv
import importlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vitkit.cli as cli
from conftest import SHARED
from test_index import DIGITS
from vitkit.index.retrieval import chance_ap, chance_recall, retrieval_metrics

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = SHARED / "weights" / "deit-tiny-patch16-224" / "model.safetensors"
PHOTOS = SHARED / "images" / "imagenet-sample-100"
# Coarse groups of the photos' ImageNet classes (labels.csv class_name); the other photos are left out.
GROUPS = {
    "dog": ["Afghan hound", "Irish wolfhound", "American Staffordshire terrier", "Sealyham terrier",
            "Tibetan terrier", "German short-haired pointer", "Sussex spaniel", "Shetland sheepdog", "Appenzeller",
            "Siberian husky", "chow"],
    "bird": ["brambling", "water ouzel", "black grouse", "lorikeet", "black swan", "flamingo", "red-backed sandpiper"],
    "reptile or amphibian": ["bullfrog", "American chameleon", "American alligator", "night snake"],
    "invertebrate": ["harvestman", "flatworm", "fiddler crab", "tiger beetle", "ant", "damselfly"],
    "wild mammal": ["sea lion", "white wolf", "grey fox", "jaguar", "wood rabbit", "zebra", "ibex", "otter",
                    "guenon", "titi"],
    "vehicle": ["bobsled", "container ship", "mobile home", "motor scooter", "oxcart", "schooner",
                "steam locomotive", "tricycle", "unicycle"],
    "food": ["French loaf", "spaghetti squash", "orange", "chocolate sauce"],
    "landscape": ["breakwater", "cliff dwelling", "alp", "volcano"],
}


def direct_metrics(vectors: np.ndarray, labels: np.ndarray, ks=(1, 5, 10)) -> dict:
    """The definitions, one query at a time: rank the others by similarity, then count."""
    found, aps = {k: [] for k in ks}, []
    for q in range(len(vectors)):
        others = sorted((i for i in range(len(vectors)) if i != q), key=lambda i: -float(vectors[q] @ vectors[i]))
        relevant = [labels[i] == labels[q] for i in others]
        if not any(relevant):
            continue
        for k in ks:
            found[k].append(any(relevant[:k]))
        hits, precisions = 0, []
        for rank, is_relevant in enumerate(relevant, 1):
            if is_relevant:
                hits += 1
                precisions.append(hits / rank)
        aps.append(np.mean(precisions))
    return {**{f"recall@{k}": float(np.mean(found[k])) for k in ks}, "mAP": float(np.mean(aps))}


def test_metrics_equal_their_definitions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 60)
    labels[-1] = 5  # a class of one image: not a query
    vectors = rng.normal(size=(60, 8)) + 1.5 * np.eye(8)[labels]  # (60, 8) weakly clustered
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    metrics = retrieval_metrics(vectors, labels)
    assert metrics["queries"] == 59 and metrics["images"] == 60
    for name, value in direct_metrics(vectors, labels).items():
        assert metrics[name] == pytest.approx(value, abs=1e-9), name


def test_chance_levels_equal_random_rankings():
    rng = np.random.default_rng(1)
    others, relevant, trials = 30, np.array([1, 4, 12]), 20000
    for r in relevant:
        rel = np.zeros((trials, others), bool)
        rel[:, :r] = True
        rel = rng.permuted(rel, axis=1)  # (trials, M) random rankings
        for k in (1, 5, 10):
            assert chance_recall(others, np.array([r]), k)[0] == pytest.approx(rel[:, :k].any(axis=1).mean(), abs=0.01)
        precision = np.cumsum(rel, axis=1) / np.arange(1, others + 1)
        ap = (precision * rel).sum(axis=1) / r
        assert chance_ap(others, np.array([r]))[0] == pytest.approx(ap.mean(), abs=0.01)


def eval_retrieval(monkeypatch, capsys, *argv) -> dict:
    monkeypatch.setattr(cli, "FEATURE_CLIS", ("vitkit.index.cli",))
    code = cli.main(["eval", "retrieval", *argv, "--json", "--no-progress", "--workers", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_digits_model_on_held_out_digits(tmp_path, monkeypatch, capsys, report):
    pytest.importorskip("sklearn")
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        digits = importlib.import_module("train_digits")
    finally:
        sys.path.remove(str(ROOT / "examples"))
    _, scans, _, labels = digits.load_split()  # the test split: 360 scans the shipped model never saw
    for n, (scan, label) in enumerate(zip(scans, labels)):
        (tmp_path / str(int(label))).mkdir(exist_ok=True)
        digits.digit_image(scan).save(tmp_path / str(int(label)) / f"{n:04d}.png")
    result = eval_retrieval(monkeypatch, capsys, str(tmp_path), "--model", DIGITS)
    chance = result["chance"]
    report(f"index: eval retrieval, digits model on {result['images']} held-out digits: recall@1 "
           f"{result['recall@1']:.3f} (chance {chance['recall@1']:.3f}), mAP {result['mAP']:.3f} "
           f"(chance {chance['mAP']:.3f})")
    assert (result["images"], result["classes"], result["errors"]) == (360, 10, [])
    assert result["recall@1"] > 0.9 > 5 * chance["recall@1"]
    assert result["mAP"] > 0.7 > 5 * chance["mAP"]


def test_real_deit_tiny_on_grouped_photos(tmp_path, monkeypatch, capsys, report):
    if not WEIGHTS.is_file() or not (PHOTOS / "labels.csv").is_file():
        pytest.skip(f"real DeiT-Tiny or photos not found under {SHARED} (absent in a fresh clone)")
    group_of = {name: group for group, names in GROUPS.items() for name in names}
    with open(PHOTOS / "labels.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["class_name"] in group_of]
    assert len(rows) == len(group_of)  # every listed class is one of the photos
    for r in rows:
        folder = tmp_path / group_of[r["class_name"]]
        folder.mkdir(exist_ok=True)
        shutil.copy(PHOTOS / r["file"], folder / r["file"])
    # cls_mean: class token beside the patch mean (DINOv2's linear-evaluation features), new with the families
    for pool, recall_factor, map_factor in (("cls", 3, 1.5), ("mean", 4, 2.5), ("cls_mean", 3, 1.5)):
        result = eval_retrieval(monkeypatch, capsys, str(tmp_path), "--model", str(WEIGHTS),
                                "--arch", "deit_tiny_patch16_224", "--pool", pool)
        chance = result["chance"]
        scores = ", ".join(f"{k} {result[k]:.3f} (chance {chance[k]:.3f})"
                           for k in ("recall@1", "recall@5", "recall@10", "mAP"))
        report(f"index: eval retrieval, real DeiT-Tiny (pool {pool}) on {result['images']} photos in "
               f"{result['classes']} coarse ImageNet groups: {scores}")
        assert (result["images"], result["classes"], result["pool"]) == (55, 8, pool)
        assert result["recall@1"] > recall_factor * chance["recall@1"]
        assert result["mAP"] > map_factor * chance["mAP"]
