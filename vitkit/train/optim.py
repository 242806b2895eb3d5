"""What trains and how fast: recipes (linear probe, freeze the first N blocks, full), AdamW parameter groups
with weight-decay exclusions and layer-wise learning-rate decay.

Layer ids (`VisionTransformer.layer_of`): the embedding (patch projection, class/distillation tokens, positions,
a shared BEiT table) is layer 0, block i is layer i + 1, everything after the blocks (final norm, fc_norm,
pre-logits, heads) is layer depth + 1. With decay d, layer l trains at lr * d ** (depth + 1 - l): the head at the full rate.

Try it:  python -m pytest tests/test_train_optim.py -q
"""

from __future__ import annotations

import torch

from vitkit.models.vit import VisionTransformer

RECIPES = ("linear-probe", "freeze", "full")
NO_DECAY_NAMES = ("cls_token", "dist_token", "reg_token", "pos_embed", "rel_pos.table", "attn_pool.latent")


def apply_recipe(net: VisionTransformer, recipe: str, freeze_blocks: int = 0) -> None:
    """Sets requires_grad: 'linear-probe' trains the head(s) only; 'freeze' freezes the embedding and the
    first `freeze_blocks` blocks; 'full' trains everything."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}: choose {', '.join(RECIPES)}")
    if recipe == "freeze" and not 0 <= freeze_blocks <= net.config.depth:
        raise ValueError(f"--freeze-blocks {freeze_blocks} outside 0..{net.config.depth}")
    for name, param in net.named_parameters():
        layer = net.layer_of(name)
        if recipe == "linear-probe":
            param.requires_grad = name.startswith(("head.", "head_dist."))
        elif recipe == "freeze":
            param.requires_grad = layer > freeze_blocks
        else:
            param.requires_grad = True


def param_groups(net: VisionTransformer, lr: float, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups by (layer, decay or not). Biases, norm and layer-scale vectors, tokens, positions and
    BEiT tables get no weight decay. Each group records its `lr_scale` so schedules can rescale it."""
    depth = net.config.depth
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in net.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or name.endswith(NO_DECAY_NAMES) or name in NO_DECAY_NAMES
        layer = net.layer_of(name)
        scale = layer_decay ** (depth + 1 - layer)
        group = groups.setdefault((layer, no_decay), {
            "params": [], "names": [], "lr": lr * scale, "lr_scale": scale,
            "weight_decay": 0.0 if no_decay else weight_decay})
        group["params"].append(param)
        group["names"].append(name)
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    return [groups[key] for key in sorted(groups)]


def build_optimizer(net: VisionTransformer, lr: float, weight_decay: float = 0.05, layer_decay: float = 1.0,
                    betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    groups = param_groups(net, lr, weight_decay, layer_decay)
    for group in groups:
        del group["names"]  # optimizer state dicts must stay tensors and numbers
    return torch.optim.AdamW(groups, lr=lr, betas=betas)
