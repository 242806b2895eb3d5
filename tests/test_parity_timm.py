"""Parity with timm, the reference implementation of ViT / DeiT / BEiT, within 1e-4 (max abs diff).

  tiny models     timm-built, every parameter randomised, saved as .safetensors and .pth, loaded with
                  `load_network(path, arch=...)`: logits, pre-logit features, final tokens, every block
  other sizes     timm built at the larger size from the native weights through its own
                  `checkpoint_filter_fn` vs vitkit resampling (at run time and at load time):
                  ViT / distilled DeiT (bicubic + antialias), BEiT (geometric relative-position resize)
  full size       vit_base_patch16_224 (224, 288), vit_small_patch16_224, deit_base_distilled_patch16_224,
                  beit_base_patch16_224 (224, 288), random weights, batch 1
  round trip      vitkit -> `save_timm` -> timm `load_state_dict(strict=True)` -> same logits

timm is a test-only reference, imported through tests/reference_timm.py (torchvision stand-in).

Run:  .venv/bin/python -m pytest tests/test_parity_timm.py -q --durations=10
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ is not a package
from reference_timm import (  # noqa: E402
    create_reference, import_timm, randomize_, tiny_beit, tiny_deit_distilled, tiny_vit,
)

try:
    timm = import_timm()
except ImportError as err:  # not installed; a broken stand-in (RuntimeError) is a real failure, not a skip
    pytest.skip(f"timm, the parity reference, cannot be imported: {err}", allow_module_level=True)

import safetensors.torch  # noqa: E402

import vitkit  # noqa: E402
from vitkit.checkpoints.convert import load_network  # noqa: E402
from vitkit.checkpoints.save import save_timm  # noqa: E402
from vitkit.config import BEIT_FIELDS, PreprocessSpec, ViTConfig  # noqa: E402
from vitkit.models import registry  # noqa: E402
from vitkit.models.registry import Arch  # noqa: E402

TOL = 1e-4

# ---------------------------------------------------------------------------------------------- tiny rows

TINY = dict(image_size=32, patch_size=8, width=48, depth=2, heads=3, mlp_dim=192, num_classes=10)
TINY_FIELDS = {  # family -> (vitkit config fields beyond TINY, timm builder, timm module holding checkpoint_filter_fn)
    "vit": ({}, tiny_vit, timm.models.vision_transformer),
    "deit_distilled": (dict(dist_token=True, family="deit"), tiny_deit_distilled, timm.models.deit),
    "beit": (BEIT_FIELDS, tiny_beit, timm.models.beit),
}
FAMILIES = list(TINY_FIELDS)


def tiny_arch(family: str, image_size: int = 32) -> str:
    return f"tiny_{family}_test_{image_size}"


@pytest.fixture(autouse=True)
def tiny_archs(monkeypatch):
    """Tiny architecture rows (native 32 px, and the same rows at 24 and 48 px for load-time resampling)."""
    for family, (fields, _, _) in TINY_FIELDS.items():
        for size in (24, 32, 48):
            cfg = ViTConfig(**{**TINY, "image_size": size}, **fields)
            monkeypatch.setitem(registry.ARCHS, tiny_arch(family, size), Arch(cfg, PreprocessSpec(input_size=size)))


def build_tiny(family: str, img_size: int = 32, seed: int = 0) -> nn.Module:
    return TINY_FIELDS[family][1](img_size=img_size, seed=seed)


def save_state_dict(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[tuple[str, str], tuple[nn.Module, Path]]:
    """(family, suffix) -> (randomised timm model at 32 px, its state dict written in that format)."""
    root = tmp_path_factory.mktemp("tiny_timm")
    out = {}
    for family in FAMILIES:
        ref = build_tiny(family)
        for suffix in (".safetensors", ".pth"):
            out[family, suffix] = ref, save_state_dict(ref.state_dict(), root / f"{family}{suffix}")
    return out


def pixels(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ compare

def max_diff(actual: torch.Tensor, expected: torch.Tensor, what: str) -> float:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != timm {tuple(expected.shape)}"
    return (actual.float() - expected.float()).abs().max().item()


@torch.no_grad()
def timm_outputs(ref: nn.Module, x: torch.Tensor, blocks: bool = True) -> dict[str, torch.Tensor]:
    """timm's logits, pre-logits, final tokens and, with `blocks`, its forward() and (via forward hooks)
    every block's output."""
    captured: list[torch.Tensor] = []
    hooks = [blk.register_forward_hook(lambda m, i, o: captured.append(o)) for blk in ref.blocks] if blocks else []
    try:
        tokens = ref.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    out = {"tokens": tokens, "pre_logits": ref.forward_head(tokens, pre_logits=True),
           "logits": ref.forward_head(tokens)}
    if blocks:  # the whole forward too (skipped at full size: it is forward_head(forward_features) in both)
        out["forward"] = ref(x)
    out.update({f"block{i}": t for i, t in enumerate(captured)})
    return out


@torch.no_grad()
def vitkit_outputs(net: nn.Module, x: torch.Tensor, blocks: bool = True) -> dict[str, torch.Tensor]:
    tokens = net.forward_features(x)
    out = {"tokens": tokens, "pre_logits": net.forward_head(tokens, pre_logits=True),
           "logits": net.forward_head(tokens)}
    if blocks:
        out["forward"] = net(x)
        depth = net.config.depth
        out.update({f"block{i}": t for i, t in enumerate(net.forward_intermediates(x, list(range(depth))))})
    return out


