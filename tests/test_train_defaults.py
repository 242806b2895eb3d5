"""Fine-tuning settings that resolve from the recipe and the data (vitkit.train.defaults), and the run's
guard rails: what the user sets always wins; the learning rate scales with the batch; small folders get at
least MIN_STEPS optimizer steps and light augmentation, large ones TrivialAugment; a short schedule is
warned about; an existing --out is refused unless --resume / --overwrite; one class, images beside the class
folders and a class without training images are clear errors.

Run:  .venv/bin/python -m pytest tests/test_train_defaults.py -q
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitkit.checkpoints.save import save_vitkit
from vitkit.cli import main as cli
from vitkit.config import HALF, PreprocessSpec, ViTConfig
from vitkit.models.vit import VisionTransformer
from vitkit.train.config import TrainConfig
from vitkit.train.defaults import AUGMENT_LIGHT_BELOW, BASE_LR, MIN_STEPS, resolve


def cfg(**fields) -> TrainConfig:
    return TrainConfig(**({"data": "d", "out": "o", "model": "m"} | fields))


def test_small_folder_defaults():
    r = resolve(cfg(), train_images=240)
    c = r.cfg
    assert c.batch_size == 32 and c.lr == pytest.approx(BASE_LR["full"] * 32 / 256)
    steps_per_epoch = 240 // 32
    assert c.epochs * steps_per_epoch >= MIN_STEPS > (c.epochs - 1) * steps_per_epoch
    assert c.warmup_steps == int(np.ceil(0.1 * c.epochs * steps_per_epoch))
    assert (c.layer_decay, c.augment, c.crop_scale) == (0.75, "light", 0.7)
    assert f"lr {c.lr:.3g} (batch 32)" in r.line and "head from a linear probe" in r.line and not r.warnings


def test_large_folder_and_recipes():
    c = resolve(cfg(), train_images=AUGMENT_LIGHT_BELOW * 4).cfg
    assert (c.epochs, c.augment, c.crop_scale) == (10, "trivial", 0.08)
    frozen = resolve(cfg(recipe="freeze", batch_size=64), train_images=1000).cfg
    assert frozen.lr == pytest.approx(BASE_LR["freeze"] * 64 / 256) and frozen.layer_decay == 1.0
    probe = resolve(cfg(recipe="linear-probe"), train_images=1000)
    assert probe.cfg.epochs == 0 and "linear probe" in probe.line
    assert resolve(cfg(model=None), 1000).cfg.head_init == "random"  # from scratch: nothing to probe


def test_what_the_user_sets_wins_and_short_schedules_are_warned_about():
    given = dict(epochs=2, batch_size=8, lr=1e-2, warmup_steps=0, layer_decay=0.5, augment="rand", crop_scale=0.3)
    r = resolve(cfg(**given), train_images=64)
    assert {k: getattr(r.cfg, k) for k in given} == given
    assert any("too short" in w for w in r.warnings)
    tiny = resolve(cfg(), train_images=12)  # fewer images than a batch: the batch shrinks
    assert tiny.cfg.batch_size == 12
    assert any("not used" in w for w in resolve(cfg(recipe="linear-probe", epochs=3), 100).warnings)


# ----------------------------------------------------------------------------- guard rails, end to end
SPEC = PreprocessSpec(input_size=32, crop_pct=1.0, resize_mode="exact", interpolation="bilinear", mean=HALF, std=HALF)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    net = VisionTransformer(ViTConfig(image_size=32, patch_size=8, width=32, depth=2, heads=2, mlp_dim=64))
    return save_vitkit(net, SPEC, tmp_path_factory.mktemp("base") / "tiny.safetensors")


def folder(root: Path, classes: dict[str, int]) -> Path:
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(np.full((32, 32, 3), 40 * i % 255, np.uint8)).save(root / name / f"{i}.png")
    return root


def run(*args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli(["finetune", *map(str, args), "--workers", "0", "--recipe", "linear-probe"])
    return code, err.getvalue()


def test_an_existing_out_is_refused_unless_overwrite(base, tmp_path):
    data = folder(tmp_path / "data", {"a": 6, "b": 6})
    assert run(data, "--model", base, "--out", tmp_path / "out")[0] == 0
    code, err = run(data, "--model", base, "--out", tmp_path / "out")
    assert code == 2 and "already holds files" in err and "--overwrite" in err
    assert run(data, "--model", base, "--out", tmp_path / "out", "--overwrite")[0] == 0


@pytest.mark.parametrize("layout, message", [
    ({"only": 6}, "one class"),
    ("loose", "lie beside the class folders"),
    ("empty", "no images in class folder"),
])
def test_clear_dataset_errors(base, tmp_path, layout, message):
    data = tmp_path / "data"
    if isinstance(layout, dict):
        folder(data, layout)
    else:
        folder(data, {"a": 6, "b": 6})
        if layout == "loose":
            Image.new("RGB", (32, 32)).save(data / "stray.png")
        else:
            (data / "c").mkdir()
    code, err = run(data, "--model", base, "--out", tmp_path / "out")
    assert code == 2 and message in err, err
