"""Quantization-aware fine-tuning (`vitkit quantize --qat DATA`) and the fake quantisation it trains through.

The task: a tiny random ViT with three outlier channels in block 1's MLP (fc1 rows x100, fc2 columns / 100), the
case SmoothQuant cannot fold away (fc2's input is GELU's output), so the default post-training recipe loses top-1
agreement with fp32 on held-out images. Both numbers are measured here, on images used neither for tuning nor for
calibration: QAT must win back at least half of what post-training INT8 lost. The fake-quantised network must compute
what the built INT8 graph computes (same layers, bit widths, scales), and not what a graph with other bit widths or
without the float islands would.

Run:  .venv/bin/python -m pytest tests/test_qat.py -q
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from vitkit.api import Model  # noqa: E402
from vitkit.checkpoints.convert import Loaded  # noqa: E402
from vitkit.config import PreprocessSpec, ViTConfig  # noqa: E402
from vitkit.int8.build import build_int8, smoothed  # noqa: E402
from vitkit.int8.fake_quant import calibrated_ranges, fake_quantized  # noqa: E402
from vitkit.int8.onnx_int8 import read_quantization  # noqa: E402
from vitkit.int8.recipe import RECIPES  # noqa: E402
from vitkit.models.vit import VisionTransformer  # noqa: E402
from vitkit.onnx.session import Session  # noqa: E402
from vitkit.quantize.qat import QATOptions, tune  # noqa: E402

from conftest import randomise_  # noqa: E402

CONFIG = ViTConfig(image_size=32, patch_size=8, width=48, depth=3, heads=3, mlp_dim=96, num_classes=10)
SPEC = PreprocessSpec(input_size=32, crop_pct=0.875)
OUTLIERS, SCALE = [3, 17, 40], 100.0


def _outlier_net() -> VisionTransformer:
    """Random weights; block 1's fc1 makes three channels ~100x larger than the rest (fc2 undoes it in fp32)."""
    net = randomise_(VisionTransformer(CONFIG), scale=0.5, seed=0)
    with torch.no_grad():
        mlp = net.blocks[1].mlp
        mlp.fc1.weight[OUTLIERS] *= SCALE
        mlp.fc1.bias[OUTLIERS] = SCALE
        mlp.fc2.weight[:, OUTLIERS] /= SCALE
    return net


