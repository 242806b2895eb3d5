"""SmoothQuant for vitkit's ViT, folded into the weights before export: the graph gains no op.

INT8 with one scale per activation tensor loses most where a few input channels are much larger than the rest: every
other channel then gets few of the 256 levels. SmoothQuant (Xiao et al. 2023) divides input channel j by s_j and
multiplies the weight's column j by s_j, which leaves x W^T unchanged:

    s_j = max|x_j|^alpha / max|W[:, j]|^(1 - alpha)        (max |x_j| over the calibration images)

The division must happen somewhere that costs nothing at run time:
    qkv   input norm1(x):   norm1.weight /= s, norm1.bias /= s             (LayerNorm is affine per channel)
    fc1   input norm2(x):   norm2.weight /= s, norm2.bias /= s
    proj  input A v:        v's rows of qkv (weight and bias) /= s        (softmax rows sum to 1, so A (v/s) = (A v)/s)
fc2's input is GELU(fc1), which is not linear: it has no place to fold into and is not smoothed.

Try it:  python -m pytest tests/test_quantize.py -q -k smooth
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from vitkit.models.vit import VisionTransformer

# each input's layer (its site name is blocks.{i}.<layer>), and what to hook to see that input: (module, kind)
_LAYERS = {"qkv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
_INPUTS = {"qkv": ("norm1", "output"), "proj": ("attn.proj", "input"), "fc1": ("norm2", "output"),
           "fc2": ("mlp.fc2", "input")}


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


@torch.no_grad()
def activation_absmax(net: VisionTransformer, batches, which=("qkv", "proj", "fc1", "fc2")) -> dict[str, torch.Tensor]:
    """Per-channel max |x| of the inputs of each block's qkv, proj, fc1 (and fc2), over `batches` of pixels
    (B, 3, S, S). -> {"blocks.{i}.attn.qkv": (D,), ...} keyed by site name."""
    found: dict[str, torch.Tensor] = {}
    handles = []
    for i, block in enumerate(net.blocks):
        for kind in which:
            path, where = _INPUTS[kind]
            key = f"blocks.{i}.{_LAYERS[kind]}"

            def record(t: torch.Tensor, key=key):
                m = t.detach().abs().reshape(-1, t.shape[-1]).amax(dim=0).float()  # (channels,)
                found[key] = m if key not in found else torch.maximum(found[key], m)

            module = _get(block, path)
            if where == "output":
                handles.append(module.register_forward_hook(lambda mod, args, out, r=record: r(out)))
            else:
                handles.append(module.register_forward_pre_hook(lambda mod, args, r=record: r(args[0])))
    run_observed(net, handles, batches)
    return found


def run_observed(net, handles: list, batches) -> None:
    """Run `net` in eval mode over `batches` with the hooks `handles` in place, then remove them (whatever
    happens) and restore its mode: the calibration pass of every statistic the INT8 recipe gathers."""
    was_training = net.training
    net.eval()
    try:
        for pixels in batches:
            net(pixels)
    finally:
        for handle in handles:
            handle.remove()
        net.train(was_training)


def smoothing_scales(net: VisionTransformer, absmax: dict[str, torch.Tensor], alpha: float,
                     which=("qkv", "proj", "fc1")) -> dict[str, torch.Tensor]:
    """Site name -> s (in_features,), from the activations' and the weights' per-channel max |.|."""
    scales = {}
    for i, block in enumerate(net.blocks):
        for kind in which:
            key = f"blocks.{i}.{_LAYERS[kind]}"
            weight = _get(block, _LAYERS[kind]).weight.detach().float()  # (out, in)
            a = absmax[key].clamp(min=1e-5)
            w = weight.abs().amax(dim=0).clamp(min=1e-5)  # (in,)
            scales[key] = (a.pow(alpha) / w.pow(1.0 - alpha)).clamp(min=1e-5, max=1e5)
    return scales


def smooth(net: VisionTransformer, scales: dict[str, torch.Tensor]) -> VisionTransformer:
    """A copy of `net` with the scales folded in (same outputs up to float rounding); `net` is untouched."""
    with torch.inference_mode(False), torch.no_grad():  # a copy made under inference_mode could not be exported
        out = copy.deepcopy(net).eval().requires_grad_(False)
        _fold(out, scales)
    return out


def _fold(out: VisionTransformer, scales: dict[str, torch.Tensor]) -> None:
    for i, block in enumerate(out.blocks):
        attn = block.attn
        width = attn.proj.in_features
        if (s := scales.get(f"blocks.{i}.attn.qkv")) is not None:
            block.norm1.weight.div_(s.to(block.norm1.weight.dtype))
            block.norm1.bias.div_(s.to(block.norm1.bias.dtype))
            attn.qkv.weight.mul_(s[None, :].to(attn.qkv.weight.dtype))
        if (s := scales.get(f"blocks.{i}.mlp.fc1")) is not None:
            block.norm2.weight.div_(s.to(block.norm2.weight.dtype))
            block.norm2.bias.div_(s.to(block.norm2.bias.dtype))
            block.mlp.fc1.weight.mul_(s[None, :].to(block.mlp.fc1.weight.dtype))
        if (s := scales.get(f"blocks.{i}.attn.proj")) is not None:
            s = s.to(attn.qkv.weight.dtype)
            attn.qkv.weight[2 * width:].div_(s[:, None])  # v's rows: output channel j of v is proj's input j
            if hasattr(attn, "v_bias"):  # BEiT: q and v biases are their own parameters
                attn.v_bias.div_(s)
            elif attn.qkv.bias is not None:
                attn.qkv.bias[2 * width:].div_(s)
            attn.proj.weight.mul_(s[None, :])