def assert_parity(net: nn.Module, ref: nn.Module, x: torch.Tensor, blocks: bool = True) -> dict[str, float]:
    expected, actual = timm_outputs(ref, x, blocks), vitkit_outputs(net, x, blocks)
    assert set(actual) == set(expected), f"compared outputs differ: {sorted(actual)} vs timm {sorted(expected)}"
    diffs = {k: max_diff(actual[k], expected[k], k) for k in expected}
    print(f"max abs diffs vs timm: {diffs}")
    bad = {k: v for k, v in diffs.items() if not v <= TOL}
    assert not bad, f"vitkit differs from timm by more than {TOL}: {bad}"
    return diffs


# ------------------------------------------------------------------------------------------------ a. tiny

@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "plain"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_timm_checkpoint_loads_with_same_outputs(tiny_files, family, suffix, fused):
    ref, path = tiny_files[family, suffix]
    loaded = load_network(str(path), arch=tiny_arch(family))
    assert loaded.layout == "timm"
    net = loaded.net
    net.set_fused_attention(fused)
    assert not net.training
    assert_parity(net, ref, pixels(32))


# --------------------------------------------------------------------------------------- b. other sizes

def timm_at_size(family: str, state: dict[str, torch.Tensor], img_size: int) -> nn.Module:
    """timm's own answer at another size: the model built there, the native weights through its filter."""
    module = TINY_FIELDS[family][2]
    ref = build_tiny(family, img_size=img_size, seed=1)  # other values everywhere: the load must replace all
    ref.load_state_dict(module.checkpoint_filter_fn(dict(state), ref), strict=True)
    return ref.eval()


@pytest.mark.parametrize("size", [48, 24], ids=["up48", "down24"])
@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_other_size_resampled_at_run_time(tiny_files, family, size):
    native, path = tiny_files[family, ".safetensors"]
    ref = timm_at_size(family, native.state_dict(), size)
    model = vitkit.load(str(path), tiny_arch(family), image_size=size)
    assert model.spec.input_size == size
    assert model.net.config.image_size == 32  # weights kept at their own grid; resampled per input size
    x = pixels(size)
    assert_parity(model.net, ref, x)
    assert max_diff(model(x), ref(x).detach(), "Model.__call__") <= TOL


@pytest.mark.parametrize("size", [48, 24], ids=["up48", "down24"])
@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_other_size_resampled_at_load_time(tiny_files, family, size):
    """An architecture row at another size than the weights: positions resampled while loading."""
    native, path = tiny_files[family, ".safetensors"]
    ref = timm_at_size(family, native.state_dict(), size)
    net = load_network(str(path), arch=tiny_arch(family, size)).net
    assert net.config.image_size == size
    assert_parity(net, ref, pixels(size))


# ------------------------------------------------------------------------------------------- c. full size

FULL = [  # timm name (== vitkit arch row), other input sizes checked beside the native one
    ("vit_base_patch16_224", (288,)),
    ("vit_small_patch16_224", ()),
    ("deit_base_distilled_patch16_224", ()),
    ("beit_base_patch16_224", (288,)),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, other_sizes", FULL, ids=[n for n, _ in FULL])
def test_full_size_random_weights(tmp_path, name, other_sizes):
    ref = create_reference(name, seed=0)
    state = ref.state_dict()
    path = save_state_dict(state, tmp_path / "model.safetensors")
    net = load_network(str(path), arch=name).net
    native = registry.ARCHS[name].config.image_size
    assert_parity(net, ref, pixels(native, batch=1), blocks=False)
    del ref
    gc.collect()
    for size in other_sizes:
        # every value is replaced below, so timm's (slow) init is skipped where timm allows it (ViT)
        skip_init = {"weight_init": "skip"} if name.startswith("vit_") else {}
        ref = create_reference(name, seed=None, img_size=size, **skip_init)
        module = sys.modules[type(ref).__module__]  # timm.models.vision_transformer / beit
        ref.load_state_dict(module.checkpoint_filter_fn(dict(state), ref), strict=True)
        assert_parity(net, ref.eval(), pixels(size, batch=1), blocks=False)
        del ref
        gc.collect()


# ------------------------------------------------------------------------------------------ d. round trip

@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_vitkit_to_timm(tmp_path, family, suffix):
    net = load_network(None, arch=tiny_arch(family)).net
    randomize_(net, seed=3)  # vitkit's own init leaves zeros (biases, head): randomise everything
    spec = registry.ARCHS[tiny_arch(family)].preprocess
    target = save_timm(net, spec, tmp_path / f"x{suffix}")
    if suffix == ".safetensors":
        state = safetensors.torch.load_file(str(target))
    else:
        state = torch.load(target, weights_only=True)
    ref = build_tiny(family, seed=7)
    ref.load_state_dict(state, strict=True)
    x = pixels(32)
    with torch.no_grad():
        diff = max_diff(net(x), ref(x), "logits")
    print(f"{family}{suffix} round trip: max abs logit diff {diff}")
    assert diff <= TOL
    # and back again: the timm file loads into vitkit as the same network
    again = load_network(str(target), arch=tiny_arch(family)).net
    with torch.no_grad():
        assert max_diff(again(x), net(x), "reloaded logits") <= TOL
