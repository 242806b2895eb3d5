"""`vitkit finetune` / `Trainer` end to end on a tiny labelled folder (4 colour-and-stripe classes x 16
images of 32x32) and a tiny ViT (depth 3, width 32, patch 8), plus the real DeiT-Ti on real photos:

- every recipe option does what it says: linear-probe changes the head only, freeze N leaves the
  embedding and blocks 0..N-1 bit-identical, full changes every tensor; --layer-decay scales each group's
  rate along the logged schedule; --amp bf16 runs on the CPU (a close, not identical, curve) and --amp fp16
  is refused there; --grad-checkpointing (with drop path) and --grad-accum 2 give the same loss curve and
  weights as without; --ema saves the average's weights; --mixup/--cutmix, --augment none/rand/trivial,
  --drop-path change what is trained on; --label-smoothing gives the first step's loss computed by hand;
  --clip-grad clips every step (0: never); --patience stops early and logs why; --val-split, a
  train/ val/ folder and a CSV manifest give the expected splits;
- the output folder: transformers config with id2label = the class names, weights, preprocessor config,
  log.jsonl (step and epoch rows), curves.png, train_config.json, checkpoints/last.pt; `vitkit eval --json`
  (top1, top5, per_class) agrees with the logged validation top-1, and `--out` writes report.json and
  confusion.png;
- exact resume: a run SIGKILLed mid-epoch (after >= 3 logged steps) and resumed with --resume has the
  uninterrupted run's loss curve and final weights (1e-6), EMA and drop path included;
  --resume with other settings or with nothing to resume is a clear error; the same folder spelled
  differently is accepted;
- real weights (skipped without ../shared): a linear probe of DeiT-Ti on 5 dog breeds (one photo each,
  trained on crops from one half of the photo, validated on crops from the other half) beats chance (20%)
  clearly, and beats the same probe on random weights; the output folder loads in transformers with the
  same logits (<= 1e-4) and the same preprocessing (<= 1e-5).

Run:  .venv/bin/python -m pytest tests/test_finetune.py -q
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

import vitkit
from vitkit.cli import main as cli
from vitkit.config import HALF, PreprocessSpec, ViTConfig
from vitkit.models.layers import Block
from vitkit.models.vit import VisionTransformer
from vitkit.checkpoints.save import save_vitkit
from vitkit.train.config import TrainConfig
from vitkit.train.defaults import resolve
from vitkit.models.vit import layer_id
from vitkit.train.schedule import lr_at
from vitkit.train.trainer import Trainer

from conftest import SLOW_STEP, sigkill_when

CLASSES = ("blue", "green", "red", "yellow")
COLOURS = {"blue": (40, 60, 200), "green": (40, 170, 60), "red": (200, 40, 40), "yellow": (210, 200, 40)}
PER_CLASS = 16
SIDE = 32
DEPTH = 3
TINY = ViTConfig(image_size=SIDE, patch_size=8, width=32, depth=DEPTH, heads=2, mlp_dim=64, num_classes=10)
SPEC = PreprocessSpec(input_size=SIDE, crop_pct=1.0, resize_mode="exact", interpolation="bilinear", mean=HALF, std=HALF)
EXACT = 1e-6
ACCUM_TOL = 5e-6  # the same gradients summed in another order: float32 rounding (8e-7 measured here)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEIT = SHARED / "weights" / "deit-tiny-patch16-224" / "model.safetensors"
PHOTOS = SHARED / "images" / "imagenet-sample-100"
# five dog breeds: one coarse kind, so colour and background alone do not tell them apart well
DOGS = {160: "Afghan_hound", 170: "Irish_wolfhound", 190: "Sealyham_terrier", 200: "Tibetan_terrier",
        250: "Siberian_husky"}


# ----------------------------------------------------------------------------- data, model, helpers


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # training runs: full suite only


def draw(label: int, index: int) -> Image.Image:
    """A learnable image: the class's colour plus noise, stripes across (even classes) or down (odd)."""
    rng = np.random.default_rng(1000 * label + index)
    pixels = rng.integers(-40, 40, (SIDE, SIDE, 3)) + np.array(COLOURS[CLASSES[label]])
    offset = int(rng.integers(0, 4))
    if label % 2:
        pixels[:, offset::4] += 60
    else:
        pixels[offset::4] += 60
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """DATA as one subfolder per class: 4 x 16 PNGs."""
    root = tmp_path_factory.mktemp("classes")
    for label, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(PER_CLASS):
            draw(label, i).save(root / name / f"{name}_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def split_folder(images, tmp_path_factory) -> Path:
    """The same images as train/ (12 a class) and val/ (4 a class)."""
    root = tmp_path_factory.mktemp("splits")
    for name in CLASSES:
        for i, path in enumerate(sorted((images / name).iterdir())):
            target = root / ("val" if i % 4 == 3 else "train") / name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target / path.name)
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """One tiny random model on disk (vitkit safetensors: config and preprocessing inside), so that every
    run, in this process or another, starts from the same weights."""
    torch.manual_seed(0)
    return save_vitkit(VisionTransformer(TINY), SPEC, tmp_path_factory.mktemp("base") / "tiny.safetensors")


