"""Parity with transformers: its ViT / DeiT / BEiT models, every parameter randomised, saved with
save_pretrained, loaded by vitkit -> same logits, pre-logit features and hidden states of every layer
(max abs diff <= 1e-4) at the native input size and at other sizes; and back: vitkit -> save_hf ->
transformers' from_pretrained -> the same tensors, the same outputs, the same labels, and a
preprocessor_config.json whose image processor computes vitkit's preprocessing.

Run:  .venv/bin/python -m pytest tests/test_parity_hf.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

from vitkit.checkpoints.convert import load_network  # noqa: E402
from vitkit.checkpoints.hf_config import transformers_view  # noqa: E402
from vitkit.checkpoints.io import CheckpointError  # noqa: E402
from vitkit.checkpoints.save import save_hf, save_vitkit  # noqa: E402
from vitkit.config import HALF, IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec  # noqa: E402

TOL = 1e-4
TINY = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
            image_size=32, patch_size=8, hidden_act="gelu")
LABELS = ("tench", "goldfish", "great white shark", "tiger shark", "hammerhead")
WITH_LABELS = dict(id2label=dict(enumerate(LABELS)), label2id={name: i for i, name in enumerate(LABELS)})
HEAD_NAMES = ("classifier", "cls_classifier", "distillation_classifier")


@dataclass(frozen=True)
class Case:
    cls: str  # transformers class
    config: str  # transformers config class
    fields: dict
    sizes: tuple[tuple[int, int], ...]  # (H, W) inputs; the first is the native size

    def build(self, randomise):
        return build_random(self.cls, self.config, self.fields, randomise)

    @property
    def beit(self) -> bool:
        return self.config == "BeitConfig"


def build_random(cls: str, config: str, fields: dict, randomise):
    """A transformers model with every parameter randomised by `randomise` (conftest). Built on the meta
    device: transformers' own initialisation would be overwritten anyway and costs seconds at full size."""
    with torch.device("meta"):
        model = getattr(transformers, cls)(getattr(transformers, config)(**fields))
    assert not list(model.buffers()), "to_empty would leave these buffers uninitialised"
    model = randomise(model.to_empty(device="cpu"))
    constant = [name for name, p in model.named_parameters() if not p.flatten().std() > 0.01]
    assert not constant, f"parameters left constant: {constant}"
    return model


def _tiny(**changes) -> dict:
    return {**TINY, **changes}


SIZES_32 = ((32, 32), (48, 48), (24, 40))  # native, larger, smaller and non-square
CASES = {
    "vit-cls": Case("ViTForImageClassification", "ViTConfig", _tiny(**WITH_LABELS), SIZES_32),
    "vit-model-pooler": Case("ViTModel", "ViTConfig", _tiny(pooler_output_size=40), SIZES_32),
    "deit-cls-teacher": Case("DeiTForImageClassificationWithTeacher", "DeiTConfig", _tiny(**WITH_LABELS), SIZES_32),
    "deit-cls": Case("DeiTForImageClassification", "DeiTConfig", _tiny(**WITH_LABELS), SIZES_32),
    "deit-model-pooler": Case("DeiTModel", "DeiTConfig", _tiny(), SIZES_32),
    "beit-cls-layer-bias-mean-pool": Case(
        "BeitForImageClassification", "BeitConfig",
        _tiny(**WITH_LABELS, use_relative_position_bias=True, use_shared_relative_position_bias=False,
              use_mean_pooling=True, layer_scale_init_value=0.1), SIZES_32),
    "beit-model-shared-bias-cls-pool": Case(
        "BeitModel", "BeitConfig",
        _tiny(use_relative_position_bias=False, use_shared_relative_position_bias=True, use_mean_pooling=False,
              layer_scale_init_value=0.1), SIZES_32),
    "vit-cls-p16-img64": Case(
        "ViTForImageClassification", "ViTConfig", _tiny(image_size=64, patch_size=16, **WITH_LABELS),
        ((64, 64), (96, 96), (48, 80))),
    "vit-cls-p14-img28-no-qkv-bias": Case(
        "ViTForImageClassification", "ViTConfig", _tiny(image_size=28, patch_size=14, qkv_bias=False, **WITH_LABELS),
        ((28, 28), (56, 56), (42, 28))),
}
CLASSIFIERS = [name for name, case in CASES.items() if "ForImageClassification" in case.cls]
HF_PREPROCESS = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
                 "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                 "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


