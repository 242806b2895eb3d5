"""vitkit.quantize: INT8 / fp16 ONNX models, the accuracy gate, the report.

Tiny random models (milliseconds) check the machinery: SmoothQuant folding keeps outputs, every layer is found in the
graph, the fused-attention graph matches PyTorch, only weight GEMMs become integer (LayerNorm, softmax, GELU stay
float), the gate refuses a model that loses accuracy unless forced, and the report has its fields. On the real
DeiT-Tiny (when ../shared is here) the default recipe must agree with fp32 on >= 97% of the 100 photos.

Run:  .venv/bin/python -m pytest tests/test_quantize.py -q
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import vitkit  # noqa: E402
from vitkit.api import Model  # noqa: E402
from vitkit.checkpoints.convert import Loaded  # noqa: E402
from vitkit.config import PreprocessSpec, ViTConfig  # noqa: E402
from vitkit.models.vit import VisionTransformer  # noqa: E402
from vitkit.quantize import (  # noqa: E402
    RECIPES, QuantizationRefused, QuantizeError, Recipe, markdown, quantize, read_quantization,
)
from vitkit.quantize import pipeline  # noqa: E402
from vitkit.int8.build import build_int8  # noqa: E402
from vitkit.quantize.data import calibration_pixels, eval_set  # noqa: E402
from vitkit.int8.fused import can_fuse, fused_graph  # noqa: E402
from vitkit.int8.onnx_int8 import fp32_graph, site_nodes  # noqa: E402
from vitkit.int8.recipe import quantized_sites, sites  # noqa: E402
from vitkit.onnx.session import Session  # noqa: E402
from vitkit.int8.smooth import activation_absmax, smooth, smoothing_scales  # noqa: E402

from conftest import SHARED, randomise_  # noqa: E402

WEIGHTS = SHARED / "weights" / "deit-tiny-patch16-224" / "model.safetensors"
PHOTOS = SHARED / "images" / "imagenet-sample-100"
TINY = dict(image_size=32, patch_size=8, width=48, depth=3, heads=3, mlp_dim=96, num_classes=10)
BEIT = dict(family="beit", abs_pos_embed=False, rel_pos_bias="layer", qkv_bias="qv", layer_scale_init=0.1,
            pool="mean", fc_norm=True)
CONFIGS = {"vit": ViTConfig(**TINY), "deit_distilled": ViTConfig(**TINY, dist_token=True, family="deit"),
           "beit": ViTConfig(**TINY, **BEIT)}
SPEC = PreprocessSpec(input_size=32, crop_pct=0.875)
INTEGER_OPS = {"DynamicQuantizeMatMul", "MatMulInteger", "QAttention", "ConvInteger", "DynamicQuantizeLinear",
               "QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "QLinearSoftmax", "QGemm"}


def _net(name: str = "vit", seed: int = 0) -> VisionTransformer:
    return randomise_(VisionTransformer(CONFIGS[name]), scale=0.5, seed=seed)


def _model(name: str = "vit") -> Model:
    return Model(Loaded(_net(name), SPEC, f"tiny {name}", "vitkit"))


def _images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """Smooth random RGB images (40x40 PNG): low-frequency noise, so crops and resizes keep some structure."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, size=(5, 5, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((40, 40), Image.Resampling.BICUBIC)
        path = folder / f"img{i:03d}.png"
        image.save(path)
        paths.append(path)
    return paths


def _labelled(folder: Path, model: Model, count: int = 12, seed: int = 1) -> Path:
    """An evaluation folder whose labels.csv says each image's class is the fp32 model's own top-1 (accuracy 100%)."""
    paths = _images(folder, count, seed)
    with torch.inference_mode():
        top = model(model.preprocess([str(p) for p in paths])).argmax(-1).tolist()
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "class_index"])
        writer.writerows([p.name, t] for p, t in zip(paths, top))
    return folder


def _op_types(data: bytes) -> list[str]:
    return [n.op_type for n in onnx.load_from_string(data).graph.node]


# -- pieces ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_smooth_keeps_outputs(name):
    net = _net(name)
    x = torch.randn(6, 3, 32, 32)
    with torch.inference_mode():
        absmax = activation_absmax(net, [x])
        assert set(absmax) >= {f"blocks.{i}.{s}" for i in range(3) for s in ("attn.qkv", "attn.proj", "mlp.fc1")}
        scales = smoothing_scales(net, absmax, 0.7)
        smoothed = smooth(net, scales)
        before, after = net(x), smoothed(x)
    assert float((before - after).abs().max()) < 1e-4
    assert not torch.equal(net.blocks[0].norm1.weight, smoothed.blocks[0].norm1.weight)  # it did fold something
    assert torch.equal(net.blocks[0].norm1.weight, _net(name).blocks[0].norm1.weight)  # the original is untouched