def finetune_args(data: Path, base: Path, out: Path, *extra) -> list[str]:
    return ["finetune", str(data), "--model", str(base), "--out", str(out), "--epochs", "2", "--batch-size", "8",
            "--workers", "0", "--lr", "3e-3", "--val-split", "0.25", *map(str, extra)]


def run_cli(args: list) -> tuple[int, str, str]:
    """`vitkit ARGS` in this process -> (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def finetune(data, base, out, *extra) -> Path:
    code, _, err = run_cli(finetune_args(data, base, out, *extra))
    assert code == 0, err[-3000:]
    return Path(out)


def config(data: Path, base: Path, out: Path, **changes) -> TrainConfig:
    fields = dict(data=str(data), out=str(out), model=str(base), epochs=2, batch_size=8, workers=0, lr=3e-3,
                  val_split=0.25)
    return TrainConfig(**(fields | changes))


def rows(out: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (Path(out) / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def losses(out: Path) -> np.ndarray:
    return np.array([r["loss"] for r in rows(out, "step")])


def last_weights(out: Path, key: str = "model") -> dict[str, torch.Tensor]:
    return torch.load(Path(out) / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)[key]


def saved_weights(out: Path) -> dict[str, torch.Tensor]:
    """What model.safetensors holds, read back through vitkit (transformers layout -> vitkit names)."""
    return vitkit.load(str(out)).net.state_dict()


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def functional_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """`max_diff` without the key third of each qkv bias. Adding a constant to every key leaves softmax
    unchanged, so that bias has no effect and its exact gradient is 0: what it gets is rounding noise,
    which AdamW scales up to lr-sized steps; a run that sums the same gradient in another order (gradient
    accumulation, DDP) then moves it elsewhere (3e-5 after 12 steps here), with identical outputs."""
    def strip(weights):
        out = dict(weights)
        for k, v in weights.items():
            if k.endswith("attn.qkv.bias"):
                third = len(v) // 3
                out[k] = torch.cat((v[:third], v[2 * third:]))
        return out
    return max_diff(strip(a), strip(b))


def curve_diff(a: Path, b: Path) -> float:
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) > 0
    return float(np.abs(la - lb).max())


@pytest.fixture(scope="module")
def plain(images, base, tmp_path_factory) -> Path:
    """The reference run: full recipe, trivial augment, a 25% validation split, 2 epochs of 6 steps."""
    return finetune(images, base, tmp_path_factory.mktemp("plain") / "out")


# ----------------------------------------------------------------------------- recipes


def _fit(cfg: TrainConfig) -> tuple[dict, dict, Trainer]:
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.net.state_dict().items()}
    trainer.fit()
    return before, last_weights(Path(cfg.out)), trainer


@pytest.mark.parametrize("recipe, blocks", [("linear-probe", 0), ("freeze", 1), ("freeze", 0), ("full", 0)])
def test_recipe_changes_exactly_what_it_trains(images, base, tmp_path, recipe, blocks):
    before, after, trainer = _fit(config(images, base, tmp_path / "out", recipe=recipe, freeze_blocks=blocks))
    assert after.keys() == before.keys()
    for name in before:
        layer = layer_id(name, DEPTH)
        if recipe == "linear-probe":
            trains = name.startswith("head.")
        elif recipe == "freeze":
            trains = layer > blocks
        else:
            trains = True
        same = torch.equal(before[name], after[name])
        assert same is not trains, f"{recipe} {blocks}: {name} {'unchanged' if same else 'changed'}"
    assert {n for n, p in trainer.net.named_parameters() if p.requires_grad} == \
           {n for n in before if not torch.equal(before[n], after[n])}


def test_layer_decay_scales_each_group_along_the_logged_schedule(images, base, tmp_path):
    cfg = config(images, base, tmp_path / "out", layer_decay=0.5, warmup_steps=3, min_lr=1e-5)
    trainer = Trainer(cfg)
    groups = trainer.optimizer.param_groups
    names = [n for n, p in trainer.net.named_parameters()]
    assert sum(len(g["params"]) for g in groups) == len(names)
    by_param = {id(p): n for n, p in trainer.net.named_parameters()}
    for group in groups:
        layers = {layer_id(by_param[id(p)], DEPTH) for p in group["params"]}
        assert len(layers) == 1
        assert group["lr_scale"] == pytest.approx(0.5 ** (DEPTH + 1 - layers.pop()))
    assert sorted({g["lr_scale"] for g in groups}) == pytest.approx([0.5 ** k for k in range(DEPTH + 1, -1, -1)])
    trainer.fit()
    steps = rows(cfg.out, "step")
    total, warmup = trainer.total_steps, trainer.warmup_steps
    assert (total, warmup) == (12, 3)
    for row in steps:  # the logged rate is the head's (scale 1), step by step
        assert row["lr"] == pytest.approx(lr_at(row["step"] - 1, cfg.lr, warmup, total, cfg.min_lr), rel=1e-12)
    last = lr_at(total - 1, cfg.lr, warmup, total, cfg.min_lr)
    for group in groups:
        assert group["lr"] == pytest.approx(last * group["lr_scale"], rel=1e-12)


def test_bf16_autocast_runs_on_the_cpu(images, base, plain, tmp_path, report):
    out = finetune(images, base, tmp_path / "bf16", "--amp", "bf16")
    diff = curve_diff(out, plain)
    report(f"finetune: --amp bf16 on the CPU vs float32, max step-loss diff {diff:.2e} over {len(losses(out))} steps")
    assert np.isfinite(losses(out)).all()
    assert 0 < diff < 0.1, "bf16 must change the arithmetic a little, not the run"
    assert rows(out, "epoch")[-1]["val_top1"] >= 0.5


def test_fp16_on_the_cpu_is_refused_clearly(images, base, tmp_path):
    code, _, err = run_cli(finetune_args(images, base, tmp_path / "out", "--amp", "fp16", "--device", "cpu"))
    assert code == 2
    assert "--amp fp16 needs a CUDA GPU" in err and "--amp bf16" in err, err
    assert not (tmp_path / "out").exists(), "nothing may be written before the settings are checked"


def test_grad_checkpointing_gives_the_same_run(images, base, tmp_path, monkeypatch, report):
    calls = []
    original = Block.checkpointed
    monkeypatch.setattr(Block, "checkpointed", lambda self, *args: calls.append(1) or original(self, *args))
    plain_out = tmp_path / "plain"
    Trainer(config(images, base, plain_out, drop_path=0.2)).fit()
    assert not calls
    trainer = Trainer(config(images, base, tmp_path / "ckpt", drop_path=0.2, grad_checkpointing=True))
    assert trainer.net.grad_checkpointing
    trainer.fit()
    assert len(calls) == 12 * DEPTH, "every block of every training step is checkpointed"
    curve, weights = curve_diff(tmp_path / "ckpt", plain_out), max_diff(last_weights(tmp_path / "ckpt"),
                                                                         last_weights(plain_out))
    report(f"finetune: --grad-checkpointing (drop path 0.2) vs without: loss curve {curve:.1e}, weights {weights:.1e}")
    assert curve <= EXACT and weights <= EXACT


def test_grad_accumulation_equals_one_big_batch(images, base, tmp_path, report):
    one = Trainer(config(images, base, tmp_path / "one"))
    two = Trainer(config(images, base, tmp_path / "two", grad_accum=2))
    assert (one.micro, two.micro) == (8, 4)
    one.fit()
    two.fit()
    curve = curve_diff(tmp_path / "one", tmp_path / "two")
    weights = functional_diff(last_weights(tmp_path / "one"), last_weights(tmp_path / "two"))
    k_bias = max_diff(last_weights(tmp_path / "one"), last_weights(tmp_path / "two"))
    report(f"finetune: --grad-accum 2 x 4 vs 1 x 8: loss curve {curve:.1e}, weights {weights:.1e} "
           f"(k bias, which has no effect, {k_bias:.1e})")
    assert curve <= ACCUM_TOL and weights <= EXACT
    assert [r["lr"] for r in rows(tmp_path / "one", "step")] == [r["lr"] for r in rows(tmp_path / "two", "step")]


def test_batch_size_must_divide_by_accumulation(images, base, tmp_path):
    code, _, err = run_cli(finetune_args(images, base, tmp_path / "out", "--grad-accum", "3"))
    assert code == 2 and "--batch-size 8 must divide by ranks x --grad-accum (1 x 3)" in err, err


def test_ema_weights_are_the_ones_saved(images, base, tmp_path):
    out = finetune(images, base, tmp_path / "out", "--ema", "0.9", "--val-split", "0")
    ema, raw, saved = last_weights(out, "ema"), last_weights(out, "model"), saved_weights(out)
    assert max_diff(saved, ema) == 0.0, "model.safetensors must hold the EMA weights"
    assert max_diff(saved, raw) > 1e-4, "... which are not the raw weights"
    with pytest.raises(SystemExit) as refused, contextlib.redirect_stderr(io.StringIO()) as err:
        cli([str(a) for a in finetune_args(images, base, tmp_path / "bad", "--ema", "1.5")])
    assert refused.value.code == 2 and "argument --ema: 1.5 is outside (0.0, 1.0]" in err.getvalue()


def test_mixup_and_cutmix_train_on_mixed_batches(images, base, plain, tmp_path, monkeypatch):
    from vitkit.train import trainer as trainer_module

    mixed = []
    original = trainer_module.mixup_cutmix

    def spy(pixels, targets, num_classes, mixup, cutmix, *args):
        images_out, soft = original(pixels, targets, num_classes, mixup, cutmix, *args)
        mixed.append((mixup, cutmix, soft))
        return images_out, soft

    monkeypatch.setattr(trainer_module, "mixup_cutmix", spy)
    out = finetune(images, base, tmp_path / "out", "--mixup", "0.8", "--cutmix", "1.0")
    assert len(mixed) == 12 and all(m[:2] == (0.8, 1.0) for m in mixed)
    assert any((m[2] > 0.1).sum(dim=1).gt(1).any() for m in mixed), "some targets are mixtures of two classes"
    for *_, soft in mixed:
        torch.testing.assert_close(soft.sum(dim=1), torch.ones(len(soft)))
    assert np.isfinite(losses(out)).all() and curve_diff(out, plain) > 1e-3


def test_augment_choices_reach_the_pixels(images, base, tmp_path):
    pixels, parsed = {}, {}
    for choice in ("none", "rand", "trivial"):
        trainer = Trainer(config(images, base, tmp_path / choice, augment=choice, epochs=1))
        parsed[choice] = trainer.train_set.transform.auto_augment
        trainer.train_set.set_epoch(0)
        pixels[choice] = torch.stack([trainer.train_set[i][0] for i in range(8)])
        trainer.fit()
    assert parsed == {"none": None, "rand": "rand", "trivial": "trivial"}
    for a, b in (("none", "rand"), ("none", "trivial"), ("rand", "trivial")):
        assert not torch.equal(pixels[a], pixels[b]), (a, b)
        assert abs(losses(tmp_path / a)[0] - losses(tmp_path / b)[0]) > 1e-6, (a, b)


def test_hflip_and_crop_scale_reach_the_pixels(images, base, tmp_path):
    """--hflip 0 --crop-scale 1 --augment none: training pixels are exactly the evaluation pixels."""
    from vitkit.train.augment import eval_transform

    trainer = Trainer(config(images, base, tmp_path / "out", hflip=0.0, crop_scale=1.0, augment="none"))
    assert trainer.train_set.transform.hflip == 0.0 and trainer.train_set.transform.scale == (1.0, 1.0)
    trainer.train_set.set_epoch(0)
    for index in range(0, 48, 7):
        path = trainer.train_set.items[index][0]
        assert torch.equal(trainer.train_set[index][0], eval_transform(trainer.spec)(Image.open(path)))
    default = Trainer(config(images, base, tmp_path / "default", augment="none"))
    assert default.train_set.transform.hflip == 0.5 and default.train_set.transform.scale == (1.0, 1.0)
    small = Trainer(config(images, base, tmp_path / "small"))  # augment auto, 48 images: light crops
    assert (small.cfg.augment, small.train_set.transform.scale, small.train_set.transform.auto_augment) == \
        ("light", (0.7, 1.0), None)
    code, _, err = run_cli(finetune_args(images, base, tmp_path / "cli", "--hflip", "0", "--crop-scale", "1",
                                         "--epochs", "1"))
    assert code == 0, err
    saved = json.loads((tmp_path / "cli" / "train_config.json").read_text())
    assert (saved["hflip"], saved["crop_scale"]) == (0.0, 1.0)


def test_drop_path_is_applied(images, base, plain, tmp_path):
    trainer = Trainer(config(images, base, tmp_path / "out", drop_path=0.3))
    rates = [getattr(block.drop_path, "p", 0.0) for block in trainer.net.blocks]
    assert rates == pytest.approx([0.0, 0.15, 0.3])
    trainer.fit()
    assert curve_diff(tmp_path / "out", plain) > 1e-4


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_label_smoothing_gives_the_first_loss_computed_by_hand(images, base, tmp_path, smoothing):
    trainer = Trainer(config(images, base, tmp_path / "out", label_smoothing=smoothing, augment="none", epochs=1,
                             drop_path=0.0, head_init="random"))
    trainer.train_set.set_epoch(0)
    first = trainer._batches(0)[0]
    assert len(first) == 8
    pixels = torch.stack([trainer.train_set[i][0] for i in first])
    targets = torch.tensor([trainer.train_set[i][1] for i in first])
    with torch.no_grad():
        expected = F.cross_entropy(trainer.net(pixels), targets, label_smoothing=smoothing).item()
    trainer.fit()
    assert abs(losses(tmp_path / "out")[0] - expected) <= 1e-6


def test_clip_grad_clips_every_step(images, base, tmp_path, monkeypatch):
    seen = []
    original = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        before = original(parameters, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in parameters]))
        seen.append((max_norm, before.item(), after.item(), len(parameters)))
        return before

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    finetune(images, base, tmp_path / "clipped", "--clip-grad", "0.01")
    trainable = sum(1 for _ in VisionTransformer(TINY.replace(num_classes=4)).parameters())
    assert len(seen) == 12 and all(m == 0.01 and n == trainable for m, _, _, n in seen)
    assert all(before > 0.01 for _, before, _, _ in seen), "the clip was active"
    assert all(after <= 0.01 * (1 + 1e-4) for _, _, after, _ in seen)
    seen.clear()
    finetune(images, base, tmp_path / "off", "--clip-grad", "0")
    assert seen == [], "--clip-grad 0 turns clipping off"


def test_patience_stops_early_and_says_why(images, base, tmp_path):
    out = finetune(images, base, tmp_path / "out", "--lr", "0", "--min-lr", "0", "--patience", "1", "--epochs", "5")
    epochs, stops = rows(out, "epoch"), rows(out, "stop")
    assert [r["epoch"] for r in epochs] == [0], "lr 0: the 1st epoch is no better than the probe: stop there"
    assert epochs[0]["val_top1"] == rows(out, "probe")[0]["val_top1"]
    assert len(stops) == 1 and stops[0]["reason"] == "no better val top-1 in 1 epochs"
    assert len(rows(out, "step")) == 6
    assert (out / "curves.png").stat().st_size > 0 and (out / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- data layouts


def test_val_split_takes_that_fraction_of_each_class(images, base, plain, tmp_path):
    trainer = Trainer(config(images, base, tmp_path / "a", val_split=0.25))
    assert len(trainer.val_set) == 16 and len(trainer.train_set) == 48 and trainer.steps_per_epoch == 6
    val_labels = trainer.val_set.labels
    assert [val_labels.count(c) for c in range(4)] == [4, 4, 4, 4]
    assert not {p for p, _ in trainer.val_set.items} & {p for p, _ in trainer.train_set.items}
    assert all("val_top1" in r for r in rows(plain, "epoch"))
    # --val-split 0: no validation, every image trains, and the saved model is the last one
    out = finetune(images, base, tmp_path / "none", "--val-split", "0", "--epochs", "1")
    assert [set(r) for r in rows(out, "epoch")] == [{"kind", "epoch", "step", "train_loss"}]
    assert len(rows(out, "step")) == 64 // 8
    assert max_diff(saved_weights(out), last_weights(out)) == 0.0


def test_train_val_folders(split_folder, base, tmp_path):
    trainer = Trainer(config(split_folder, base, tmp_path / "out", val_split=0.25))  # val/ wins over val_split
    assert trainer.labels == list(CLASSES)
    assert len(trainer.train_set) == 48 and len(trainer.val_set) == 16
    assert all("/val/" in p for p, _ in trainer.val_set.items)
    assert all("/train/" in p for p, _ in trainer.train_set.items)


def test_csv_manifest(images, base, tmp_path):
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.parent.mkdir()
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        for name in CLASSES:
            for i, path in enumerate(sorted((images / name).iterdir())):
                writer.writerow([os.path.relpath(path, manifest.parent), f"{name} things", "val" if i < 2 else "train"])
    out = finetune(manifest, base, tmp_path / "out", "--epochs", "1")
    labels = json.loads((out / "config.json").read_text())["id2label"]
    assert labels == {str(i): f"{name} things" for i, name in enumerate(CLASSES)}
    assert len(rows(out, "step")) == 56 // 8
    assert "val_top1" in rows(out, "epoch")[0]


# ----------------------------------------------------------------------------- the output folder, eval


def test_output_folder_and_eval(split_folder, base, tmp_path, report):
    out = finetune(split_folder, base, tmp_path / "out", "--epochs", "3")
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["id2label"] == {str(i): name for i, name in enumerate(CLASSES)}
    assert hf_config["label2id"] == {name: i for i, name in enumerate(CLASSES)}
    assert (out / "model.safetensors").stat().st_size > 0
    assert json.loads((out / "preprocessor_config.json").read_text())["image_processor_type"]
    steps, epochs = rows(out, "step"), rows(out, "epoch")
    assert [r["step"] for r in steps] == list(range(1, 19))
    assert [r["epoch"] for r in steps] == [0] * 6 + [1] * 6 + [2] * 6
    assert [r["epoch"] for r in epochs] == [0, 1, 2] and [r["step"] for r in epochs] == [6, 12, 18]
    assert all({"loss", "lr", "img_s"} <= set(r) for r in steps)
    assert all({"train_loss", "val_loss", "val_top1", "val_top5"} <= set(r) for r in epochs)
    for epoch in epochs:  # an epoch's train loss is the mean of its steps'
        mean = np.mean([r["loss"] for r in steps if r["epoch"] == epoch["epoch"]])
        assert epoch["train_loss"] == pytest.approx(mean, abs=1e-9)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / "curves.png").stat().st_size > 1000
    assert json.loads((out / "train_config.json").read_text()) == resolve(config(
        split_folder, base, out, epochs=3, checkpoint_every=0), 48).cfg.to_dict() | {"device": "auto"}
    checkpoint = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["state"]["epoch"] == 3 and checkpoint["state"]["global_step"] == 18
    assert checkpoint["labels"] == list(CLASSES)
    (probe,) = rows(out, "probe")
    best = max([probe["val_top1"]] + [r["val_top1"] for r in epochs])
    assert checkpoint["state"]["best_score"] == best

    # vitkit eval DATA --model OUT --json: the val/ split, by the saved (best) model
    code, stdout, err = run_cli(["eval", split_folder, "--model", out, "--json", "--workers", "0", "--no-progress"])
    assert code == 0, err
    result = json.loads(stdout)
    assert {"top1", "top5", "per_class", "count", "worst_classes", "most_confused"} <= set(result)
    assert result["count"] == 16 and result["top1"] == pytest.approx(best) and result["top5"] is None  # 4 classes
    assert "val/ of" in result["layout"]
    assert [row["label"] for row in result["per_class"].values()] == list(CLASSES)
    assert all(m["support"] == 4 and 0 <= m["recall"] <= 1 for m in result["per_class"].values())
    report(f"finetune: tiny ViT (depth {DEPTH}, width 32) on 4 toy classes, probe then 3 epochs: val top-1 "
           f"{best:.0%} (chance 25%); vitkit eval agrees ({result['top1']:.0%})")
    assert best >= 0.75, "the toy classes are learnable"

    # --out writes report.json and confusion.png; the plain report prints a summary
    code, stdout, err = run_cli(["eval", split_folder, "--model", out, "--out", tmp_path / "report", "--workers", "0"])
    assert code == 0, err
    assert "16 images: top-1" in stdout
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["top1"] == result["top1"] and saved["per_class"] == result["per_class"]
    assert (tmp_path / "report" / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_registry_arch_at_a_small_size(images, tmp_path):
    """--arch alone (random weights of a registry architecture) at --image-size 32; the folder reloads."""
    out = tmp_path / "out"
    code, _, err = run_cli(["finetune", images, "--arch", "vit_tiny_patch16_224", "--image-size", "32", "--out", out,
                            "--epochs", "1", "--batch-size", "16", "--workers", "0", "--augment", "none"])
    assert code == 0, err
    model = vitkit.load(str(out))
    assert model.spec.input_size == 32 and model.labels == CLASSES and model.config.width == 192
    assert max_diff(model.net.state_dict(), last_weights(out)) == 0.0, "one epoch: the saved model is the last"
    logits = model(model.preprocess([str(p) for p in sorted((images / "red").iterdir())[:2]]))
    assert logits.shape == (2, 4) and torch.isfinite(logits).all()


# ----------------------------------------------------------------------------- exact resume




def _step_rows_logged(log: Path) -> int:
    return log.read_text().count('"kind": "step"') if log.is_file() else 0


def _clean(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "img_s"}  # throughput is the one thing that may differ


@pytest.mark.parametrize("extra", [
    pytest.param(["--ema", "0.9"], id="ema"),
    pytest.param(["--drop-path", "0.1", "--ema", "0.9"], id="drop-path-ema"),
])
def test_sigkill_then_resume_equals_an_uninterrupted_run(images, base, tmp_path, report, extra):
    extra = ["--checkpoint-every", "2", *extra]
    clean = finetune(images, base, tmp_path / "clean", *extra)

    out = tmp_path / "killed"
    log = tmp_path / "killed.stderr"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-c", SLOW_STEP, *finetune_args(images, base, out, *extra)],
                                stdout=subprocess.DEVNULL, stderr=fh, env={**os.environ, "OMP_NUM_THREADS": "1"})
    sigkill_when(proc, lambda: _step_rows_logged(out / "log.jsonl") >= 3, "3 steps were logged", log)
    logged = _step_rows_logged(out / "log.jsonl")
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["state"]
    assert 3 <= logged < 12, "killed mid-run"
    assert state["global_step"] % 2 == 0 and 2 <= state["global_step"] <= logged
    assert 0 < state["step_in_epoch"] < 6 or state["global_step"] == 6

    # refusals leave the interrupted run as it is
    before = {p.name: p.read_bytes() for p in (out, out / "checkpoints") for p in p.iterdir() if p.is_file()}
    code, _, err = run_cli(finetune_args(images, base, out, *extra, "--resume", "--lr", "0.002"))
    assert code == 2 and "--resume with other settings than the interrupted run: lr" in err, err
    code, _, err = run_cli(finetune_args(images, base, out, *extra, "--resume", "--epochs", "3", "--seed", "1"))
    assert code == 2 and "other settings than the interrupted run: epochs, seed" in err, err
    after = {p.name: p.read_bytes() for p in (out, out / "checkpoints") for p in p.iterdir() if p.is_file()}
    assert after == before

    finetune(images, base, out, *extra, "--resume")  # the same settings (and a changed --workers would do)
    steps, reference = rows(out, "step"), rows(clean, "step")
    assert [r["step"] for r in steps] == list(range(1, 13)), "the log reads as one run"
    assert [_clean(r) | {"loss": 0} for r in steps] == [_clean(r) | {"loss": 0} for r in reference]
    curve = curve_diff(out, clean)
    epochs = [_clean(r) for r in rows(out, "epoch")]
    assert len(epochs) == 2 and all(
        a[k] == pytest.approx(b[k], abs=EXACT) for a, b in zip(epochs, rows(clean, "epoch")) for k in a)
    weights = max(max_diff(last_weights(out, key), last_weights(clean, key)) for key in ("model", "ema"))
    saved = max_diff(saved_weights(out), saved_weights(clean))
    report(f"finetune: {' '.join(extra)}: SIGKILL after {logged} logged steps (checkpoint at step "
           f"{state['global_step']}), resumed: "
           f"loss curve {curve:.1e}, weights (raw and EMA) {weights:.1e}, saved model {saved:.1e} vs uninterrupted")
    assert curve <= EXACT and weights <= EXACT and saved <= EXACT


def test_resume_with_nothing_to_resume_is_a_clear_error(images, base, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli(finetune_args(images, base, out, "--resume"))
    assert code == 2
    assert "nothing to resume" in err and str(out / "checkpoints" / "last.pt") in err and "without --resume" in err
    assert not out.exists()


def test_resume_after_the_last_epoch_changes_nothing(images, base, tmp_path):
    out = finetune(images, base, tmp_path / "out", "--epochs", "1")
    before, lines = last_weights(out), (out / "log.jsonl").read_text()
    finetune(images, base, out, "--epochs", "1", "--resume")
    assert max_diff(last_weights(out), before) == 0.0
    assert (out / "log.jsonl").read_text() == lines


def test_resume_accepts_the_same_folder_spelled_differently(images, base, tmp_path, monkeypatch):
    finetune(images, base, tmp_path / "out", "--epochs", "1")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(finetune_args(images, base, Path("out"), "--epochs", "1", "--resume"))
    assert code == 0, err


# ----------------------------------------------------------------------------- real weights


def _halves(image: Image.Image, count: int, left: bool, rng: random.Random) -> list[Image.Image]:
    """`count` crops (about half the width, 50-90% of the height), flipped at random, from the left half
    of the photo (x in [0, 0.55 W]) or the right half (x in [0.45 W, W]), saved at 224x224."""
    width, height = image.size
    crops = []
    for _ in range(count):
        w, h = int(width * rng.uniform(0.45, 0.55)), int(height * rng.uniform(0.5, 0.9))
        x = rng.randint(0, int(0.55 * width) - w) if left else rng.randint(int(0.45 * width), width - w)
        y = rng.randint(0, height - h)
        crop = image.crop((x, y, x + w, y + h)).resize((224, 224), Image.Resampling.BICUBIC)
        crops.append(ImageOps.mirror(crop) if rng.random() < 0.5 else crop)
    return crops


@pytest.fixture(scope="module")
def dogs(tmp_path_factory) -> Path:
    """5 classes (dog breeds), one ImageNet photo each: 10 training crops from one half of the photo and 4
    validation crops from the other half, so validation never sees the training pixels' context."""
    for needed in (DEIT, PHOTOS / "labels.csv"):
        if not needed.is_file():
            pytest.skip(f"{needed} not found (../shared is absent in a fresh clone)")
    with open(PHOTOS / "labels.csv", newline="") as fh:
        files = {int(r["class_index"]): r["file"] for r in csv.DictReader(fh)}
    root = tmp_path_factory.mktemp("dogs")
    for index, name in DOGS.items():
        photo = Image.open(PHOTOS / files[index]).convert("RGB")
        rng = random.Random(index)
        left = rng.random() < 0.5
        for split, count, side in (("train", 10, left), ("val", 4, not left)):
            (root / split / name).mkdir(parents=True)
            for i, crop in enumerate(_halves(photo, count, side, rng)):
                crop.save(root / split / name / f"{i:02d}.jpg", quality=92)
    return root