@dataclass
class Built:
    hf: torch.nn.Module  # the transformers reference
    folder: Path  # its save_pretrained folder
    loaded: object  # vitkit's Loaded

    @property
    def net(self):
        return self.loaded.net


def _save_reference(hf, folder: Path, side: int) -> None:
    hf.save_pretrained(folder)
    pre = dict(HF_PREPROCESS, size={"height": side, "width": side})
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))


def _runtime(beit: bool) -> dict:
    # transformers resizes BEiT's relative-position tables bilinearly; vitkit's default is the BEiT authors'
    return {"rel_pos_resize": "bilinear"} if beit else {}


@pytest.fixture(scope="module")
def built(tmp_path_factory, randomise):
    cache: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in cache:
            case = CASES[name]
            hf = case.build(randomise)
            folder = tmp_path_factory.mktemp(name)
            _save_reference(hf, folder, case.fields["image_size"])
            cache[name] = Built(hf, folder, load_network(str(folder), **_runtime(case.beit)))
        return cache[name]

    return get


# ----------------------------------------------------------------------------- both sides' outputs


@torch.no_grad()
def hf_outputs(model, x: torch.Tensor, native: bool) -> dict:
    """transformers' outputs, pre-logit features read at the classifier input(s) and the backbone's
    last_hidden_state read from the backbone (classification outputs do not carry them)."""
    captured: dict = {"pre": []}
    heads = [getattr(model, name) for name in HEAD_NAMES if hasattr(model, name)]
    hooks = [head.register_forward_pre_hook(lambda mod, args: captured["pre"].append(args[0])) for head in heads]
    hooks.append(model.base_model.register_forward_hook(lambda mod, args, out: captured.__setitem__("base", out)))
    try:
        out = model(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=not native)
    finally:
        for hook in hooks:
            hook.remove()
    base = captured["base"]
    if heads:  # distilled DeiT: vitkit's features are the mean of the two tokens its two heads read
        output, pre_logits = out.logits, torch.stack(captured["pre"]).mean(dim=0)
    else:
        output = pre_logits = base.pooler_output
    return dict(output=output, pre_logits=pre_logits, last_hidden_state=base.last_hidden_state,
                hidden_states=out.hidden_states)


@torch.no_grad()
def vitkit_outputs(net, x: torch.Tensor, cheap: bool = False) -> dict:
    """cheap: two forward passes instead of three (the logits from the head on forward_features' tokens
    rather than from net(x), which is that same composition)."""
    tokens = net.forward_features(x)
    blocks = net.forward_intermediates(x, list(range(net.config.depth)))
    output = net.forward_head(tokens) if cheap else net(x)
    return dict(output=output, pre_logits=net.forward_head(tokens, pre_logits=True), last_hidden_state=tokens,
                hidden_states=(net.embed(x)[0], *blocks))


def max_diffs(ref: dict, mine: dict) -> dict[str, float]:
    assert len(ref["hidden_states"]) == len(mine["hidden_states"])
    out = {}
    for key in ("output", "pre_logits", "last_hidden_state"):
        assert ref[key].shape == mine[key].shape, (key, ref[key].shape, mine[key].shape)
        out[key] = (ref[key] - mine[key]).abs().max().item()
    for i, (a, b) in enumerate(zip(ref["hidden_states"], mine["hidden_states"])):
        assert a.shape == b.shape, (f"hidden_states[{i}]", a.shape, b.shape)
        out[f"hidden_states[{i}]"] = (a - b).abs().max().item()
    return out


def assert_close(diffs: dict[str, float], label: str) -> None:
    print(f"{label}: max|diff| {max(diffs.values()):.2e} ({', '.join(f'{k}={v:.1e}' for k, v in diffs.items())})")
    bad = {k: v for k, v in diffs.items() if not v <= TOL}
    assert not bad, f"{label}: differences above {TOL}: {bad}"


