"""The INT8 graph's arithmetic in PyTorch ("fake quantisation"), for quantization-aware fine-tuning: the float network
with each integer layer's weight and input rounded to the grid the INT8 graph (vitkit.int8.build) will use, at exactly
the recipe's integer layers (vitkit.int8.recipe.int8_sites), with straight-through gradients.

    weights    int8 symmetric, one scale per output channel (one per tensor without recipe.per_channel, and for
               the patch embedding in dynamic INT8: onnxruntime's ConvInteger holds one weight scale):
               scale = max|w| / q, integers in [-q, q]; q = 64 with 7-bit weights (onnxruntime's reduce_range, CPUs
               without VNNI), else 127
    inputs     u8 asymmetric over [lo, hi] widened to hold 0: scale = (hi - lo) / 255, zero point round(-lo / scale)
                 dynamic  lo, hi = min, max of each image's tensor at that call (batch_one; else of the whole batch)
                 static   lo, hi calibrated once over the calibration pixels on the float network (onnxruntime's
                          MinMax calibration does the same), then fixed: `calibrated_ranges`
    biases     float, except a Conv's or Gemm's (patch embedding, pooled layers) in static QDQ: int32 steps of
               scale_x * scale_w
    float      the float islands, the pooled Gemm layers of dynamic INT8, LayerNorm, softmax, GELU, residual adds
    gradients  straight through the rounding (d round(x) / dx = 1); zero where a fixed static range clips

    with fake_quantized(net, recipe, ranges):   # net computes as the INT8 graph will, inside the block
        logits = net(pixels)
    # after it net is plain again, its weights whatever tuning made them (the INT8 graph is built from those)

Try it:  python -m pytest tests/test_qat.py -q -k matches
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.utils import parametrize

from vitkit.int8.recipe import POOLED_SITES, Recipe, int8_sites
from vitkit.int8.smooth import run_observed

U8_MAX = 255
STATIC_INTEGER_BIAS = ("patch_embed.proj",) + POOLED_SITES  # exported as Conv / Gemm: QDQ rounds their bias too


def weight_levels(seven_bit: bool) -> int:
    """The largest integer of a symmetric int8 weight grid: onnxruntime's reduce_range range is [-64, 64]."""
    return 64 if seven_bit else 127


def weight_scale(weight: torch.Tensor, per_channel: bool, levels: int) -> torch.Tensor:
    """The step of a weight's (out, ...) symmetric integer grid: (out,) per channel, else (1,)."""
    w = weight.detach()
    absmax = w.abs().flatten(1).amax(dim=1) if per_channel else w.abs().amax().reshape(1)  # (out,) or (1,)
    return torch.where(absmax > 0, absmax / levels, torch.ones_like(absmax))


def fake_quant_weight(weight: torch.Tensor, per_channel: bool, levels: int) -> torch.Tensor:
    """A weight (out, ...) rounded to its symmetric integer grid; the gradient passes straight through."""
    w = weight.detach()
    scale = weight_scale(w, per_channel, levels).reshape(-1, *([1] * (w.ndim - 1)))  # (out or 1, 1, ...)
    rounded = torch.clamp(torch.round(w / scale), -levels, levels) * scale
    return weight + (rounded - weight).detach()