def _probe(data: Path, out: Path, model: str | None) -> dict:
    """The log row of a linear probe (solved; no epochs)."""
    args = ["finetune", data, "--arch", "deit_tiny_patch16_224", "--recipe", "linear-probe", "--out", out,
            "--workers", "0"]
    code, _, err = run_cli(args + (["--model", model] if model else []))
    assert code == 0, err[-3000:]
    assert rows(out, "epoch") == [] and rows(out, "step") == []
    (probe,) = rows(out, "probe")
    return probe


@pytest.mark.slow
def test_linear_probe_of_real_deit_tiny_beats_chance_and_reloads_in_transformers(dogs, tmp_path, report):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "probe"
    best = _probe(dogs, out, str(DEIT))
    control = _probe(dogs, tmp_path / "random", None)  # the same probe on random weights
    chance = 1 / len(DOGS)
    report(f"finetune: linear probe of DeiT-Ti on 5 dog breeds (train/val on opposite photo halves, 20 val crops): "
           f"val top-1 {best['val_top1']:.0%} (val loss {best['val_loss']:.3f}); the same probe on random weights "
           f"{control['val_top1']:.0%} (loss {control['val_loss']:.3f}); chance {chance:.0%}")
    assert best["val_top1"] >= 0.8 >= chance + 0.5, "a real backbone must beat chance clearly"
    assert best["val_top1"] > control["val_top1"] and best["val_loss"] < control["val_loss"]

    # only the head trained
    pretrained = vitkit.load(str(DEIT), arch="deit_tiny_patch16_224").net.state_dict()
    probed = saved_weights(out)
    assert max_diff({k: v for k, v in probed.items() if not k.startswith("head.")},
                    {k: v for k, v in pretrained.items() if not k.startswith("head.")}) == 0.0

    # the folder in transformers: same config, same logits, same preprocessing
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["model_type"] == "vit" and hf_config["architectures"] == ["ViTForImageClassification"]
    assert hf_config["id2label"] == {str(i): name for i, name in enumerate(sorted(DOGS.values()))}
    hf = transformers.ViTForImageClassification.from_pretrained(out).eval()
    mine = vitkit.load(str(out))
    val = sorted(str(p) for p in (dogs / "val").rglob("*.jpg"))
    pixels = mine.preprocess(val)
    with torch.no_grad():
        theirs = hf(pixel_values=pixels).logits
    logit_diff = (theirs - mine(pixels)).abs().max().item()
    processor = transformers.AutoImageProcessor.from_pretrained(out)
    with open(PHOTOS / "labels.csv", newline="") as fh:
        files = {int(r["class_index"]): r["file"] for r in csv.DictReader(fh)}
    # the five photos (none of them has a half-pixel crop offset: on those, e.g. 10 of the 100 photos, timm's
    # centre crop rounds half to even and transformers' floors, one pixel apart; see test_parity_hf.py)
    photos = [PHOTOS / files[i] for i in DOGS] + [Path(p) for p in val[::5]]
    pixel_diff = max((processor(Image.open(p).convert("RGB"), return_tensors="pt").pixel_values[0]
                      - mine.preprocess(str(p))[0]).abs().max().item() for p in photos)
    report(f"finetune: probed DeiT-Ti folder in transformers: max |logit diff| {logit_diff:.1e} on {len(val)} images, "
           f"max |pixel diff| (AutoImageProcessor vs vitkit) {pixel_diff:.1e} on {len(photos)} images")
    assert theirs.argmax(1).tolist() == mine(pixels).argmax(1).tolist()
    assert logit_diff <= 1e-4 and pixel_diff <= 1e-5


def test_the_saved_model_has_a_hugging_face_model_card(plain):
    """README.md with a YAML header that huggingface_hub's ModelCard parses: library, base model, licence, the
    validation top-1 the log recorded for the saved epoch, and how to load it."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(plain / "README.md")
    assert card.data.library_name == "vitkit" and card.data.pipeline_tag == "image-classification"
    assert card.data.base_model.endswith("tiny.safetensors") and card.data.license == "other"
    best = max(r["val_top1"] for r in rows(plain, "epoch") + rows(plain, "probe") if "val_top1" in r)
    assert f"| validation top-1 | {100 * best:.2f}% |" in card.text
    assert 'vitkit.load("' in card.text and "AutoModelForImageClassification.from_pretrained" in card.text
    assert vitkit.load(str(plain)).labels == tuple(json.loads((plain / "config.json").read_text())["id2label"].values())
