"""The key-map engine: Rename and Fuse rules are inverses in both directions, strictness names the
offending keys, `ignore` drops keys and `passthrough` keeps unclaimed ones. Then the real tables
(transformers, JAX, timm-BEiT) round-trip a vitkit state dict exactly.

Run:  .venv/bin/python -m pytest tests/test_keymap.py -q
"""

from __future__ import annotations

import pytest
import torch

from vitkit.checkpoints.io import CheckpointError
from vitkit.checkpoints.keymap import Fuse, KeyMap, Rename, Transform
from vitkit.checkpoints.layouts import JAX_KEYMAP, hf_keymap, timm_keymap
from vitkit.config import BEIT_FIELDS, ViTConfig

CFG = ViTConfig(image_size=32, patch_size=8, width=12, depth=2, heads=3, mlp_dim=24, num_classes=5)
TRANSPOSE = Transform(lambda t, c: t.T, lambda t, c: t.T)
SCALE = Transform(lambda t, c: t * 2, lambda t, c: t / 2)  # exact in binary floating point

RULES = (
    Rename("enc.{i}.ln.{p}", "blocks.{i}.norm1.{p}"),
    Rename("enc.{i}.fc.kernel", "blocks.{i}.mlp.fc1.weight", TRANSPOSE),
    Rename("cls", "cls_token", SCALE),
    Fuse(("enc.{i}.q.{p}", "enc.{i}.k.{p}", "enc.{i}.v.{p}"), "blocks.{i}.attn.qkv.{p}"),
    Fuse(("enc.{i}.a", "enc.{i}.b"), "blocks.{i}.pair", TRANSPOSE, dim=1),
)
KEYMAP = KeyMap("toy", RULES, ignore=(r"\.index$",))


def foreign_dict() -> dict[str, torch.Tensor]:
    out = {"cls": torch.randn(1, 1, 12)}
    for i in range(2):
        out.update({
            f"enc.{i}.ln.weight": torch.randn(12), f"enc.{i}.ln.bias": torch.randn(12),
            f"enc.{i}.fc.kernel": torch.randn(12, 24),
            f"enc.{i}.a": torch.randn(4, 12), f"enc.{i}.b": torch.randn(4, 12),
        })
        for part in "vkq":  # deliberately not in q, k, v order
            out[f"enc.{i}.{part}.weight"] = torch.randn(12, 12)
            out[f"enc.{i}.{part}.bias"] = torch.randn(12)
    return out


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]):
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


def test_to_native_applies_renames_transforms_and_fuses():
    foreign = foreign_dict()
    native = KEYMAP.to_native(foreign, CFG)
    assert torch.equal(native["blocks.1.norm1.bias"], foreign["enc.1.ln.bias"])
    assert torch.equal(native["blocks.0.mlp.fc1.weight"], foreign["enc.0.fc.kernel"].T)
    assert torch.equal(native["cls_token"], foreign["cls"] * 2)
    # q, k, v concatenated in the rule's order, whatever the order of the checkpoint
    qkv = torch.cat([foreign[f"enc.1.{p}.weight"] for p in "qkv"])
    assert torch.equal(native["blocks.1.attn.qkv.weight"], qkv)
    assert torch.equal(native["blocks.1.attn.qkv.bias"], torch.cat([foreign[f"enc.1.{p}.bias"] for p in "qkv"]))
    # a Fuse's transform applies to each part, then the parts join along `dim`
    assert torch.equal(native["blocks.0.pair"], torch.cat([foreign["enc.0.a"].T, foreign["enc.0.b"].T], dim=1))
    assert len(native) == 1 + 2 * 6


def test_foreign_native_foreign_is_identity():
    foreign = foreign_dict()
    assert_same(KEYMAP.to_foreign(KEYMAP.to_native(foreign, CFG), CFG), foreign)


def test_native_foreign_native_is_identity():
    native = KEYMAP.to_native(foreign_dict(), CFG)
    native = {k: torch.randn_like(v) for k, v in native.items()}
    assert_same(KEYMAP.to_native(KEYMAP.to_foreign(native, CFG), CFG), native)