@pytest.mark.parametrize("fused", [False, True])
def test_every_layer_is_found_in_the_graph(fused):
    net = _net("deit_distilled")
    data = fused_graph(net, 32, dynamic_batch=True) if fused else fp32_graph(net, 32, dynamic_batch=True)
    found = site_nodes(onnx.load_from_string(data), net)
    assert list(found) == list(sites(net)) and len(set(found.values())) == len(found)
    ops = {n.name: n.op_type for n in onnx.load_from_string(data).graph.node}
    assert ops[found["blocks.0.attn.qkv"]] == ("Attention" if fused else "MatMul")
    assert ops[found["patch_embed.proj"]] == "Conv"


def test_fused_graph_matches_and_beit_is_not_fused():
    net = _net("vit")
    data = fused_graph(net, 48, dynamic_batch=True)  # also at another size: positions resampled outside the graph
    assert _op_types(data).count("Attention") == 3
    from vitkit.onnx.graph import network_at_size

    x = torch.randn(2, 3, 48, 48)
    with torch.inference_mode():
        want = network_at_size(net, 48)(x).numpy()
    got = Session(data)(x)["logits"]
    assert np.abs(got - want).max() < 1e-4
    assert not can_fuse(_net("beit"))


def test_recipe_rules():
    assert Recipe("static").fused_attention is False  # QDQ cannot quantize the fused op
    with pytest.raises(ValueError, match="fc2"):
        Recipe(smooth_sites=("fc2",))
    with pytest.raises(ValueError, match="method"):
        Recipe("weird")
    net = _net("vit")
    chosen = quantized_sites(net, Recipe())
    assert "patch_embed.proj" not in chosen and not any(s.startswith("blocks.0.") for s in chosen)
    assert "blocks.1.mlp.fc2" in chosen and "head" in chosen
    assert len(quantized_sites(net, RECIPES["dynamic-plain"])) == len(sites(net))


@pytest.mark.parametrize("recipe_name", ["default", "dynamic-plain", "static-smooth"])
@pytest.mark.parametrize("name", ["vit", "beit"])
def test_only_weight_gemms_become_integer(name, recipe_name):
    net = _net(name)
    recipe = RECIPES[recipe_name]
    calib = torch.randn(16, 3, 32, 32)
    built = build_int8(net, 32, recipe, calib)
    graph = onnx.load_from_string(built.int8).graph
    ops = [n.op_type for n in graph.node]
    assert built.fused_attention == (recipe.fused_attention and name != "beit")
    assert "QLinearSoftmax" not in ops and ("Softmax" in ops or built.fused_attention)  # softmax in float
    assert "LayerNormalization" in ops and "Erf" in ops  # LayerNorm and exact GELU in float
    if recipe.method == "dynamic":  # weights int8, activations quantized inside these ops at run time
        integer = [op for op in ops if op in {"MatMulInteger", "QAttention", "ConvInteger"}]
        assert len(integer) == len(built.quantized)
    else:  # QDQ: each quantized GEMM reads its weight and its input through DequantizeLinear; its output is float
        dq_outputs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        gemms = [n for n in graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and n.input[1] in dq_outputs]
        assert len(gemms) == len(built.quantized) and all(n.input[0] in dq_outputs for n in gemms)
        float_ops = [n for n in graph.node if n.op_type in ("Softmax", "LayerNormalization", "Erf")]
        assert float_ops and not any(i in dq_outputs for n in float_ops for i in n.input)  # their inputs: float
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        want = net(x).numpy()
    got = Session(built.int8)(x)["logits"]
    assert got.shape == want.shape and np.isfinite(got).all()
    assert np.abs(got - want).max() < 0.25 * max(1.0, np.abs(want).max())  # INT8 noise, not a broken graph