def _images(folder: Path, count: int, seed: int) -> Path:
    """Smooth random RGB images (40x40 PNG)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        small = rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
        Image.fromarray(small).resize((40, 40), Image.Resampling.BICUBIC).save(folder / f"img{i:03d}.png")
    return folder


# -- the emulation is the graph ------------------------------------------------------------------------------
def _per_image_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b).max(axis=1)


@pytest.mark.parametrize("name", ["default", "static-smooth", "static", "dynamic-plain"])
def test_fake_quant_matches_the_int8_graph(name):
    """Same layers, bit widths, per-channel / per-tensor scales, activation ranges (per image, or calibrated) and
    float islands: the fake-quantised forward equals the onnxruntime INT8 graph up to float rounding (a rare input
    that float noise puts on the other side of a rounding step moves one integer), while the INT8 error itself
    is far larger; a fake quantisation with the other weight width or without the float islands does not match."""
    net = _outlier_net()
    recipe = RECIPES[name]  # reduce_range as resolved for this CPU: the graph that is built here
    g = torch.Generator().manual_seed(1)
    calibration, pixels = torch.randn(64, 3, 32, 32, generator=g), torch.randn(64, 3, 32, 32, generator=g)
    graph = Session(build_int8(net, 32, recipe, calibration).int8)(pixels)["logits"]
    work = smoothed(net, recipe, calibration)

    def emulated(r):
        ranges = calibrated_ranges(work, r, [calibration]) if r.method == "static" else None
        with torch.no_grad(), fake_quantized(work, r, ranges):
            return work(pixels).numpy()

    with torch.no_grad():
        fp32 = work(pixels).numpy()
    same = _per_image_diff(emulated(recipe), graph)
    int8_error = _per_image_diff(graph, fp32)
    assert np.median(same) < 1e-5 and np.mean(same < 1e-4) >= 0.9, same
    assert np.median(int8_error) > 1e-2
    other_bits = recipe.replace(reduce_range=not recipe.seven_bit_weights)
    no_islands = recipe.replace(keep_float=())
    for wrong in [other_bits] + ([no_islands] if recipe.keep_float else []):
        assert np.median(_per_image_diff(emulated(wrong), graph)) > 100 * np.median(same) + 1e-3
    assert not any("parametrizations" in key for key in work.state_dict())  # plain again after the block


# -- tuning --------------------------------------------------------------------------------------------------
def test_tuning_is_deterministic_and_uses_labels(tmp_path):
    net = _outlier_net()
    data = _images(tmp_path / "tune", 12, seed=1)
    with open(data / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file", "class_index"]] + [[f"img{i:03d}.png", i % 10] for i in range(12)])
    recipe = RECIPES["default"]
    calibration = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    lines = []

    def run(seed: int, exclude=()):
        options = QATOptions(str(data), steps=4, lr=1e-3, batch_size=4, seed=seed, log_every=2)
        return tune(net, SPEC, recipe, calibration, options, CONFIG.labels, exclude=list(exclude), log=lines.append)

    (a, record), (b, _), (c, _) = run(0), run(0), run(1)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the fp32 network is untouched
    assert record["steps"] == 4 and record["lr"] == 1e-3 and record["seed"] == 0
    assert record["data"]["labels_from"] == "labels.csv" and "cross-entropy" in record["loss"]
    assert len(record["data"]["sha256"]) == 64 and record["data"]["images"] == 12
    assert any("step 4/4" in line and "ce " in line for line in lines)
    _, left = run(0, exclude=[data / "img000.png", data / "img001.png"])
    assert left["data"]["images"] == 10 and left["data"]["evaluation_images_left_out"] == 2
    assert left["data"]["sha256"] != record["data"]["sha256"]


@pytest.mark.parametrize("name", ["default", "static-smooth"])
def test_the_tuned_network_is_what_its_int8_graph_computes(tmp_path, name):
    """The tuned weights go through the ordinary INT8 build (SmoothQuant folded in already; static ranges calibrated
    again on the tuned weights), and that graph computes what the tuning trained through."""
    net, recipe = _outlier_net(), RECIPES[name]
    g = torch.Generator().manual_seed(3)
    calibration, pixels = torch.randn(32, 3, 32, 32, generator=g), torch.randn(32, 3, 32, 32, generator=g)
    options = QATOptions(str(_images(tmp_path / "tune", 8, seed=4)), steps=3, lr=1e-3, batch_size=4)
    tuned, record = tune(net, SPEC, recipe, calibration, options, CONFIG.labels)
    assert ("calibrated" in record["activation_ranges"]) == (recipe.method == "static")
    built = recipe.replace(smooth_alpha=None)
    graph = Session(build_int8(tuned, 32, built, calibration).int8)(pixels)["logits"]
    ranges = calibrated_ranges(tuned, built, [calibration]) if recipe.method == "static" else None
    with torch.no_grad(), fake_quantized(tuned, built, ranges):
        emulated = tuned(pixels).numpy()
    assert np.median(_per_image_diff(emulated, graph)) < 1e-5
    assert not any(torch.equal(v, net.state_dict()[k]) for k, v in tuned.state_dict().items()
                   if k.endswith("mlp.fc2.weight"))  # it did tune


def test_qat_wins_back_what_post_training_int8_loses(tmp_path, capsys):
    """`vitkit quantize --qat`: post-training and QAT graphs measured side by side on 200 held-out images."""
    from vitkit.cli import main

    folder = Model(Loaded(_outlier_net(), SPEC, "tiny outliers", "vitkit")).save(tmp_path / "hf", "hf")
    root = tmp_path / "images"
    _images(root / "tune", 96, seed=1)
    evaluation = _images(root / "eval", 200, seed=2)  # inside DATA: must be left out of tuning and calibration
    out, md = tmp_path / "qat-int8.onnx", tmp_path / "report.md"
    code = main(["quantize", "--model", str(folder), "--qat", str(root), "--eval", str(evaluation),
                 "--qat-steps", "200", "--qat-lr", "1e-3", "--device", "cpu", "--out", str(out),
                 "--report", str(md), "--no-speed", "--force"])
    captured = capsys.readouterr()
    assert code == 0 and out.is_file()
    meta = read_quantization(out)
    ptq, qat = meta["ptq_eval"]["top1_agreement"], meta["eval"]["top1_agreement"]
    assert meta["ptq_eval"]["images"] == meta["eval"]["images"] == 200
    assert ptq < 0.9, f"the task should break post-training INT8, agreement {ptq}"
    assert qat - ptq >= 0.5 * (1 - ptq), f"QAT {qat} won back less than half of what PTQ {ptq} lost"
    record = meta["recipe"]["qat"]
    assert record["steps"] == 200 and record["lr"] == 1e-3 and len(record["data"]["sha256"]) == 64
    assert record["data"]["images"] == 96 and record["data"]["evaluation_images_left_out"] == 200
    assert meta["recipe"]["method"] == "dynamic" and meta["recipe"]["smooth_alpha"] == 0.7
    assert "step 200/200" in captured.err  # progress on stderr
    page = md.read_text()
    assert "| measure | fp32 | PTQ INT8 | QAT INT8 |" in page
    assert f"| top-1 agreement with fp32 | 100% | {100 * ptq:.1f}% | {100 * qat:.1f}% |" in page
    print(f"\nPTQ agreement {ptq:.3f} -> QAT {qat:.3f} on 200 held-out images")
