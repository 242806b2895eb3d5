"""`torchrun --nproc-per-node 2 --standalone -m vitkit finetune ...` on the CPU (gloo) follows the same run as
one process with the same global batch: every global batch is the same set of samples (rank r takes its
slice), DDP averages the gradients, and the logged loss is the mean over ranks. So the step losses agree
to 1e-5 and the final weights too, with --grad-accum 2 under 2 ranks as well (4 samples a rank per step, in
micro-batches of 2). Only rank 0 writes: one log with one row per step.

Drop path 0 and no mixup: with them a DDP run is a valid run but draws its random masks per rank, so it is
not the single-process run's (the trainer says so). Skipped, with the reason, where torchrun cannot start
two gloo ranks here at all.

Run:  .venv/bin/python -m pytest tests/test_finetune_ddp.py -q
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

from vitkit.checkpoints.save import save_vitkit
from vitkit.cli import main as cli
from vitkit.config import HALF, PreprocessSpec, ViTConfig
from vitkit.models.vit import VisionTransformer

from conftest import torchrun

TOL = 1e-5
CLASSES = ("blue", "green", "red", "yellow")
COLOURS = ((40, 60, 200), (40, 170, 60), (200, 40, 40), (210, 200, 40))
TINY = ViTConfig(image_size=32, patch_size=8, width=32, depth=3, heads=2, mlp_dim=64, num_classes=10)
SPEC = PreprocessSpec(input_size=32, crop_pct=1.0, resize_mode="exact", interpolation="bilinear", mean=HALF, std=HALF)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """4 learnable classes x 16 PNGs of 32x32 (colour + stripes)."""
    root = tmp_path_factory.mktemp("classes")
    for label, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(16):
            rng = np.random.default_rng(1000 * label + i)
            pixels = rng.integers(-40, 40, (32, 32, 3)) + np.array(COLOURS[label])
            if label % 2:
                pixels[:, i % 4::4] += 60
            else:
                pixels[i % 4::4] += 60
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """One tiny random model on disk: every process starts from the same weights."""
    torch.manual_seed(0)
    return save_vitkit(VisionTransformer(TINY), SPEC, tmp_path_factory.mktemp("base") / "tiny.safetensors")


def args(images: Path, base: Path, out: Path, *extra) -> list[str]:
    return ["finetune", str(images), "--model", str(base), "--out", str(out), "--batch-size", "8", "--workers", "0",
            "--augment", "trivial", "--epochs", "2", "--drop-path", "0", "--lr", "3e-3", "--val-split", "0.25",
            "--device", "cpu", *map(str, extra)]


def rows(out: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]


def weight_diffs(a: dict, b: dict) -> tuple[float, float]:
    """(max |diff| over every weight, the same without the key third of each qkv bias). That third has no
    effect (softmax ignores a constant added to every key), so its exact gradient is 0 and what it gets is
    rounding noise, which AdamW scales up to lr-sized steps: gradients summed in another order (the
    all-reduce) move it elsewhere with identical outputs."""
    assert a.keys() == b.keys()
    full = functional = 0.0
    for k in a:
        diff = (a[k].double() - b[k].double()).abs()
        full = max(full, diff.max().item())
        if k.endswith("attn.qkv.bias"):
            third = len(diff) // 3
            diff = torch.cat((diff[:third], diff[2 * third:]))
        functional = max(functional, diff.max().item())
    return full, functional


@pytest.fixture(scope="module")
def single(images, base, tmp_path_factory) -> Path:
    """The reference: the same command in this one process."""
    out = tmp_path_factory.mktemp("single") / "out"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli(args(images, base, out))
    assert code == 0, err.getvalue()[-3000:]
    return out


def _compare(single: Path, ddp: Path, label: str, report) -> None:
    steps, reference = rows(ddp, "step"), rows(single, "step")
    assert [r["step"] for r in steps] == list(range(1, 13)), "rank 0 alone writes the log, one row per step"
    assert [(r["epoch"], r["lr"]) for r in steps] == [(r["epoch"], r["lr"]) for r in reference]
    loss_diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(steps, reference))
    epochs, reference_epochs = rows(ddp, "epoch"), rows(single, "epoch")
    assert len(epochs) == len(reference_epochs) == 2
    for a, b in zip(epochs, reference_epochs):
        assert a["val_top1"] == b["val_top1"] and abs(a["val_loss"] - b["val_loss"]) <= TOL
        assert abs(a["train_loss"] - b["train_loss"]) <= TOL
    full, functional = weight_diffs(weights(ddp), weights(single))
    report(f"finetune DDP: {label} vs 1 process, global batch 8: max step-loss diff {loss_diff:.1e}, "
           f"final weights {functional:.1e} (k bias, which has no effect, {full:.1e})")
    assert loss_diff <= TOL, f"step losses differ by {loss_diff:.2e}"
    assert functional <= TOL, f"final weights differ by {functional:.2e}"
    assert json.loads((ddp / "config.json").read_text())["id2label"] == {str(i): c for i, c in enumerate(CLASSES)}
    assert (ddp / "model.safetensors").is_file() and (ddp / "curves.png").stat().st_size > 0


@pytest.mark.slow
def test_two_ranks_follow_the_single_process_run(can_torchrun, images, base, single, tmp_path, report):
    out = tmp_path / "ddp"
    result = torchrun(["-m", "vitkit", *args(images, base, out)], tmp_path)
    assert result.returncode == 0, f"torchrun exited {result.returncode}:\n{result.stderr[-6000:]}"
    _compare(single, out, "2 ranks x 4", report)


@pytest.mark.slow
def test_two_ranks_with_gradient_accumulation(can_torchrun, images, base, single, tmp_path, report):
    out = tmp_path / "ddp-accum"
    result = torchrun(["-m", "vitkit", *args(images, base, out, "--grad-accum", "2")], tmp_path)
    assert result.returncode == 0, f"torchrun exited {result.returncode}:\n{result.stderr[-6000:]}"
    assert json.loads((out / "train_config.json").read_text())["grad_accum"] == 2
    _compare(single, out, "2 ranks x 2 micro-batches of 2", report)