# -- data -----------------------------------------------------------------------------------------------------
def test_eval_set_formats(tmp_path):
    labels = ("cat", "dog", "fox")
    flat = tmp_path / "flat"
    paths = _images(flat, 3)
    (flat / "labels.csv").write_text("file,label\n" + "\n".join(f"{p.name},{n}" for p, n in zip(paths, labels)))
    ev = eval_set(flat, labels)
    assert ev.targets == [0, 1, 2] and ev.labels_from == "labels.csv"
    (flat / "labels.csv").write_text("file,class_index\n" + "\n".join(f"{p.name},{i}" for i, p in enumerate(paths)))
    assert eval_set(flat, labels).targets == [0, 1, 2]
    (flat / "labels.csv").write_text("file,class_index\nimg000.png,7\n")
    with pytest.raises(ValueError, match="outside"):
        eval_set(flat, labels)
    nested = tmp_path / "nested"
    for name in ("dog", "fox"):
        _images(nested / name, 2)
    ev = eval_set(nested, labels)
    assert sorted(set(ev.targets)) == [1, 2] and ev.labels_from == "sub-folders"
    bare = tmp_path / "bare"
    _images(bare, 2)
    assert eval_set(bare, labels).targets is None


def test_calibration_views(tmp_path):
    paths = _images(tmp_path / "cal", 3)
    pixels, used = calibration_pixels([str(tmp_path / "cal")], SPEC, views=4)
    assert pixels.shape == (12, 3, 32, 32) and len(used) == 3
    again, _ = calibration_pixels([str(tmp_path / "cal")], SPEC, views=4)
    assert torch.equal(pixels, again)  # seeded
    assert torch.equal(pixels[1], pixels[0].flip(-1))  # the mirror of the centre crop
    left, _ = calibration_pixels([str(tmp_path / "cal")], SPEC, views=2, exclude={str(paths[0])})
    assert len(left) == 4