def _case_sizes():
    return [pytest.param(name, size, id=f"{name}-{size[0]}x{size[1]}") for name in CASES for size in CASES[name].sizes]


# ----------------------------------------------------------------------------- transformers -> vitkit


@pytest.mark.parametrize("name, size", _case_sizes())
def test_hf_to_vitkit(built, name, size):
    b, case = built(name), CASES[name]
    x = torch.randn(2, 3, *size)
    native = size == case.sizes[0]
    ref = hf_outputs(b.hf, x, native)
    diffs = max_diffs(ref, vitkit_outputs(b.net, x))
    assert_close(diffs, f"{name} {size}")
    # the readable attention path (the one attention maps use) agrees with the fused one
    b.net.set_fused_attention(False)
    try:
        with torch.no_grad():
            readable = b.net(x)
    finally:
        b.net.set_fused_attention(True)
    assert (readable - ref["output"]).abs().max().item() <= TOL


@pytest.mark.parametrize("name", CASES)
def test_config_and_labels_from_hf(built, name):
    b, case = built(name), CASES[name]
    cfg = b.net.config
    assert (cfg.width, cfg.depth, cfg.heads, cfg.mlp_dim) == (48, 2, 3, 96)
    assert (cfg.image_size, cfg.patch_size) == (case.fields["image_size"], case.fields["patch_size"])
    assert b.loaded.layout == "hf"
    assert b.loaded.preprocess.input_size == case.fields["image_size"]
    if name in CLASSIFIERS:
        assert cfg.num_classes == len(LABELS)
        assert b.net.labels == LABELS
    else:
        assert cfg.num_classes == 0 and b.net.labels == ()
    # as many parameters as transformers' model (test_vitkit_to_hf_roundtrip checks their values)
    assert sum(p.numel() for p in b.net.parameters()) == sum(p.numel() for p in b.hf.parameters())


@pytest.mark.parametrize("name", ["beit-cls-layer-bias-mean-pool", "beit-model-shared-bias-cls-pool"])
def test_beit_resize_method_is_honoured(built, name):
    """Loaded with vitkit's default (the BEiT authors' geometric resize), BEiT equals transformers at its
    native size and differs at another; the runtime field is what makes the two agree."""
    b, case = built(name), CASES[name]
    geometric = load_network(str(b.folder)).net
    assert geometric.config.rel_pos_resize == "geometric"
    native, other = case.sizes[0], case.sizes[1]
    with torch.no_grad():
        x = torch.randn(1, 3, *native)
        assert (geometric(x) - b.net(x)).abs().max().item() == 0.0
        x = torch.randn(1, 3, *other)
        assert (geometric(x) - b.net(x)).abs().max().item() > 1e-3


@pytest.mark.parametrize("name", ["vit-cls", "deit-cls-teacher", "beit-cls-layer-bias-mean-pool",
                                  "beit-model-shared-bias-cls-pool"])
def test_attention_maps_match_eager(built, name):
    b, case = built(name), CASES[name]
    eager = getattr(transformers, case.cls).from_pretrained(b.folder, attn_implementation="eager").eval()
    for size in case.sizes[:2]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            ref = eager(pixel_values=x, output_attentions=True, interpolate_pos_encoding=size != case.sizes[0])
            maps = b.net.attention_maps(x)
        assert len(maps) == len(ref.attentions) == 2
        for a, m in zip(ref.attentions, maps):
            assert a.shape == m.shape
            assert (a - m).abs().max().item() <= 1e-5


# ----------------------------------------------------------------------------- vitkit -> transformers