def input_scale(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The step of the u8 grid of [lo, hi]."""
    scale = (hi - lo) / U8_MAX
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def fake_quant_input(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """x rounded to the u8 grid of [lo, hi] (lo <= 0 <= hi, broadcastable to x); straight-through gradient inside
    [lo, hi], none outside (where the grid clips)."""
    scale = input_scale(lo, hi)
    zero = torch.clamp(torch.round(-lo / scale), 0, U8_MAX)
    rounded = (torch.clamp(torch.round(x / scale) + zero, 0, U8_MAX) - zero) * scale
    inside = torch.minimum(torch.maximum(x, lo), hi)
    return inside + (rounded - inside).detach()


def _dynamic_range(x: torch.Tensor, per_image: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """lo, hi of each image's values (shape (B, 1, ...)) or of the whole tensor's (scalars), widened to hold 0."""
    t = x.detach()
    rows = t.flatten(1) if per_image else t.reshape(1, -1)  # (B, n) or (1, B * n)
    shape = (-1,) + (1,) * (t.ndim - 1) if per_image else ()
    return rows.amin(dim=1).clamp(max=0).reshape(shape), rows.amax(dim=1).clamp(min=0).reshape(shape)


def _per_channel(site: str, recipe: Recipe) -> bool:
    """Whether the graph holds this site's weight with one scale per output channel."""
    return recipe.per_channel and not (recipe.method == "dynamic" and site == "patch_embed.proj")


def _input_owner(net: nn.Module, site: str) -> nn.Module:
    """The module whose first argument is the site's input: the attention for qkv (it applies qkv.weight itself,
    with F.linear), else the layer."""
    return net.get_submodule(site.rsplit(".", 1)[0] if site.endswith(".attn.qkv") else site)


class _WeightGrid(nn.Module):
    """A parametrization: the weight as the INT8 graph holds it."""

    def __init__(self, per_channel: bool, levels: int):
        super().__init__()
        self.per_channel, self.levels = per_channel, levels

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return fake_quant_weight(weight, self.per_channel, self.levels)


@torch.no_grad()
def calibrated_ranges(net: nn.Module, recipe: Recipe, batches) -> dict[str, tuple[float, float]]:
    """Static INT8: integer layer -> (lo, hi) of its input over `batches` of pixels (B, 3, S, S), on the float
    network, widened to hold 0."""
    found: dict[str, tuple[float, float]] = {}

    def recorder(site: str):
        def record(module, args):
            lo, hi = found.get(site, (0.0, 0.0))
            found[site] = (min(lo, float(args[0].min())), max(hi, float(args[0].max())))
        return record

    handles = [_input_owner(net, site).register_forward_pre_hook(recorder(site)) for site in int8_sites(net, recipe)]
    run_observed(net, handles, batches)
    return found


def _input_rounding(per_image: bool, fixed: tuple[float, float] | None):
    def hook(module, args):
        x = args[0]
        if fixed is None:
            lo, hi = _dynamic_range(x, per_image)
        else:
            lo, hi = (torch.tensor(v, dtype=x.dtype, device=x.device) for v in fixed)
        return (fake_quant_input(x, lo, hi), *args[1:])
    return hook


def _bias_rounding(step_x: float, per_channel: bool, levels: int):
    """Static QDQ's Conv / Gemm bias: int32 steps of scale_x * scale_w, added to the layer's output."""
    def hook(module, args, out):
        weight = module.parametrizations["weight"].original
        step_w = weight_scale(weight, per_channel, levels)  # (out,)
        step = torch.tensor(step_x, dtype=weight.dtype, device=weight.device) * step_w
        bias = module.bias.detach()
        shift = torch.round(bias.double() / step.double()).to(bias.dtype) * step - bias  # (out,)
        return out + shift.reshape(-1, *([1] * (out.ndim - 2)))  # (out, 1, 1) for a Conv's (B, out, gh, gw)
    return hook


@contextlib.contextmanager
def fake_quantized(net: nn.Module, recipe: Recipe, ranges: dict[str, tuple[float, float]] | None = None):
    """Inside the block `net` (changed in place, its parameters the same objects) computes as the recipe's INT8 graph;
    `ranges`: static recipes' `calibrated_ranges`. On exit every rounding is removed, the weights kept as they are."""
    if recipe.method == "static" and ranges is None:
        raise ValueError("static INT8 rounds inputs to calibrated ranges: pass calibrated_ranges(net, recipe, ...)")
    levels = weight_levels(recipe.seven_bit_weights)
    chosen = int8_sites(net, recipe)
    handles = []
    try:
        for site in chosen:
            layer, per_channel = net.get_submodule(site), _per_channel(site, recipe)
            parametrize.register_parametrization(layer, "weight", _WeightGrid(per_channel, levels))
            fixed = None if recipe.method == "dynamic" else ranges[site]
            handles.append(_input_owner(net, site).register_forward_pre_hook(_input_rounding(recipe.batch_one, fixed)))
            if fixed is not None and site in STATIC_INTEGER_BIAS and layer.bias is not None:
                step_x = float(input_scale(*(torch.tensor(v) for v in fixed)))
                handles.append(layer.register_forward_hook(_bias_rounding(step_x, per_channel, levels)))
        yield net
    finally:
        for handle in handles:
            handle.remove()
        for site in chosen:
            layer = net.get_submodule(site)
            if parametrize.is_parametrized(layer, "weight"):
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