# -- quantize(): report, file, gate -----------------------------------------------------------------------------
def test_quantize_writes_a_loadable_model_with_its_report(tmp_path):
    model = _model("vit")
    cal = tmp_path / "cal"
    _images(cal, 6, seed=5)
    ev = _labelled(tmp_path / "ev", model)
    out = tmp_path / "m-int8.onnx"
    md = tmp_path / "report.md"
    report = quantize(model, "dynamic", calib=[str(cal)], eval_folder=str(ev), out=str(out), max_drop=100.0,
                      speed=True, speed_rounds=1, quiet_wait_s=0.0, compare_transformers=False, report_md=str(md))
    assert report["written"] and out.is_file()
    for key in ("recipe", "recipe_text", "layers", "calibration", "size_mb", "eval", "speed", "gate"):
        assert report[key] is not None, key
    ev_r = report["eval"]
    assert ev_r["images"] == 12 and 0.0 <= ev_r["top1_agreement"] <= 1.0
    assert ev_r["accuracy"]["fp32"] == 1.0 and "drop_points" in ev_r["accuracy"]
    assert 0.5 < ev_r["embedding_cosine"]["mean"] <= 1.0 + 1e-6
    assert report["calibration"]["evaluation_images_left_out"] == 0 and report["calibration"]["inputs"] == 24
    assert report["size_mb"]["quantized"] < report["size_mb"]["fp32"]
    assert set(report["speed"]["img_s"]) == {"onnxruntime fp32", "onnxruntime dynamic"}
    assert report["speed"]["vs_fp32_onnxruntime"] > 0
    assert report["gate"]["passed"] and report["gate"]["measure"] == "accuracy"
    assert "top-1 agreement" in md.read_text() and "Gate" in markdown(report)
    loaded = vitkit.load(str(out))  # graph, preprocessing and labels from the file
    assert loaded.net.runtime.dtype == "int8" and loaded.spec == SPEC and loaded.labels == model.labels
    assert loaded(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    meta = read_quantization(out)
    assert meta["recipe"]["method"] == "dynamic" and meta["eval"]["images"] == 12
    from huggingface_hub import ModelCard  # the model card beside the file, in the hub's layout

    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "vitkit" and report["model_card"] == str(tmp_path / "README.md")
    assert f"| top-1 agreement with fp32 | {100 * ev_r['top1_agreement']:.2f}% |" in card.text
    assert f'vitkit.load("{out.name}")' in card.text


def test_a_readme_vitkit_did_not_write_is_left_alone(tmp_path):
    model = _model("vit")
    ev = _labelled(tmp_path / "ev", model)
    (tmp_path / "README.md").write_text("# my project\n")
    report = quantize(model, "dynamic", eval_folder=str(ev), out=str(tmp_path / "m.onnx"), speed=False,
                      max_drop=100.0)
    assert report["written"] and report["model_card"] is None
    assert (tmp_path / "README.md").read_text() == "# my project\n"


def test_gate_refuses_a_drop_and_force_overrides(tmp_path, monkeypatch):
    model = _model("vit")
    ev = _labelled(tmp_path / "ev", model)
    real = pipeline.compare

    def worse(*args, **kwargs):  # the measured result, with 5 points less accuracy for the quantized model
        result = real(*args, **kwargs)
        acc = result["accuracy"]
        result["accuracy"] = {**acc, "quantized": acc["fp32"] - 0.05, "drop_points": 5.0}
        return result

    monkeypatch.setattr(pipeline, "compare", worse)
    out = tmp_path / "m.onnx"
    with pytest.raises(QuantizationRefused, match="drop by 5.0 points") as refused:
        quantize(model, "dynamic", eval_folder=str(ev), out=str(out), speed=False)
    assert not out.exists()
    assert refused.value.report["gate"]["passed"] is False and refused.value.report["written"] is False
    report = quantize(model, "dynamic", eval_folder=str(ev), out=str(out), speed=False, max_drop=6.0)
    assert report["written"] and report["gate"]["passed"]
    out.unlink()
    report = quantize(model, "dynamic", eval_folder=str(ev), out=str(out), speed=False, force=True)
    assert report["written"] and out.is_file() and report["gate"] == {**report["gate"], "passed": False,
                                                                       "forced": True}
    assert any("SmoothQuant was skipped" in n for n in report["notes"])  # no --calib


def test_refusals(tmp_path):
    model = _model("vit")
    out = tmp_path / "m.onnx"
    with pytest.raises(QuantizationRefused, match="no evaluation images"):
        quantize(model, "dynamic", out=str(out), speed=False)
    assert not out.exists()
    assert quantize(model, "dynamic", out=str(out), speed=False, force=True)["written"]
    with pytest.raises(QuantizeError, match="calibration"):
        quantize(model, "static", out=None, speed=False, force=True)
    with pytest.raises(QuantizeError, match="onnxruntime"):
        quantize(model, "dynamic", backend="torch", speed=False)
    with pytest.raises(ValueError, match="method"):
        quantize(model, "int4", speed=False)


def test_evaluation_images_never_calibrate(tmp_path):
    """--calib pointing at a folder that also holds the evaluation images: those are left out of calibration."""
    model = _model("vit")
    ev = _labelled(tmp_path / "both" / "ev", model)
    _images(tmp_path / "both" / "cal", 3, seed=7)
    report = quantize(model, "dynamic", calib=[str(tmp_path / "both")], eval_folder=str(ev), out=None, speed=False,
                      max_drop=100.0, calib_views=2)
    assert report["calibration"]["images"] == 3 and report["calibration"]["evaluation_images_left_out"] == 12
    assert report["calibration"]["inputs"] == 6 and "12 evaluation images found there" in markdown(report)
    with pytest.raises(ValueError, match="no calibration images"):
        quantize(model, "dynamic", calib=[str(ev)], eval_folder=str(ev), speed=False)


def test_cli(tmp_path, capsys):
    from vitkit.cli import main

    source = _model("deit_distilled")
    folder = source.save(tmp_path / "hf", "hf")
    cal = tmp_path / "cal"
    _images(cal, 4, seed=3)
    ev = _labelled(tmp_path / "ev", vitkit.load(str(folder)))
    out, md = tmp_path / "q.onnx", tmp_path / "q.md"
    code = main(["quantize", "--model", str(folder), "--calib", str(cal), "--eval", str(ev), "--out", str(out),
                 "--report", str(md), "--no-speed", "--max-drop", "100", "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and out.is_file() and printed["written"] and printed["calibration"]["images"] == 4
    assert md.read_text() == markdown(printed)
    assert vitkit.load(str(out)).labels == source.labels
    refused = tmp_path / "refused.onnx"
    assert main(["quantize", "--model", str(folder), "--out", str(refused), "--no-speed"]) == 3
    captured = capsys.readouterr()
    assert not refused.exists() and "no evaluation images" in captured.err and "REFUSED" in captured.out
    assert main(["quantize", "--model", str(folder), "--recipe", "nonsense", "--no-speed"]) == 2
    assert "unknown recipe" in capsys.readouterr().err


def test_unlabelled_eval_gates_on_disagreement(tmp_path):
    model = _model("vit")
    folder = tmp_path / "ev"
    _images(folder, 6)
    report = quantize(model, "dynamic", eval_folder=str(folder), out=None, speed=False, max_drop=100.0)
    assert report["eval"]["labels_from"] == "none" and "accuracy" not in report["eval"]
    assert report["gate"]["measure"].startswith("top-1 disagreement")
    assert report["gate"]["drop_points"] == round(100 * (1 - report["eval"]["top1_agreement"]), 2)


def test_fp16(tmp_path):
    model = _model("deit_distilled")
    ev = _labelled(tmp_path / "ev", model)
    report = quantize(model, "fp16", eval_folder=str(ev), out=str(tmp_path / "m16.onnx"), speed=False)
    assert report["written"] and report["size_mb"]["ratio"] < 0.7
    assert report["eval"]["top1_agreement"] >= 0.9


# -- the real DeiT-Tiny -----------------------------------------------------------------------------------------
@pytest.mark.skipif(not (WEIGHTS.is_file() and (PHOTOS / "labels.csv").is_file()),
                    reason="../shared/weights/deit-tiny-patch16-224 or its photos are not here")
@pytest.mark.slow
def test_real_deit_tiny_default_recipe(tmp_path, report):
    """Two folds (even and odd rows of labels.csv): each model is calibrated on one fold and gated on the other, so
    all 100 answers are out of sample; the acceptance target (>= 97% top-1 agreement with fp32) is on the pooled 100."""
    model = vitkit.load(str(WEIGHTS), arch="deit_tiny_patch16_224")
    with open(PHOTOS / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    agree, correct, images, flips, sizes = 0.0, {"fp32": 0.0, "quantized": 0.0}, 0, [], None
    for k, (evaluated, calibrated) in enumerate(((rows[0::2], rows[1::2]), (rows[1::2], rows[0::2]))):
        folder = tmp_path / f"fold{k}"
        folder.mkdir()
        with open(folder / "labels.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({**r, "file": str(PHOTOS / r["file"])} for r in evaluated)
        out = tmp_path / f"deit-int8-{k}.onnx"
        got = quantize(model, "dynamic", calib=[str(PHOTOS / r["file"]) for r in calibrated],
                       eval_folder=str(folder), out=str(out), speed=False)
        assert got["written"] and got["gate"]["passed"] and got["calibration"]["images"] == 50
        assert got["calibration"]["evaluation_images_left_out"] == 0
        ev = got["eval"]
        images += ev["images"]
        agree += ev["top1_agreement"] * ev["images"]
        for key in correct:
            correct[key] += ev["accuracy"][key] * ev["images"]
        flips += ev["flips"]
        sizes = got["size_mb"]
        assert ev["embedding_cosine"]["mean"] > 0.99
    agreement = agree / images
    accuracy = {key: value / images for key, value in correct.items()}
    report(f"quantize: real DeiT-Tiny, default INT8 recipe, out of sample (2 folds of 50 photos, each calibrated on "
           f"the other): top-1 agreement with fp32 {agreement:.0%} of {images}; accuracy {accuracy['fp32']:.0%} -> "
           f"{accuracy['quantized']:.0%}; {sizes['quantized']} MB vs {sizes['fp32']} MB")
    assert images == 100 and agreement >= 0.97
    assert accuracy["fp32"] - accuracy["quantized"] <= 0.01
    margins = [f["fp32_margin"] for f in flips]
    assert all(m < 0.1 for m in margins), f"a top-1 change where fp32 was not near a tie: {flips}"


@pytest.mark.parametrize("seven_bit", [True, False])
def test_weights_are_seven_bit_exactly_when_the_recipe_says(seven_bit):
    """reduce_range reaches onnxruntime: every int8 weight of the graph lies in [-64, 64] with 7-bit weights (CPUs
    without VNNI / AMX-INT8, where u8 x s8 sums can saturate), and uses the full range otherwise; the default
    follows the CPU building the graph and is recorded resolved."""
    import onnx
    from onnx import numpy_helper

    from vitkit.cpu import has_int8_dot
    from vitkit.int8.build import build_int8
    from vitkit.int8.recipe import default_recipe

    model = _model("vit")
    recipe = default_recipe("dynamic").replace(smooth_alpha=None, reduce_range=seven_bit)
    graph = onnx.load_from_string(build_int8(model.net, 32, recipe).int8)
    weights = [numpy_helper.to_array(t) for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert (largest <= 64) if seven_bit else (largest > 100), largest
    assert default_recipe("dynamic").to_dict()["reduce_range"] == (not has_int8_dot())
    assert ("7-bit weights" in recipe.describe()) == seven_bit
