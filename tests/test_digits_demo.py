"""The shipped demo model (vitkit/assets/digits-vit/, trained by examples/train_digits.py) and `make demo`.

Run:  .venv/bin/python -m pytest tests/test_digits_demo.py -q
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

import vitkit

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


@pytest.fixture(scope="module")
def examples():
    """examples/demo.py and examples/train_digits.py as modules (demo imports train_digits by name)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module("demo"), importlib.import_module("train_digits")
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.fixture(scope="module")
def model_dir() -> Path:
    path = Path(str(resources.files("vitkit") / "assets" / "digits-vit"))
    assert path.is_dir(), f"{path} is missing: run examples/train_digits.py --ship"
    return path


@pytest.fixture(scope="module")
def model(model_dir):
    return vitkit.load(str(model_dir))


def test_the_packaged_folder_is_a_small_transformers_folder(model_dir, model):
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(FILES)
    assert sum((model_dir / name).stat().st_size for name in FILES) < 1_000_000
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "vit" and config["id2label"] == {str(i): str(i) for i in range(10)}
    assert model.layout == "hf" and model.labels == tuple("0123456789")
    cfg = model.config
    assert (cfg.image_size, cfg.patch_size, cfg.width, cfg.depth, cfg.heads, cfg.mlp_dim) == (32, 4, 64, 6, 4, 128)
    assert model.spec.input_size == 32 and model.spec.mean == (0.5, 0.5, 0.5)


def test_the_packaged_model_matches_its_architecture_row(model):
    from vitkit.models.registry import arch

    row = arch("vitkit_digits_patch4_32")
    assert model.config == row.config.replace(pos_embed_antialias=model.config.pos_embed_antialias)
    assert model.spec == row.preprocess


def test_it_classifies_the_demo_images(examples, model, tmp_path):
    demo, _ = examples
    truth = demo.write_images(tmp_path)
    files = sorted(truth)
    predicted = [p[0].label for p in model.classify([tmp_path / name for name in files], top_k=1)]
    wrong = [(name, label) for name, label in zip(files, predicted) if label != str(truth[name])]
    assert len(files) == 10 and len(wrong) <= 1, wrong


def test_test_split_accuracy_is_at_least_97_percent(examples, model):
    pytest.importorskip("sklearn")
    _, train_digits = examples
    _, x_test, _, y_test = train_digits.load_split()
    assert len(x_test) == 360
    assert train_digits.accuracy(model, x_test, y_test) >= 0.97


def test_the_demo_scans_come_from_the_test_split(examples):
    pytest.importorskip("sklearn")
    demo, train_digits = examples
    _, x_test, _, y_test = train_digits.load_split()
    for digit in demo.SCANS:
        first = next(i for i, y in enumerate(y_test) if y == digit)
        assert (demo.scan(digit) == x_test[first]).all(), digit


@pytest.mark.slow
def test_make_demo_runs_offline_and_prints_meaningful_labels(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, str(EXAMPLES / "demo.py")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()  # the table: a header, then path, then label and score per prediction
    header = next(line for line in lines if line.startswith("path"))
    assert header.split() == ["path", "top-1", "score", "top-2", "score", "top-3", "score"]
    rows = {line.split()[0].rsplit("/", 1)[-1]: line.split()[1:] for line in lines
            if line.startswith("demo-out/digits/")}
    assert rows["broken.jpg"][0] == "ERROR:"
    top1 = {name: cells[0] for name, cells in rows.items() if name != "broken.jpg"}
    assert len(top1) == 10
    assert sum(label == name.split("_")[1][0] for name, label in top1.items()) >= 9, top1
    assert "max abs logit difference after the round trip: 0.0e+00" in done.stdout