@pytest.mark.parametrize("name", CASES)
def test_vitkit_to_hf_roundtrip(built, name, tmp_path):
    b, case = built(name), CASES[name]
    folder = save_hf(b.net, b.loaded.preprocess, tmp_path / "saved")
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [case.cls]
    model, info = getattr(transformers, case.cls).from_pretrained(folder, output_loading_info=True)
    model.eval()
    assert not any(info.values()), f"transformers did not load the folder cleanly: {info}"
    # every tensor comes back bit for bit
    ours, theirs = model.state_dict(), b.hf.state_dict()
    assert ours.keys() == theirs.keys()
    changed = [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert not changed, f"tensors changed on the way vitkit -> transformers: {changed}"
    # and compute what vitkit computes, natively and at another size
    for size in case.sizes[:2]:
        x = torch.randn(2, 3, *size)
        assert_close(max_diffs(hf_outputs(model, x, size == case.sizes[0]), vitkit_outputs(b.net, x)),
                     f"{name} saved {size}")
    if name in CLASSIFIERS:
        assert model.config.id2label == dict(enumerate(LABELS))
        assert model.config.label2id == {label: i for i, label in enumerate(LABELS)}
        assert load_network(str(folder), **_runtime(case.beit)).net.labels == LABELS
    else:
        assert not any(hasattr(model, head) for head in HEAD_NAMES)


@pytest.mark.parametrize("name", ["vit-cls", "deit-cls-teacher", "beit-model-shared-bias-cls-pool"])
def test_vitkit_safetensors_roundtrip(built, name, tmp_path):
    """save_vitkit: one .safetensors whose metadata carries the config (labels too) and the preprocessing."""
    b = built(name)
    path = save_vitkit(b.net, b.loaded.preprocess, tmp_path / "net.safetensors")
    again = load_network(str(path))
    assert again.layout == "vitkit"
    assert again.net.config == b.net.config and again.net.labels == b.net.labels
    assert again.preprocess == b.loaded.preprocess
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(again.net(x), b.net(x))


# ----------------------------------------------------------------------------- preprocessing travels along


def synthetic_image(width: int = 71, height: int = 53) -> Image.Image:
    """A smooth gradient with texture, so that resize and crop offsets show in the pixels."""
    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(0)
    rgb = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], axis=-1)
    rgb = rgb + rng.normal(0, 20, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")


DEIT_CROP = PreprocessSpec(32, 32 / 36, "exact", "bicubic", IMAGENET_MEAN, IMAGENET_STD)
SPECS = {
    # google/vit-*: resize straight to the input size, bilinear, mean = std = 0.5
    "vit-exact": ("vit-cls", PreprocessSpec(32, 1.0, "exact", "bilinear", HALF, HALF)),
    # facebook/deit-* (plain DeiT is published as model_type "vit"): resize 36, crop 32, bicubic
    "vit-exact-crop": ("vit-cls", DEIT_CROP),
    "deit-exact-crop": ("deit-cls-teacher", DEIT_CROP),
    "beit-exact": ("beit-cls-layer-bias-mean-pool", PreprocessSpec(32, 1.0, "exact", "bicubic", HALF, HALF)),
    # timm's rule (shorter side, then centre crop) goes out as transformers' BitImageProcessor
    "timm-shortest-crop": ("vit-cls", PreprocessSpec(32, 0.875, "shortest", "bicubic", IMAGENET_MEAN, IMAGENET_STD)),
}


@pytest.mark.parametrize("spec_name", SPECS)
def test_preprocessor_config_roundtrip(built, spec_name, tmp_path):
    try:
        from vitkit.data.transforms import preprocess
    except ImportError as err:
        pytest.skip(f"vitkit.data.transforms.preprocess is not available yet: {err}")
    name, spec = SPECS[spec_name]
    folder = save_hf(built(name).net, spec, tmp_path / "saved")
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    # vitkit reads back the exact spec (it travels in config.json) as transformers runs it: timm's crop offset
    # (torchvision, half to even) floored as transformers' center_crop floors it; no transformers processor rounds
    saved = load_network(str(folder)).preprocess
    assert saved == transformers_view(spec)
    # (width, height): landscape, portrait, square, a 9 px margin left by the crop (offset 4.5), and a 7 px one
    # (offset 3.5: timm's crop starts at 4, transformers' at 3)
    for size in ((71, 53), (53, 71), (40, 40), (41, 36), (39, 36)):
        image = synthetic_image(*size)
        ref = processor(image, return_tensors="pt").pixel_values[0]
        mine = torch.as_tensor(np.asarray(preprocess(image, saved)))
        assert ref.shape == mine.shape == (3, 32, 32), (size, ref.shape, mine.shape)
        assert (ref - mine).abs().max().item() <= 1e-5, f"{spec_name} on a {size} image"
    # ... and, from transformers' preprocessor_config.json alone, a spec that preprocesses the same way
    config = json.loads((folder / "config.json").read_text())
    config.pop("vitkit_preprocess")
    (folder / "config.json").write_text(json.dumps(config))
    from_hf = load_network(str(folder)).preprocess
    image = synthetic_image(39, 36)
    assert np.array_equal(np.asarray(preprocess(image, from_hf)), np.asarray(preprocess(image, saved)))


# ----------------------------------------------------------------------------- strict loading


def _tampered(b: Built, tmp_path: Path, change) -> str:
    folder = tmp_path / "tampered"
    shutil.copytree(b.folder, folder)
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return str(folder)


def _put(key, value):
    return lambda tensors: tensors.__setitem__(key, value)


def _drop(key):
    return lambda tensors: tensors.pop(key)


STRICT = {
    "unexpected-key": (_put("vit.encoder.layer.0.attention.attention.extra_scale", torch.ones(48)),
                       ["vit.encoder.layer.0.attention.attention.extra_scale"]),
    "missing-key": (_drop("vit.encoder.layer.1.layernorm_after.bias"), ["blocks.1.norm2.bias"]),
    "missing-fused-part": (_drop("vit.encoder.layer.0.attention.attention.key.weight"),
                           ["vit.encoder.layer.0.attention.attention.key.weight"]),
    "mis-shaped": (_put("vit.encoder.layer.0.intermediate.dense.weight", torch.zeros(95, 48)),
                   ["blocks.0.mlp.fc1.weight", "(95, 48)", "(96, 48)"]),
}


@pytest.mark.parametrize("problem", STRICT)
def test_strict_loading_names_the_key(built, problem, tmp_path):
    change, expected = STRICT[problem]
    folder = _tampered(built("vit-cls"), tmp_path, change)
    with pytest.raises(CheckpointError) as err:
        load_network(folder)
    for text in expected:
        assert text in str(err.value), str(err.value)


# ----------------------------------------------------------------------------- full-size shapes, batch 1

FULL = {
    "vit-b16": ("ViTForImageClassification", "ViTConfig", {}, (224, 288)),
    "deit-b16-distilled": ("DeiTForImageClassificationWithTeacher", "DeiTConfig", {}, (224,)),
    "beit-b16": ("BeitForImageClassification", "BeitConfig",
                 dict(use_relative_position_bias=True, use_mean_pooling=True, layer_scale_init_value=0.1), (224, 288)),
    # google/vit-large-patch16-384's shape: ~9 s here on an idle machine (~30 s when the 2 cores are busy)
    "vit-l16-384": ("ViTForImageClassification", "ViTConfig",
                    dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                         image_size=384), (384,)),
}
SKIP_LARGE = os.environ.get("VITKIT_SKIP_LARGE") == "1"


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.skipif(name == "vit-l16-384" and SKIP_LARGE,
                                                reason="VITKIT_SKIP_LARGE=1: L/16@384 skipped (~9-30 s here)"))
    for name in FULL])
@pytest.mark.slow
def test_full_size(name, tmp_path, randomise):
    cls, config, fields, sides = FULL[name]
    start = time.perf_counter()
    hf = build_random(cls, config, dict(num_labels=1000, **fields), randomise)
    _save_reference(hf, tmp_path, sides[0])
    net = load_network(str(tmp_path), **_runtime(config == "BeitConfig")).net
    for side in sides:
        x = torch.randn(1, 3, side, side)
        diffs = max_diffs(hf_outputs(hf, x, side == sides[0]), vitkit_outputs(net, x, cheap=True))
        assert_close(diffs, f"{name} {side}")
    print(f"{name}: {time.perf_counter() - start:.1f} s")
