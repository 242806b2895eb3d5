"""Conversion carries everything: a tiny random network with its own labels and a non-default recipe, written by
`vitkit convert` in every format and read back, keeps its logits, labels, preprocessing and architecture name; the
timm forms load in timm (the reference) with the same logits, a transformers folder preprocesses the 100 shared
photos exactly as transformers' AutoImageProcessor does, and a weights file beside its config reads that config.

Try it:  OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_convert_roundtrip.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from safetensors import safe_open

import vitkit
from conftest import SHARED, TINY, randomise_
from reference_timm import import_timm
from vitkit.checkpoints.hf_config import transformers_view
from vitkit.checkpoints.layouts import timm_keymap
from vitkit.checkpoints.save import save_hf, save_timm
from vitkit.cli import main as cli
from vitkit.config import BEIT_FIELDS, HALF, PreprocessSpec, ViTConfig
from vitkit.models import registry
from vitkit.models.registry import TIMM_AUGREG, TIMM_DEIT, HF_DEIT, HF_VIT, Arch
from vitkit.models.vit import VisionTransformer

PHOTOS = SHARED / "images" / "imagenet-sample-100"
TOL = 1e-5

# family -> (timm's name, vitkit config fields beyond TINY). For these tests vitkit's rows of those names are tiny
# networks, and timm builds the same tiny networks under the same names from TIMM_TINY (its keyword arguments).
FAMILIES = {
    "vit": ("vit_tiny_patch16_224", {}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(dist_token=True, family="deit")),
    "beit": ("beit_base_patch16_224", BEIT_FIELDS),
}
TIMM_TINY = dict(img_size=TINY["image_size"], patch_size=TINY["patch_size"], embed_dim=TINY["width"],
                 depth=TINY["depth"], num_heads=TINY["heads"], mlp_ratio=TINY["mlp_dim"] / TINY["width"])
LABELS = ("tench", "hen, chicken", "crème brûlée", "goldfish", "great white shark", "tiger shark", "hammerhead",
          "electric ray", "stingray", "cock")
# nothing at its default: timm's rule (shorter side, crop) and transformers' (squash, crop), own mean / std
RECIPES = {
    "timm-rule": PreprocessSpec(32, 0.8, "shortest", "bilinear", (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)),
    "hf-rule": PreprocessSpec(32, 0.9, "exact", "bicubic", HALF, (0.3, 0.3, 0.3)),
}


@pytest.fixture
def tiny_rows(monkeypatch):
    def put(recipe: PreprocessSpec) -> None:
        for name, fields in FAMILIES.values():
            monkeypatch.setitem(registry.ARCHS, name, Arch(ViTConfig(**TINY, **fields), recipe))
    put(RECIPES["timm-rule"])
    return put


@pytest.fixture
def source(tmp_path, tiny_rows):
    """(family, recipe) -> (the model, a vitkit .safetensors of it): random weights everywhere, LABELS, the recipe."""
    def make(family: str, recipe: str):
        tiny_rows(RECIPES[recipe])
        model = vitkit.load(arch=FAMILIES[family][0], labels=list(LABELS), device="cpu")
        randomise_(model.net, seed=len(family) + len(recipe))
        return model, model.save(tmp_path / "src.safetensors", format="safetensors")
    return make


def pixels(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def convert(capsys, source: Path, fmt: str, out: Path, *extra: str) -> str:
    """`vitkit convert`; -> what it printed to stderr (its notes)."""
    capsys.readouterr()
    assert cli(["convert", str(source), "--to", fmt, "--out", str(out), "--no-progress", *extra]) == 0
    return capsys.readouterr().err


def timm_model(name: str, **kwargs) -> torch.nn.Module:
    return import_timm().create_model(name, **TIMM_TINY, **kwargs).eval()


def file_config(path: Path) -> dict:
    with safe_open(path, framework="pt") as fh:
        return json.loads(fh.metadata()["vitkit_config"])


# ------------------------------------------------------------------------------ every format, read back by vitkit

OUTPUTS = {"hf": "out", "timm-file": "out.safetensors", "timm-folder": "out", "safetensors": "out.safetensors"}
# where the format's library crops 1 px apart from the recipe on some sizes (the centre crop's offset rounding), and
# the conversion says so: transformers floors it, timm rounds it half to even
CROP_NOTES = {("hf", "timm-rule"), ("timm-folder", "hf-rule")}


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fmt", OUTPUTS)
def test_convert_keeps_logits_labels_recipe_and_architecture(tmp_path, capsys, source, family, recipe, fmt):
    src, path = source(family, recipe)
    out = tmp_path / OUTPUTS[fmt]
    notes = convert(capsys, path, fmt.split("-")[0], out)  # no --arch: the source names its architecture
    again = vitkit.load(str(out), device="cpu")  # nor here: the written file or folder does
    x = pixels()
    with torch.no_grad():
        assert max_diff(again(x), src(x)) <= TOL
    assert again.labels == LABELS
    assert again.config.arch == src.config.arch == FAMILIES[family][0]
    # a transformers folder says how transformers crops, and vitkit runs it so; the others keep the recipe as it is
    assert again.spec == (transformers_view(src.spec) if fmt == "hf" else src.spec)
    assert ("1 px" in notes) == ((fmt, recipe) in CROP_NOTES) and notes.count("note:") <= 1


def test_the_transformers_folder_loads_in_transformers_with_its_labels(tmp_path, capsys, source):
    transformers = pytest.importorskip("transformers")
    src, path = source("deit_distilled", "timm-rule")
    convert(capsys, path, "hf", tmp_path / "hf")
    ref = transformers.AutoModelForImageClassification.from_pretrained(tmp_path / "hf").eval()
    x = pixels()
    with torch.no_grad():
        assert max_diff(ref(pixel_values=x).logits, src(x)) <= 1e-4
    assert tuple(ref.config.id2label[i] for i in range(len(LABELS))) == LABELS


# ----------------------------------------------------------------------------------------- the timm forms in timm

@pytest.mark.parametrize("family", FAMILIES)
def test_timm_file_loads_in_timm(tmp_path, capsys, source, family):
    src, path = source(family, "timm-rule")
    out = tmp_path / "timm.safetensors"
    convert(capsys, path, "timm", out)
    saved = file_config(out)  # what a timm user reads from the file: its architecture and head size
    assert saved["arch"] == FAMILIES[family][0] and saved["num_classes"] == len(LABELS)
    x = pixels()
    by_overlay = timm_model(saved["arch"], pretrained=True, num_classes=saved["num_classes"],
                            pretrained_cfg_overlay=dict(file=str(out), num_classes=saved["num_classes"]))
    by_checkpoint = timm_model(saved["arch"], num_classes=saved["num_classes"], checkpoint_path=str(out))
    with torch.no_grad():
        expected = src(x)
        assert max_diff(by_overlay(x), expected) <= TOL
        assert max_diff(by_checkpoint(x), expected) <= TOL


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("family", FAMILIES)
def test_timm_folder_loads_in_timm_with_its_labels_and_eval_transform(tmp_path, capsys, source, family, recipe):
    timm = import_timm()
    src, path = source(family, recipe)
    folder = tmp_path / "timm"
    convert(capsys, path, "timm", folder)
    ref = timm_model(f"local-dir:{folder}", pretrained=True)  # architecture and num_classes from config.json
    x = pixels()
    with torch.no_grad():
        assert max_diff(ref(x), src(x)) <= TOL
    assert ref.num_classes == len(LABELS)
    assert tuple(ref.pretrained_cfg["label_names"]) == LABELS
    data = timm.data.resolve_data_config({}, model=ref)
    spec = src.spec
    assert tuple(data["input_size"]) == (3, spec.input_size, spec.input_size)
    assert data["crop_pct"] == spec.crop_pct and data["interpolation"] == spec.interpolation
    assert data["crop_mode"] == {"shortest": "center", "exact": "squash"}[spec.resize_mode]
    assert tuple(data["mean"]) == spec.mean and tuple(data["std"]) == spec.std


def test_timm_folder_of_a_fine_tune_at_another_size_tells_timm_the_size(tmp_path, tiny_rows):
    name = FAMILIES["vit"][0]
    net = randomise_(VisionTransformer(registry.ARCHS[name].config.replace(image_size=48, arch=name)))
    save_timm(net, RECIPES["timm-rule"].at_size(48), tmp_path / "timm")
    assert json.loads((tmp_path / "timm" / "config.json").read_text())["model_args"] == {"img_size": 48}
    tiny_but_its_size = {k: v for k, v in TIMM_TINY.items() if k != "img_size"}  # the size: from model_args
    ref = import_timm().create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True, **tiny_but_its_size).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert max_diff(ref(x), net(x)) <= TOL


# ----------------------------------------------------------------------------- architecture names: known or asked

@pytest.fixture
def nameless_hf_folder(tmp_path, tiny_rows) -> Path:
    """A transformers folder of a tiny ViT that names no architecture (as any folder from the hub)."""
    net = randomise_(VisionTransformer(ViTConfig(**TINY, labels=LABELS)))
    return save_hf(net, RECIPES["hf-rule"], tmp_path / "nameless")


@pytest.mark.parametrize("out", ["x.safetensors", "folder"])
def test_convert_to_timm_asks_for_the_architecture_only_when_the_source_does_not_say(
        tmp_path, capsys, nameless_hf_folder, out):
    capsys.readouterr()
    assert cli(["convert", str(nameless_hf_folder), "--to", "timm", "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert "does not say which" in err and "--arch NAME" in err
    assert not (tmp_path / out).exists()
    name = FAMILIES["vit"][0]
    convert(capsys, nameless_hf_folder, "timm", tmp_path / out, "--arch", name)
    again = vitkit.load(str(tmp_path / out), device="cpu")
    assert again.config.arch == name and again.labels == LABELS


def test_an_architecture_that_is_another_network_is_refused(tmp_path, capsys, nameless_hf_folder):
    capsys.readouterr()
    name = FAMILIES["beit"][0]
    assert cli(["convert", str(nameless_hf_folder), "--to", "timm", "--arch", name,
                "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert f"not timm's {name}" in err and "rel_pos_bias" in err


# ------------------------------------------------------------------------- formats that hold less, and say so

def test_pth_and_jax_keep_the_weights_and_say_what_they_cannot_hold(tmp_path, capsys, source):
    src, path = source("vit", "timm-rule")
    name, x = src.config.arch, pixels()
    for fmt, out in (("timm", tmp_path / "x.pth"), ("jax", tmp_path / "x.npz")):
        notes = convert(capsys, path, fmt, out)
        assert "no place for labels, preprocessing" in notes
        again = vitkit.load(str(out), name, device="cpu")
        with torch.no_grad():
            assert max_diff(again(x), src(x)) <= TOL
        assert again.labels == tuple(f"class_{i}" for i in range(len(LABELS)))
    ref = timm_model(name, num_classes=len(LABELS), checkpoint_path=str(tmp_path / "x.pth"))
    with torch.no_grad():
        assert max_diff(ref(x), src(x)) <= TOL


def test_onnx_keeps_labels_and_recipe(tmp_path, capsys, source):
    pytest.importorskip("onnxruntime")
    src, path = source("vit", "hf-rule")
    convert(capsys, path, "onnx", tmp_path / "x.onnx")
    again = vitkit.load(str(tmp_path / "x.onnx"), device="cpu")
    assert again.labels == LABELS and again.spec == src.spec
    x = pixels()
    with torch.no_grad():
        assert max_diff(torch.as_tensor(again(x)), src(x)) <= 1e-4


def test_classify_with_a_converted_timm_file_shows_its_labels(tmp_path, capsys, source):
    src, path = source("vit", "timm-rule")
    convert(capsys, path, "timm", tmp_path / "t.safetensors")
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(image)
    assert cli(["classify", str(image), "--model", str(tmp_path / "t.safetensors"), "--format", "jsonl",
                "--no-progress"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["top_k"][0]["label"] in LABELS


# --------------------------------------------------------------------- a weights file beside its config

def _same(a, b) -> None:
    x = pixels()
    with torch.no_grad():
        assert max_diff(a(x), b(x)) == 0
    assert a.labels == b.labels == LABELS and a.spec == b.spec and a.config.arch == b.config.arch


def test_hf_weights_beside_config_json_use_it(tmp_path, capsys, source):
    src, path = source("beit", "timm-rule")
    folder = tmp_path / "hf"
    convert(capsys, path, "hf", folder)
    by_folder = vitkit.load(str(folder), device="cpu")
    _same(vitkit.load(str(folder / "model.safetensors"), device="cpu"), by_folder)
    # pytorch_model.bin beside config.json, as older transformers checkpoints are published
    tensors = safetensors.torch.load_file(folder / "model.safetensors")
    torch.save(tensors, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    _same(vitkit.load(str(folder / "pytorch_model.bin"), device="cpu"), by_folder)
    # one shard of a sharded checkpoint: the whole checkpoint its index names
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for shard, names in shards.items():
        safetensors.torch.save_file({k: tensors[k] for k in names}, folder / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: shard for shard, names in shards.items() for k in names}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "pytorch_model.bin").unlink()
    _same(vitkit.load(str(folder / "model-00002-of-00002.safetensors"), device="cpu"), by_folder)


def test_a_plain_timm_file_beside_timm_config_json_uses_it(tmp_path, tiny_rows):
    """A timm hub folder: a state dict without vitkit's metadata, labels and eval transform in config.json."""
    name = FAMILIES["deit_distilled"][0]
    net = randomise_(VisionTransformer(registry.ARCHS[name].config.replace(labels=LABELS, arch=name)))
    folder = tmp_path / "hub"
    folder.mkdir()
    safetensors.torch.save_file(timm_keymap(net.config).to_foreign(net.state_dict(), net.config),
                                folder / "model.safetensors")
    recipe = RECIPES["hf-rule"]
    (folder / "config.json").write_text(json.dumps({
        "architecture": name, "num_classes": len(LABELS), "num_features": TINY["width"],
        "label_names": list(LABELS), "pretrained_cfg": {
            "input_size": [3, 32, 32], "crop_pct": recipe.crop_pct, "crop_mode": "squash",
            "interpolation": recipe.interpolation, "mean": list(recipe.mean), "std": list(recipe.std)}}))
    by_file = vitkit.load(str(folder / "model.safetensors"), device="cpu")
    _same(by_file, vitkit.load(str(folder), device="cpu"))
    assert by_file.spec == PreprocessSpec(32, recipe.crop_pct, "exact", recipe.interpolation, recipe.mean,
                                          recipe.std, "half_even")  # timm's squash: torchvision's crop rounding
    x = pixels()
    with torch.no_grad():
        assert max_diff(by_file(x), net(x)) <= TOL


