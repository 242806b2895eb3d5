"""What trains and how fast (vitkit/train/optim.py, schedule.py, ema.py), on tiny networks of every kind
(plain ViT, distilled DeiT, BEiT with per-layer and with shared relative-position tables, a pre-logits layer):

- `apply_recipe`: linear-probe trains the head(s) only (head_dist too); 'freeze N' freezes the embedding
  (patch projection, tokens, positions, a shared BEiT table) and blocks 0..N-1 (with their BEiT tables);
  'full' trains everything; bad recipes and out-of-range N are refused;
- `param_groups`: no weight decay for biases, norms, layer-scale gammas, cls/dist tokens, pos_embed and
  relative-position tables, weight decay for every matrix; layer-wise lr scale decay ** (depth + 1 - layer)
  with the embedding at layer 0 and everything after the blocks at depth + 1; frozen parameters absent;
  every parameter in exactly one group; all frozen is an error;
- `lr_at`: linear warmup to the base rate, cosine down to min_lr, monotone after warmup, known values;
  `set_lr` applies each group's lr_scale;
- `EMA`: avg <- decay * avg + (1 - decay) * current, decay in (0, 1) only, a frozen copy in eval mode.

Run:  .venv/bin/python -m pytest tests/test_train_optim.py -q
"""

from __future__ import annotations

import math

import pytest
import torch

from vitkit.config import BEIT_FIELDS, ViTConfig
from vitkit.models.vit import VisionTransformer
from vitkit.train.ema import EMA
from vitkit.models.vit import layer_id
from vitkit.train.optim import apply_recipe, build_optimizer, param_groups
from vitkit.train.schedule import lr_at, set_lr

DEPTH = 3
TINY = dict(image_size=16, patch_size=8, width=16, depth=DEPTH, heads=2, mlp_dim=32, num_classes=5)
NETS = {
    "vit": dict(TINY),
    "deit-distilled": dict(TINY, dist_token=True, family="deit"),
    "beit-layer-tables": dict(TINY, **BEIT_FIELDS),
    "beit-shared-table": dict(TINY, **dict(BEIT_FIELDS, rel_pos_bias="shared")),
    "vit-pre-logits": dict(TINY, pre_logits_dim=24),
}
EMBEDDING = ("patch_embed.", "cls_token", "dist_token", "pos_embed", "rel_pos.")  # layer 0 by the docstring


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(kind: str) -> VisionTransformer:
    return VisionTransformer(ViTConfig(**NETS[kind]))


def expected_layer(name: str) -> int:
    """The documented layer of a parameter, written out independently of vitkit.models.vit.layer_id."""
    if name.startswith(EMBEDDING):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return DEPTH + 1


def expected_no_decay(name: str, param: torch.Tensor) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return (leaf in ("bias", "q_bias", "v_bias", "gamma", "cls_token", "dist_token", "pos_embed")
            or name.endswith("rel_pos.table") or ".norm" in f".{name}" or "fc_norm" in name)


