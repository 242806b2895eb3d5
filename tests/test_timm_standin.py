"""timm (the parity reference) imports and runs through the TEST-ONLY torchvision stand-in."""
from __future__ import annotations

import importlib
import importlib.util
import sys

import pytest
import torch

try:
    import reference_timm as R
except ImportError:  # tests/ collected as a package
    from tests import reference_timm as R

try:
    timm = R.import_timm()
except ImportError as e:  # timm not installed; a broken stand-in raises RuntimeError and fails loudly
    pytest.skip(f"timm reference unavailable: {e}", allow_module_level=True)

needs_standin = pytest.mark.skipif(not R.using_standin(), reason="a real torchvision is installed")

# registry name -> timm class
NAMED = {
    "vit_tiny_patch16_224": "VisionTransformer",
    "vit_small_patch16_224": "VisionTransformer",
    "vit_base_patch16_224": "VisionTransformer",
    "vit_base_patch32_224": "VisionTransformer",
    "vit_large_patch16_384": "VisionTransformer",
    "deit_tiny_patch16_224": "VisionTransformer",
    "deit_small_distilled_patch16_224": "VisionTransformerDistilled",
    "beit_base_patch16_224": "Beit",
}


# ----------------------------------------------------------------------------- import / stand-in


def test_timm_imported():
    assert hasattr(timm, "create_model")
    assert timm.models.get_pretrained_cfg("vit_base_patch16_224.augreg2_in21k_ft_in1k") is not None


@needs_standin
def test_standin_does_not_leak():
    # timm holds the stand-in objects, but nothing else can find a "torchvision" afterwards
    assert not any(n == "torchvision" or n.startswith("torchvision.") for n in sys.modules)
    assert str(R.STUBS_DIR) not in sys.path
    assert importlib.util.find_spec("torchvision") is None
    assert timm.layers.create_norm.FrozenBatchNorm2d.IS_TEST_STANDIN
    assert timm.data.transforms.has_interpolation_mode


@needs_standin
def test_transformers_does_not_see_standin():
    import_utils = pytest.importorskip("transformers.utils.import_utils")
    assert import_utils.is_torchvision_available() is False


@needs_standin
def test_placeholders_raise_clearly():
    with R.torchvision_standin():
        import torchvision
        from torchvision import datasets, transforms
        from torchvision.ops.misc import FrozenBatchNorm2d
        from torchvision.transforms.functional import InterpolationMode

        assert torchvision.IS_TEST_STANDIN
        for cls in (FrozenBatchNorm2d, datasets.CIFAR10, datasets.ImageFolder, transforms.ToTensor):
            with pytest.raises(NotImplementedError, match="test stand-in"):
                cls()
        with pytest.raises(AttributeError, match="test stand-in"):
            transforms.Compose
        with pytest.raises(ImportError):
            from torchvision.datasets import ImageNet  # noqa: F401  (timm's optional import must fail)
        assert InterpolationMode("bicubic") is InterpolationMode.BICUBIC
        assert [m.value for m in InterpolationMode] == [
            "nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos"]
    assert "torchvision" not in sys.modules
    # timm's subclass of the placeholder is not constructible either
    with pytest.raises(NotImplementedError, match="test stand-in"):
        timm.data.transforms.MaybeToTensor()


# ----------------------------------------------------------------------------- named models


@pytest.mark.parametrize("name,cls", NAMED.items(), ids=list(NAMED))
def test_named_model_full_shapes_on_meta(name, cls):
    """Full-size architecture via the registry (meta device: no memory, no init cost)."""
    m = timm.create_model(name, pretrained=False, device="meta")
    assert type(m).__name__ == cls
    size = m.pretrained_cfg["input_size"][-1]
    patch = m.patch_embed.patch_size[0]
    n_patch = (size // patch) ** 2
    assert m.patch_embed.num_patches == n_patch
    if cls == "Beit":
        assert m.pos_embed is None
        window = size // patch
        assert m.blocks[0].attn.relative_position_bias_table.shape[0] == (2 * window - 1) ** 2 + 3
    else:
        assert m.pos_embed.shape[1] == n_patch + m.num_prefix_tokens


@pytest.mark.parametrize("name,cls", NAMED.items(), ids=list(NAMED))
def test_named_model_small_forward(name, cls):
    """Registry entry + img_size/num_classes overrides, shrunk (depth=1, 64 px) for a quick forward."""
    m = R.create_reference(name, num_classes=7, img_size=64, depth=1)
    assert type(m).__name__ == cls and not m.training
    with torch.no_grad():
        y = m(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, 7) and torch.isfinite(y).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_base_patch16_224", "beit_base_patch16_224"])
def test_full_size_forward(name):
    m = R.create_reference(name, seed=None, num_classes=1000)
    with torch.no_grad():
        y = m(torch.randn(1, 3, 224, 224))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


def test_create_reference_never_downloads():
    with pytest.raises(ValueError, match="pretrained=False"):
        R.create_reference("vit_tiny_patch16_224", pretrained=True)


# ----------------------------------------------------------------------------- tiny helpers

TINY = {"vit": R.tiny_vit, "deit_distilled": R.tiny_deit_distilled, "beit": R.tiny_beit}


@pytest.mark.parametrize("kind", list(TINY))
def test_tiny_params_all_random_nonzero(kind):
    m = TINY[kind]()
    assert not m.training
    for n, p in m.named_parameters():
        assert (p != 0).all(), f"{n} has zeros"
        if p.numel() > 1:
            assert p.std() > 1e-2, f"{n} is (near-)constant"
    names = dict(m.named_parameters())
    assert names["cls_token"].abs().mean() > 0.1  # timm's std=1e-6 init re-randomised
    if kind == "deit_distilled":
        assert names["dist_token"].abs().mean() > 0.1
    if kind == "beit":
        for key in ("gamma_1", "gamma_2", "attn.q_bias", "attn.v_bias", "attn.relative_position_bias_table"):
            assert f"blocks.0.{key}" in names
        assert (m.blocks[0].attn.k_bias == 0).all()  # BEiT has no key bias: buffer stays zero
        sd = m.state_dict()
        assert "blocks.0.attn.relative_position_index" not in sd  # non-persistent
        assert "blocks.0.attn.k_bias" not in sd


@pytest.mark.parametrize("kind", list(TINY))
def test_tiny_deterministic_and_rng_neutral(kind):
    state = torch.get_rng_state()
    a, b, c = TINY[kind](seed=0), TINY[kind](seed=0), TINY[kind](seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["cls_token"], sc["cls_token"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        y = a(x)
    assert y.shape == (3, 10) and torch.isfinite(y).all()
    assert (y[0] - y[1]).abs().max() > 1e-3  # output depends on the input


def test_tiny_custom_kwargs():
    m = R.tiny_vit(img_size=48, patch_size=16, embed_dim=32, depth=1, num_heads=2, num_classes=5,
                   init_values=0.1, dynamic_img_size=True)
    assert (m.blocks[0].ls1.gamma != 0.1).any()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 64, 32)).shape == (1, 5)