# ---------------------------------------------------------------- 100 photos: vitkit's pixels are transformers'

@pytest.fixture(scope="module")
def photos():
    if not PHOTOS.is_dir():
        pytest.skip(f"the shared photos are not at {PHOTOS} (../shared is absent in a fresh clone)")
    from vitkit.data.decode import decode_image

    return [decode_image(path) for path in sorted(PHOTOS.glob("*.JPEG"))]


# timm's augreg rule (248 -> 224: 11 of the photos crop 1 px apart under timm's and transformers' rounding) and
# DeiT's (256 -> 224); transformers' google/vit (squash to 224) and facebook/deit (256 x 256 -> 224)
HUB_RECIPES = {"timm-augreg": TIMM_AUGREG, "timm-deit": TIMM_DEIT, "hf-vit": HF_VIT, "hf-deit": HF_DEIT}


@pytest.mark.parametrize("recipe", HUB_RECIPES)
def test_a_saved_transformers_folder_preprocesses_the_photos_as_transformers(tmp_path, photos, recipe):
    transformers = pytest.importorskip("transformers")
    net = VisionTransformer(registry.ARCHS["vit_tiny_patch16_224"].config.replace(depth=1))
    folder = save_hf(net, HUB_RECIPES[recipe], tmp_path / "hf")
    expected = transformers.AutoImageProcessor.from_pretrained(folder)(photos, return_tensors="np")["pixel_values"]
    assert expected.shape == (len(photos), 3, 224, 224)
    assert np.array_equal(vitkit.load(str(folder), device="cpu").preprocess(photos).numpy(), expected)
    # and from transformers' preprocessor_config.json alone (a folder from the hub)
    config = json.loads((folder / "config.json").read_text())
    del config["vitkit_preprocess"]
    (folder / "config.json").write_text(json.dumps(config))
    assert np.array_equal(vitkit.load(str(folder), device="cpu").preprocess(photos).numpy(), expected)