def trainable(net) -> set[str]:
    return {n for n, p in net.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------- the networks themselves


def test_the_tiny_networks_have_every_kind_of_parameter():
    names = {kind: {n for n, _ in build(kind).named_parameters()} for kind in NETS}
    assert {"cls_token", "pos_embed", "head.weight"} <= names["vit"]
    assert {"dist_token", "head_dist.weight", "head_dist.bias"} <= names["deit-distilled"]
    assert {f"blocks.{i}.rel_pos.table" for i in range(DEPTH)} <= names["beit-layer-tables"]
    assert {"blocks.0.ls1.gamma", "blocks.0.attn.q_bias", "blocks.0.attn.v_bias", "fc_norm.weight"} \
        <= names["beit-layer-tables"]
    assert "pos_embed" not in names["beit-layer-tables"]
    assert "rel_pos.table" in names["beit-shared-table"]
    assert "pre_logits.fc.weight" in names["vit-pre-logits"]


@pytest.mark.parametrize("kind", NETS)
def test_layer_ids_follow_the_docstring(kind):
    for name, _ in build(kind).named_parameters():
        assert layer_id(name, DEPTH) == expected_layer(name), name


# ----------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("kind", NETS)
def test_linear_probe_trains_the_heads_only(kind):
    net = build(kind)
    apply_recipe(net, "linear-probe")
    heads = {"head.weight", "head.bias"}
    if kind == "deit-distilled":
        heads |= {"head_dist.weight", "head_dist.bias"}
    assert trainable(net) == heads


@pytest.mark.parametrize("kind", NETS)
@pytest.mark.parametrize("blocks", range(DEPTH + 1))
def test_freeze_n_freezes_the_embedding_and_the_first_n_blocks(kind, blocks):
    net = build(kind)
    apply_recipe(net, "freeze", blocks)
    for name, param in net.named_parameters():
        frozen = name.startswith(EMBEDDING) or (name.startswith("blocks.") and int(name.split(".")[1]) < blocks)
        assert param.requires_grad is not frozen, (name, blocks)
    names = {n for n, _ in net.named_parameters()}
    # the things that are easy to forget, by name
    for name in ("pos_embed", "cls_token", "dist_token", "rel_pos.table", "patch_embed.proj.weight"):
        if name in names:
            assert name not in trainable(net), name
    if "blocks.0.rel_pos.table" in names:  # a BEiT table follows its block
        assert ("blocks.0.rel_pos.table" in trainable(net)) is (blocks == 0)
        assert ("blocks.2.rel_pos.table" in trainable(net)) is (blocks < 3)
    assert {"head.weight", "norm.weight" if "norm.weight" in names else "fc_norm.weight"} <= trainable(net)


@pytest.mark.parametrize("kind", NETS)
def test_full_trains_everything_even_after_another_recipe(kind):
    net = build(kind)
    apply_recipe(net, "linear-probe")
    apply_recipe(net, "full")
    assert trainable(net) == {n for n, _ in net.named_parameters()}


def test_bad_recipes_are_refused():
    net = build("vit")
    with pytest.raises(ValueError, match="unknown recipe 'probe'"):
        apply_recipe(net, "probe")
    for blocks in (-1, DEPTH + 1):
        with pytest.raises(ValueError, match=f"--freeze-blocks {blocks} outside 0..{DEPTH}"):
            apply_recipe(net, "freeze", blocks)


# ----------------------------------------------------------------------------- parameter groups


@pytest.mark.parametrize("kind", NETS)
def test_weight_decay_exclusions(kind):
    net = build(kind)
    groups = param_groups(net, lr=1e-3, weight_decay=0.05)
    seen = {}
    for group in groups:
        assert len(group["params"]) == len(group["names"])
        for name, param in zip(group["names"], group["params"]):
            assert name not in seen, f"{name} in two groups"
            seen[name] = group["weight_decay"]
            assert param is net.get_parameter(name)
    assert set(seen) == {n for n, _ in net.named_parameters()}, "every trainable parameter in one group"
    for name, param in net.named_parameters():
        assert seen[name] == (0.0 if expected_no_decay(name, param) else 0.05), name
    decayed = {n for n, wd in seen.items() if wd}
    assert all(net.get_parameter(n).ndim >= 2 for n in decayed)
    assert "patch_embed.proj.weight" in decayed and "head.weight" in decayed and "blocks.0.mlp.fc1.weight" in decayed
    never = {"cls_token", "dist_token", "pos_embed", "rel_pos.table", "blocks.1.rel_pos.table", "blocks.1.ls1.gamma",
             "blocks.1.ls2.gamma", "blocks.1.attn.q_bias", "blocks.1.attn.v_bias", "blocks.1.norm1.weight",
             "blocks.1.norm1.bias", "head.bias", "head_dist.bias", "norm.weight", "fc_norm.weight",
             "pre_logits.fc.bias"}
    for name in never & set(seen):
        assert seen[name] == 0.0, name


@pytest.mark.parametrize("kind", ["vit", "deit-distilled", "beit-layer-tables", "beit-shared-table"])
@pytest.mark.parametrize("decay", [1.0, 0.65, 0.5])
def test_layer_wise_lr_scales(kind, decay):
    net = build(kind)
    lr = 2e-3
    groups = param_groups(net, lr=lr, weight_decay=0.05, layer_decay=decay)
    keys = []
    for group in groups:
        layers = {expected_layer(n) for n in group["names"]}
        assert len(layers) == 1, group["names"]
        layer = layers.pop()
        keys.append((layer, group["weight_decay"] == 0.0))
        assert group["lr_scale"] == pytest.approx(decay ** (DEPTH + 1 - layer), rel=1e-12)
        assert group["lr"] == pytest.approx(lr * decay ** (DEPTH + 1 - layer), rel=1e-12)
    assert keys == sorted(keys) and len(set(keys)) == len(keys), "one group per (layer, decay or not), in order"
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    assert scale["head.weight"] == 1.0
    assert scale["patch_embed.proj.weight"] == pytest.approx(decay ** (DEPTH + 1))
    assert scale["blocks.0.norm1.weight"] == pytest.approx(decay ** DEPTH)
    assert scale[f"blocks.{DEPTH - 1}.mlp.fc2.weight"] == pytest.approx(decay)
    for name in ("cls_token", "pos_embed", "dist_token", "rel_pos.table"):
        if name in scale:
            assert scale[name] == pytest.approx(decay ** (DEPTH + 1)), name
    if "blocks.1.rel_pos.table" in scale:
        assert scale["blocks.1.rel_pos.table"] == pytest.approx(decay ** (DEPTH - 1))
    if "head_dist.weight" in scale:
        assert scale["head_dist.weight"] == 1.0
    if "fc_norm.weight" in scale:
        assert scale["fc_norm.weight"] == 1.0


@pytest.mark.parametrize("kind", NETS)
def test_frozen_parameters_are_left_out(kind):
    net = build(kind)
    apply_recipe(net, "freeze", 2)
    groups = param_groups(net, lr=1e-3, weight_decay=0.05, layer_decay=0.7)
    names = {n for g in groups for n in g["names"]}
    assert names == trainable(net)
    assert all(expected_layer(n) > 2 for n in names)
    apply_recipe(net, "linear-probe")
    names = {n for g in param_groups(net, 1e-3, 0.05) for n in g["names"]}
    assert names == trainable(net) and all(n.startswith(("head.", "head_dist.")) for n in names)


def test_all_frozen_is_an_error():
    net = build("vit")
    for p in net.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        param_groups(net, 1e-3, 0.05)
    with pytest.raises(ValueError, match="nothing to train"):
        build_optimizer(net, 1e-3)


def test_build_optimizer_keeps_lr_scale_and_drops_names():
    net = build("beit-layer-tables")
    optimizer = build_optimizer(net, 1e-3, weight_decay=0.1, layer_decay=0.5)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert all("names" not in g and "lr_scale" in g for g in optimizer.param_groups)
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.1}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(net.parameters()))
    set_lr(optimizer, 4e-3)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(4e-3 * group["lr_scale"], rel=1e-12)
    torch.optim.AdamW(optimizer.param_groups).state_dict()  # the groups hold only what a state dict can