def test_unexpected_keys_are_named():
    foreign = foreign_dict()
    foreign["enc.0.surprise"] = torch.zeros(1)
    foreign["decoder.head.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        KEYMAP.to_native(foreign, CFG)
    assert "enc.0.surprise" in str(err.value) and "decoder.head.weight" in str(err.value)
    assert "toy" in str(err.value)


def test_placeholders_are_strict():
    """{p} is weight or bias only and {i} digits only: near-misses are unexpected keys, not silently renamed."""
    for key in ("enc.0.ln.running_mean", "enc.x.ln.weight", "enc.0.ln.weight.extra"):
        with pytest.raises(CheckpointError, match="unexpected keys"):
            KEYMAP.to_native({key: torch.zeros(1)}, CFG)


def test_native_key_without_a_rule_is_named_on_save():
    native = KEYMAP.to_native(foreign_dict(), CFG)
    native["blocks.0.mystery"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        KEYMAP.to_foreign(native, CFG)
    assert "blocks.0.mystery" in str(err.value)


def test_fuse_with_a_missing_part_names_it():
    foreign = foreign_dict()
    del foreign["enc.1.k.weight"]
    with pytest.raises(CheckpointError) as err:
        KEYMAP.to_native(foreign, CFG)
    message = str(err.value)
    assert "blocks.1.attn.qkv.weight" in message
    assert "enc.1.k.weight" in message, message  # the checkpoint's key, not the rule's template


def test_ignore_patterns_drop_keys():
    foreign = foreign_dict()
    derived = {"enc.0.relative_position.index": torch.arange(4)}
    assert_same(KEYMAP.to_native(foreign | derived, CFG), KEYMAP.to_native(foreign, CFG))
    # without the allow-list entry the same key is an error
    with pytest.raises(CheckpointError, match="enc.0.relative_position.index"):
        KeyMap("toy", RULES).to_native(foreign | derived, CFG)


def test_passthrough_keeps_unclaimed_keys_both_ways():
    keymap = KeyMap("loose", RULES, passthrough=True)
    foreign = foreign_dict() | {"blocks.0.attn.proj.weight": torch.randn(12, 12), "pos_embed": torch.randn(1, 17, 12)}
    native = keymap.to_native(foreign, CFG)
    assert torch.equal(native["pos_embed"], foreign["pos_embed"])
    assert torch.equal(native["blocks.0.attn.proj.weight"], foreign["blocks.0.attn.proj.weight"])
    assert "blocks.0.norm1.weight" in native and "enc.0.ln.weight" not in native  # rules still apply
    assert_same(keymap.to_foreign(native, CFG), foreign)


# ----------------------------------------------------------------------------- the real tables


def vitkit_state(cfg: ViTConfig) -> dict[str, torch.Tensor]:
    from vitkit.models.vit import VisionTransformer

    return {k: torch.randn_like(v) for k, v in VisionTransformer(cfg).state_dict().items()}


TABLES = {
    "hf-vit": (CFG, lambda c: hf_keymap(c, "vit.")),
    "hf-vit-backbone-pooler": (CFG.replace(num_classes=0, labels=(), pre_logits_dim=12), lambda c: hf_keymap(c, "")),
    "hf-deit-distilled": (CFG.replace(dist_token=True, family="deit"), lambda c: hf_keymap(c, "deit.")),
    "hf-beit-layer-bias": (CFG.replace(**BEIT_FIELDS), lambda c: hf_keymap(c, "beit.")),
    "hf-beit-shared-bias": (CFG.replace(**BEIT_FIELDS | {"rel_pos_bias": "shared", "pool": "cls", "fc_norm": False}),
                            lambda c: hf_keymap(c, "")),
    "jax": (CFG.replace(pre_logits_dim=8), lambda c: JAX_KEYMAP),
    "timm-beit": (CFG.replace(**BEIT_FIELDS), timm_keymap),
}


@pytest.mark.parametrize("table", TABLES)
def test_real_tables_roundtrip(table):
    cfg, make = TABLES[table]
    keymap, native = make(cfg), vitkit_state(cfg)
    foreign = keymap.to_foreign(native, cfg)
    if not keymap.passthrough:
        assert not set(foreign) & set(native), "every native key should be renamed"
    assert_same(keymap.to_native(foreign, cfg), native)


def test_jax_attention_kernels_have_per_head_shapes():
    cfg = CFG
    foreign = JAX_KEYMAP.to_foreign(vitkit_state(cfg), cfg)
    mha = "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/"
    assert foreign[mha + "query/kernel"].shape == (12, 3, 4)  # (D, heads, head_dim)
    assert foreign[mha + "value/bias"].shape == (3, 4)
    assert foreign[mha + "out/kernel"].shape == (3, 4, 12)  # (heads, head_dim, D)
    assert foreign["embedding/kernel"].shape == (8, 8, 3, 12)  # (kh, kw, in, out)