def test_timm_rule_crops_differ_from_transformers_only_where_the_half_offset_rounds(photos):
    """Where the 1 px came from: timm's crop offset, round((side - 224) / 2) half to even, and transformers',
    floored, part on margins of 3 mod 4 pixels; no other pixel differs."""
    from vitkit.data.transforms import preprocess

    timm_rule = TIMM_AUGREG  # shorter side to 248, the longer one to int(248 * long / short), crop 224
    apart = [i for i, image in enumerate(photos)
             if not torch.equal(preprocess(image, timm_rule), preprocess(image, transformers_view(timm_rule)))]
    odd = [i for i, image in enumerate(photos)
           if (int(timm_rule.resize * max(image.size) / min(image.size)) - 224) % 4 == 3]
    assert apart == odd and len(apart) == 11


def test_floored_centre_crops_are_transformers_center_crop_padding_included():
    """Every side longer, equal and shorter than the crop (zeros placed as transformers places them)."""
    image_transforms = pytest.importorskip("transformers.image_transforms")
    from vitkit.data.transforms import _centre_crop

    rng = np.random.default_rng(0)
    for width in range(18, 31):
        for height in (19, 24, 27):
            pixels_hwc = rng.integers(1, 255, (height, width, 3), dtype=np.uint8)
            expected = image_transforms.center_crop(pixels_hwc, (24, 24), input_data_format="channels_last")
            mine = np.asarray(_centre_crop(Image.fromarray(pixels_hwc), 24, "floor"))
            assert np.array_equal(mine, expected), (width, height)
