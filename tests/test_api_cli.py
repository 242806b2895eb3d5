"""The Python API and the `models`, `convert` and `info` commands: every conversion keeps outputs, labels
and preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from vitkit.cli import main as cli
from vitkit.config import BEIT_FIELDS, ViTConfig, variant
from vitkit.models.registry import ARCHS, MODELS, Arch

SEEDS = ["google/vit-base-patch16-224-in21k", "google/vit-base-patch16-224",
         "timm/vit_small_patch16_224.augreg_in21k_ft_in1k", "microsoft/beit-base-patch16-224",
         "google/vit-large-patch16-384", "facebook/deit-tiny-patch16-224", "facebook/deit-small-patch16-224",
         "facebook/deit-base-patch16-224"]


def test_models_lists_the_seed_checkpoints_and_architectures(capsys):
    assert cli(["models", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert set(SEEDS) <= set(listing["models"])
    assert {"deit_tiny_patch16_224", "vit_large_patch16_384", "beit_base_patch16_224"} <= set(listing["archs"])
    for entry in listing["models"].values():
        assert entry["arch"] in ARCHS and entry["licence"]
    assert cli(["models"]) == 0
    assert "google/vit-large-patch16-384" in capsys.readouterr().out


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 255, (180, 240, 3), dtype=np.uint8))


@pytest.fixture
def tiny_beit_arch(monkeypatch):
    """A 2-block BEiT row, so that conversions are tested on every family in milliseconds."""
    cfg = variant("Ti/16", depth=2, **BEIT_FIELDS)
    monkeypatch.setitem(ARCHS, "beit_tiny_test", Arch(cfg, ARCHS["beit_base_patch16_224"].preprocess))


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "beit_tiny_test"])
@pytest.mark.parametrize("fmt", ["hf", "timm", "timm-folder", "safetensors"])
def test_convert_keeps_outputs_labels_and_preprocessing(tmp_path, photo, arch, fmt, tiny_beit_arch):
    torch.manual_seed(0)
    src = vitkit.load(arch=arch)
    with torch.no_grad():
        for p in src.net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    original = src.save(tmp_path / "src.safetensors", format="safetensors")
    out = tmp_path / ("out" if fmt in ("hf", "timm-folder") else "out.safetensors")
    fmt_args = ["--to", "timm", "--arch", arch] if fmt == "timm-folder" else ["--to", fmt]
    assert cli(["convert", str(original), *fmt_args, "--out", str(out)]) == 0
    again = vitkit.load(str(out), arch=arch if fmt == "timm" else None)
    pixels = src.preprocess(photo)
    assert torch.equal(again.preprocess(photo), pixels)
    assert (again(pixels) - src(pixels)).abs().max() < 1e-5
    assert again.labels == src.labels


def test_jax_export_and_reload(tmp_path, photo):
    src = vitkit.load(arch="vit_tiny_patch16_224")
    path = src.save(tmp_path / "vit.npz", format="jax")
    again = vitkit.load(str(path), arch="vit_tiny_patch16_224")
    pixels = src.preprocess(photo)
    assert (again(pixels) - src(pixels)).abs().max() < 1e-5


def test_jax_refuses_networks_it_cannot_hold(tmp_path, tiny_beit_arch):
    src = vitkit.load(arch="beit_tiny_test")
    with pytest.raises(ValueError, match="plain ViTs only"):
        src.save(tmp_path / "beit.npz", format="jax")


def test_info_describes_the_model(capsys, tmp_path):
    path = vitkit.load(arch="deit_tiny_patch16_224").save(tmp_path / "m.safetensors", format="safetensors")
    assert cli(["info", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["width"] == 192 and info["parameters"] == 5_717_416
    assert info["preprocess"]["crop_pct"] == 0.875


def test_classify_api_returns_sorted_probabilities(photo):
    model = vitkit.load(arch="vit_tiny_patch16_224")
    preds = model.classify(photo, top_k=4)  # one input: one Classification
    assert len(preds) == 4 and all(a.score >= b.score for a, b in zip(preds, preds[1:]))
    assert preds[0].label == model.labels[preds[0].index]
    assert 0 < sum(p.score for p in preds) <= 1.0


def test_backbone_refuses_to_classify(photo, tmp_path):
    cfg = ViTConfig(image_size=32, patch_size=8, width=48, depth=1, heads=3, mlp_dim=96, num_classes=0)
    from vitkit.checkpoints.save import save_vitkit
    from vitkit.models.vit import VisionTransformer
    from vitkit.config import PreprocessSpec

    path = save_vitkit(VisionTransformer(cfg), PreprocessSpec(input_size=32), tmp_path / "backbone.safetensors")
    model = vitkit.load(str(path))
    with pytest.raises(ValueError, match="backbone without a classifier"):
        model.classify(photo)


def test_architecture_name_as_model_explains_what_to_do():
    with pytest.raises(ValueError, match="is an architecture, not weights"):
        vitkit.load("deit_tiny_patch16_224")


def test_file_without_config_needs_an_architecture(tmp_path):
    import safetensors.torch

    net = vitkit.load(arch="vit_tiny_patch16_224").net
    safetensors.torch.save_file(net.state_dict(), tmp_path / "bare.safetensors")
    with pytest.raises(ValueError, match="pass --arch"):
        vitkit.load(str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match="192 wide with 12 blocks"):  # wrong architecture: named, with a hint
        vitkit.load(str(tmp_path / "bare.safetensors"), arch="vit_small_patch16_224")


def test_cuda_request_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="sees no CUDA GPU"):
        vitkit.load(arch="vit_tiny_patch16_224", device="cuda")


def test_registry_rows_are_consistent():
    for name, model in MODELS.items():
        assert model.arch in ARCHS, name
        assert model.layout in ("hf", "timm")


def test_bench_json_is_the_last_line_with_the_documented_keys(capsys):
    assert cli(["bench", "--arch", "vit_tiny_patch16_224", "--image-size", "64", "--warmup", "1", "--iters", "2",
                "--batch-size", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"img_s", "ms_p50", "ms_p95", "peak_rss_mb", "backend", "dtype", "batch_size"} <= set(result)
    assert result["img_s"] > 0 and result["ms_p95"] >= result["ms_p50"] and result["batch_size"] == 2
    assert result["backend"] == "eager" and result["dtype"] == "fp32"


def test_bench_end_to_end_over_a_folder(capsys, tmp_path, photo):
    for i in range(4):
        photo.save(tmp_path / f"{i}.jpg")
    assert cli(["bench", "--arch", "vit_tiny_patch16_224", "--image-size", "64", "--e2e", str(tmp_path),
                "--workers", "0", "--batch-size", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == 4 and result["img_s"] > 0


def test_runtime_flags_reach_the_model(tmp_path, photo, capsys):
    photo.save(tmp_path / "a.jpg")
    torch.manual_seed(0)
    plain = vitkit.load(arch="vit_tiny_patch16_224")
    torch.manual_seed(0)
    fast = vitkit.load(arch="vit_tiny_patch16_224", backend="eager", dtype="fp32")
    pixels = plain.preprocess(photo)
    assert fast.net.runtime.packed and (fast(pixels) - plain(pixels)).abs().max() < 1e-4
    assert cli(["bench", "--arch", "vit_tiny_patch16_224", "--dtype", "fp16", "--device", "cpu"]) == 2
    assert "fp16" in capsys.readouterr().err


def test_export_onnx_then_classify_and_embed_from_the_file(tmp_path, photo, capsys):
    photo.save(tmp_path / "a.jpg")
    torch.manual_seed(0)
    source = vitkit.load(arch="vit_tiny_patch16_224").save(tmp_path / "m.safetensors", format="safetensors")
    out = tmp_path / "m.onnx"
    assert cli(["export", "onnx", "--model", str(source), "--out", str(out), "--image-size", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report and out.is_file()
    onnx_model = vitkit.load(str(out))
    torch_model = vitkit.load(str(source), image_size=64)
    assert onnx_model.spec == torch_model.spec and onnx_model.labels == torch_model.labels  # from the metadata
    pixels = torch_model.preprocess(photo)
    assert (onnx_model(pixels) - torch_model(pixels)).abs().max() < 1e-4
    assert (onnx_model.embed_pixels(pixels) - torch_model.embed_pixels(pixels)).abs().max() < 1e-4
    with pytest.raises(ValueError, match="ONNX graph"):
        onnx_model.save(tmp_path / "again", format="hf")


def test_backend_onnx_and_convert_to_onnx(tmp_path, photo):
    torch.manual_seed(0)
    source = vitkit.load(arch="vit_tiny_patch16_224").save(tmp_path / "m.safetensors", format="safetensors")
    via_backend = vitkit.load(str(source), backend="onnx", image_size=64)
    assert cli(["convert", str(source), "--to", "onnx", "--out", str(tmp_path / "c.onnx")]) == 0
    converted = vitkit.load(str(tmp_path / "c.onnx"))
    plain = vitkit.load(str(source), image_size=64)
    pixels = plain.preprocess(photo)
    assert (via_backend(pixels) - plain(pixels)).abs().max() < 1e-4
    assert converted.spec.input_size == 224 and converted.labels == plain.labels


@pytest.mark.parametrize("module, extra", [("lancedb", "index"), ("uvicorn", "serve"), ("onnxruntime", "onnx"),
                                           ("not_a_vitkit_extra", None)])
def test_a_missing_optional_package_names_its_extra(monkeypatch, capsys, module, extra):
    """A command whose optional package is not installed says which extra installs it (no traceback); any other
    missing module is a real bug and is not hidden."""
    import vitkit.cli as cli_module

    def needs_it(args):
        raise ModuleNotFoundError(f"No module named '{module}'", name=module)

    monkeypatch.setitem(cli_module.COMMANDS, "info", needs_it)
    if extra is None:
        with pytest.raises(ModuleNotFoundError):
            cli(["info", "anything"])
        return
    assert cli(["info", "anything"]) == 2
    assert f"needs the optional package '{module}': pip install 'vitkit[{extra}]'" in capsys.readouterr().err


def test_typos_get_a_did_you_mean_and_local_paths_a_plain_no_such_file(tmp_path, capsys):
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    with pytest.raises(SystemExit) as stop:
        cli(["classify", str(image), "--model", "vitkit-digits", "--topk", "3"])
    assert stop.value.code == 2 and "--topk (did you mean --top-k?)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["clasify", str(image)])
    assert "did you mean 'classify'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["index", "add", "db", str(image), "--workerz", "1"])
    assert "--workerz (did you mean --workers?)" in capsys.readouterr().err
    for local in ("./typo", "../models/typo", "typo.safetensors", str(tmp_path / "nope")):
        assert cli(["classify", str(image), "--model", local]) == 2
        assert f"no such file or folder: {local}" in capsys.readouterr().err


def test_the_shipped_digits_model_has_a_name(tmp_path, capsys):
    assert cli(["models"]) == 0
    assert "vitkit-digits" in capsys.readouterr().out.split("Named models")[0]
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    assert cli(["classify", str(image), "--model", "vitkit-digits", "--format", "jsonl", "--no-progress"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["top_k"][0]["label"] in "0123456789"
    assert vitkit.load("vitkit-digits").labels == tuple("0123456789")


def test_a_weights_file_beside_its_config_uses_that_config(tmp_path, capsys):
    from pathlib import Path

    folder = Path(vitkit.__file__).parent / "assets" / "digits-vit"
    by_file, by_folder = vitkit.load(str(folder / "model.safetensors")), vitkit.load(str(folder))
    assert by_file.labels == by_folder.labels == tuple("0123456789") and by_file.spec == by_folder.spec
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(by_file(x), by_folder(x))
    assert cli(["info", str(folder / "model.safetensors")]) == 0
    assert "class_0" not in capsys.readouterr().out