# ----------------------------------------------------------------------------- the schedule


def test_lr_warmup_is_linear_up_to_the_base_rate():
    base, warmup, total = 1e-3, 10, 100
    for step in range(warmup):
        assert lr_at(step, base, warmup, total) == pytest.approx(base * (step + 1) / warmup, rel=1e-12)
    assert lr_at(warmup - 1, base, warmup, total) == pytest.approx(base)
    assert lr_at(warmup, base, warmup, total, min_lr=1e-6) == pytest.approx(base)
    rates = [lr_at(s, base, warmup, total) for s in range(warmup)]
    assert all(b > a for a, b in zip(rates, rates[1:]))
    assert rates[0] > 0, "the first step trains"


def test_lr_cosine_down_to_min_lr():
    base, warmup, total, low = 1e-3, 10, 110, 1e-5
    assert lr_at(60, base, warmup, total, low) == pytest.approx(low + 0.5 * (base - low), rel=1e-12)  # halfway
    assert lr_at(35, base, warmup, total, low) == pytest.approx(
        low + 0.5 * (base - low) * (1 + math.cos(math.pi * 0.25)), rel=1e-12)
    assert lr_at(total, base, warmup, total, low) == pytest.approx(low, rel=1e-12)
    assert lr_at(total + 50, base, warmup, total, low) == pytest.approx(low, rel=1e-12)  # stays at the floor
    after = [lr_at(s, base, warmup, total, low) for s in range(warmup, total + 5)]
    assert all(b <= a for a, b in zip(after, after[1:])), "monotone after warmup"
    assert min(after) >= low and max(after) <= base


def test_lr_without_warmup_starts_at_the_base_rate():
    assert lr_at(0, 0.1, 0, 10) == pytest.approx(0.1)
    assert lr_at(5, 0.1, 0, 10) == pytest.approx(0.05)
    assert lr_at(10, 0.1, 0, 10) == pytest.approx(0.0, abs=1e-15)
    assert lr_at(0, 0.1, 0, 0) == pytest.approx(0.1), "no division by zero on an empty schedule"


# ----------------------------------------------------------------------------- EMA


def test_ema_update_formula():
    torch.manual_seed(0)
    net = build("beit-layer-tables")
    ema = EMA(net, 0.9)
    start = {k: v.clone() for k, v in ema.state_dict().items()}
    assert all(torch.equal(start[k], v) for k, v in net.state_dict().items())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    current = {k: v.clone() for k, v in net.state_dict().items()}
    ema.update(net)
    for name, value in ema.state_dict().items():
        torch.testing.assert_close(value, 0.9 * start[name] + 0.1 * current[name], rtol=0, atol=1e-6)
    second = {k: v.clone() for k, v in ema.state_dict().items()}
    ema.update(net)
    for name, value in ema.state_dict().items():
        torch.testing.assert_close(value, 0.9 * second[name] + 0.1 * current[name], rtol=0, atol=1e-6)
    assert all(torch.equal(current[k], v) for k, v in net.state_dict().items()), "the live net is untouched"


def test_ema_is_a_frozen_copy_and_round_trips():
    net = build("vit").train()
    ema = EMA(net, 0.5)
    assert not ema.net.training
    assert not any(p.requires_grad for p in ema.net.parameters())
    assert all(p.requires_grad for p in net.parameters()) and net.training, "the live net keeps training"
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(ema.net.parameters(), net.parameters()))
    other = EMA(build("vit"), 0.5)
    other.load_state_dict(ema.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), ema.state_dict().values()))


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5])
def test_ema_decay_must_be_in_the_open_unit_interval(decay):
    with pytest.raises(ValueError, match=r"EMA decay must be in \(0, 1\)"):
        EMA(build("vit"), decay)
