"""The one model: variants as data, both attention paths, features/heads/intermediates, training helpers."""

from __future__ import annotations

import pytest
import torch

from vitkit.config import BEIT_FIELDS, ViTConfig, variant
from vitkit.models.registry import ARCHS
from vitkit.models.vit import VisionTransformer

TINY = dict(image_size=32, patch_size=8, width=48, depth=3, heads=3, mlp_dim=96, num_classes=7)
FAMILIES = {
    "vit": ViTConfig(**TINY),
    "deit-distilled": ViTConfig(**TINY, dist_token=True, family="deit"),
    "beit": ViTConfig(**TINY, **BEIT_FIELDS),
    "beit-shared": ViTConfig(**TINY, **(BEIT_FIELDS | {"rel_pos_bias": "shared", "pool": "cls", "fc_norm": False})),
    "backbone": ViTConfig(**(TINY | {"num_classes": 0})),
    "pre-logits": ViTConfig(**TINY, pre_logits_dim=32),
}


def _random(cfg: ViTConfig, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    net = VisionTransformer(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net


@pytest.mark.parametrize(("name", "width", "depth", "heads", "patch"),
                         [("Ti/16", 192, 12, 3, 16), ("S/32", 384, 12, 6, 32), ("B/16", 768, 12, 12, 16),
                          ("L/16", 1024, 24, 16, 16), ("H/14", 1280, 32, 16, 14)])
def test_variants_are_rows_of_a_table(name, width, depth, heads, patch):
    cfg = variant(name)
    assert (cfg.width, cfg.depth, cfg.heads, cfg.patch_size) == (width, depth, heads, patch)
    assert variant(f"{name}@{patch * 24}").image_size == patch * 24


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        ViTConfig(width=50, heads=3)
    with pytest.raises(ValueError, match="multiple"):
        ViTConfig(image_size=100, patch_size=16)
    with pytest.raises(ValueError, match="unknown variant"):
        variant("X/16")


@pytest.mark.parametrize("name", FAMILIES)
def test_fused_and_readable_attention_agree(name):
    net = _random(FAMILIES[name])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fused = net(x)
        net.set_fused_attention(False)
        readable = net(x)
    assert (fused - readable).abs().max() < 1e-5


@pytest.mark.parametrize("name", FAMILIES)
def test_output_shapes_and_any_input_size(name):
    cfg = FAMILIES[name]
    net = _random(cfg)
    for side in (32, 48, 24):
        x = torch.randn(2, 3, side, side)
        with torch.no_grad():
            tokens = net.forward_features(x)
            out = net(x)
        assert tokens.shape == (2, cfg.num_prefix_tokens + (side // 8) ** 2, 48)
        assert out.shape == (2, cfg.num_classes or cfg.pre_logits_dim or cfg.width)


def test_intermediates_are_block_outputs_in_the_requested_order():
    net = _random(FAMILIES["vit"])
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        every = net.forward_intermediates(x, [0, 1, 2])
        picked = net.forward_intermediates(x, [-1, 0])
        normed = net.forward_intermediates(x, [-1], norm=True)[0]
        features = net.forward_features(x)
    assert torch.equal(picked[0], every[2]) and torch.equal(picked[1], every[0])
    assert torch.equal(normed, features)
    with pytest.raises(IndexError):
        net.forward_intermediates(x, [3])


def test_attention_maps_are_row_stochastic_and_per_block():
    net = _random(FAMILIES["beit"])
    maps = net.attention_maps(torch.randn(2, 3, 32, 32))
    assert len(maps) == 3 and maps[0].shape == (2, 3, 17, 17)
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, 3, 17))
    assert all(block.attn.fused for block in net.blocks)  # normal inference keeps SDPA


def test_distilled_head_averages_class_and_distillation_heads():
    net = _random(FAMILIES["deit-distilled"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = net.forward_features(x)
        expected = (net.head(tokens[:, 0]) + net.head_dist(tokens[:, 1])) / 2
        features = net.forward_head(tokens, pre_logits=True)
        assert torch.allclose(net(x), expected, atol=1e-6)
        assert torch.allclose(features, (tokens[:, 0] + tokens[:, 1]) / 2, atol=1e-6)


def test_beit_pools_the_mean_of_patch_tokens_through_fc_norm():
    net = _random(FAMILIES["beit"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = net.forward_features(x)
        assert torch.allclose(net.forward_head(tokens, pre_logits=True), net.fc_norm(tokens[:, 1:].mean(1)))
    assert isinstance(net.norm, torch.nn.Identity) and not hasattr(net, "pos_embed")


def test_gradient_checkpointing_gives_the_same_gradients():
    cfg = FAMILIES["beit"]
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for checkpointing in (False, True):
        net = _random(cfg).train()
        net.grad_checkpointing = checkpointing
        net(x).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_drop_path_only_acts_in_training():
    net = _random(ViTConfig(**TINY, drop_path=0.5))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), net(x))
        torch.manual_seed(1)
        train_a = net.train()(x)
        torch.manual_seed(2)
        train_b = net(x)
    assert not torch.allclose(train_a, train_b)


def test_position_resampling_is_cached_until_the_weights_change():
    net = _random(FAMILIES["vit"])
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        first = net(x)
        cached = net._pos_cache._store[(6, 6)][1]
        assert torch.equal(net(x), first) and net._pos_cache._store[(6, 6)][1] is cached
        net.pos_embed.add_(torch.randn_like(net.pos_embed))  # (a constant shift would vanish in LayerNorm)
        assert not torch.allclose(net(x), first)
        assert net._pos_cache._store[(6, 6)][1] is not cached


@pytest.mark.parametrize("name", ["vit_base_patch16_224", "deit_base_distilled_patch16_224", "beit_base_patch16_224"])
def test_full_size_architectures_have_the_published_parameter_counts(name):
    published = {"vit_base_patch16_224": 86_567_656, "deit_base_distilled_patch16_224": 87_338_192,
                 "beit_base_patch16_224": 86_530_984}
    with torch.device("meta"):
        net = VisionTransformer(ARCHS[name].config)
    assert sum(p.numel() for p in net.parameters()) == published[name]
