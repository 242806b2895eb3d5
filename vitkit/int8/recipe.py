"""What an INT8 model is made of: a `Recipe` (frozen, passed whole) and the quantizable layers ("sites").

A site is one weight GEMM of the network, named by its vitkit module path:
    patch_embed.proj                the patch embedding (a convolution with kernel == stride)
    blocks.{i}.attn.qkv             input: norm1(x)          -> smoothing folds into norm1
    blocks.{i}.attn.proj            input: softmax(qk) v     -> smoothing folds into v's rows of qkv
    blocks.{i}.mlp.fc1              input: norm2(x)          -> smoothing folds into norm2
    blocks.{i}.mlp.fc2              input: GELU(fc1)         -> no place to fold a scale (GELU is not linear)
    pre_logits.fc, head, head_dist  the pooler and classifier(s), on pooled (B, D) features: Gemm in the graph, so
                                    float in dynamic INT8 (onnxruntime has no dynamic integer Gemm)
Everything else (LayerNorm, softmax and its inputs q k^T, the attention-weighted sum, GELU, residual adds, position
embedding) always stays in float: only weight GEMMs are quantized (DESIGN.md, "Known traps").

Try it:  python -c "from vitkit.int8.recipe import RECIPES; print(RECIPES['default'])"
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

METHODS = ("dynamic", "static")


@dataclass(frozen=True)
class Recipe:
    """How to quantize. The default is the measured best on the real DeiT-Tiny (docs/quantization-report.md).

    method        "dynamic": activations quantized at run time, per image (u8, range of that image's tensor);
                  "static": activations quantized with ranges calibrated once (u8, min/max over the calibration set).
    per_channel   weights int8 symmetric, one scale per output channel (else one per tensor).
    keep_float    site-name prefixes that stay in float ("float islands"), e.g. "patch_embed", "blocks.0", "head".
    smooth_alpha  SmoothQuant: move activation range into the weights with a per-channel scale
                  s = max|x|^alpha / max|w|^(1 - alpha), folded into the preceding LayerNorm (qkv, fc1) or into v
                  (proj), so the graph gains no op. None: off.
    smooth_sites  which of "qkv", "proj", "fc1" to smooth.
    batch_one     dynamic only: export the graph with batch 1 so that every image gets its own activation ranges
                  (a dynamic-batch graph shares one range across the batch: results would depend on what else is in
                  the batch, and get worse with larger batches).
    fused_attention  dynamic only, ViT/DeiT: one onnxruntime `Attention` node per block (vitkit.int8.fused),
                  quantized as `QAttention`; static QDQ cannot quantize that op, so static keeps the portable graph.
    reduce_range  7-bit weights (onnxruntime's reduce_range). None (default): when the CPU building the graph has
                  no VNNI / AMX-INT8, whose AVX2 u8 x s8 kernels can saturate int16 sums (measured: one confident
                  top-1 flip on the real DeiT-Tiny's 100 photos on an AVX2-only EPYC); else 8-bit.
    """

    method: str = "dynamic"
    per_channel: bool = True
    keep_float: tuple[str, ...] = ("patch_embed", "blocks.0.")
    smooth_alpha: float | None = 0.7
    smooth_sites: tuple[str, ...] = ("qkv", "proj", "fc1")
    batch_one: bool = True
    fused_attention: bool = True
    reduce_range: bool | None = None

    @property
    def seven_bit_weights(self) -> bool:
        """reduce_range resolved for this CPU."""
        if self.reduce_range is not None:
            return self.reduce_range
        from vitkit.cpu import has_int8_dot

        return not has_int8_dot()

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown INT8 method {self.method!r}: choose {' or '.join(METHODS)}")
        bad = set(self.smooth_sites) - {"qkv", "proj", "fc1"}
        if bad:
            raise ValueError(f"cannot smooth {sorted(bad)}: only qkv, proj and fc1 have a place to fold the scale")
        if self.method == "static" and self.fused_attention:
            object.__setattr__(self, "fused_attention", False)  # QDQ has no quantized form of the fused op
        if self.smooth_alpha is not None and not 0.0 <= self.smooth_alpha <= 1.0:
            raise ValueError(f"smooth_alpha must be in [0, 1], got {self.smooth_alpha}")

    def replace(self, **changes) -> "Recipe":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "reduce_range": self.seven_bit_weights}  # as built on this CPU

    @property
    def needs_calibration(self) -> bool:
        return self.method == "static" or self.smooth_alpha is not None

    def describe(self) -> str:
        parts = [f"{self.method} INT8 activations" + (" per image" if self.method == "dynamic" and self.batch_one
                                                       else ""),
                 "per-channel weights" if self.per_channel else "per-tensor weights"]
        if self.keep_float:
            parts.append("float " + ", ".join(p.rstrip(".") for p in self.keep_float))
        if self.smooth_alpha is not None:
            parts.append(f"SmoothQuant alpha {self.smooth_alpha:g} on {'/'.join(self.smooth_sites)}")
        if self.fused_attention:
            parts.append("fused attention op")
        if self.seven_bit_weights:
            parts.append("7-bit weights (no VNNI on this CPU)")
        return "; ".join(parts)


# The steps of docs/quantization-report.md, in order: each adds one thing to the one before.
RECIPES: dict[str, Recipe] = {
    "dynamic-plain": Recipe("dynamic", per_channel=False, keep_float=(), smooth_alpha=None, batch_one=False,
                            fused_attention=False),
    "dynamic-per-channel": Recipe("dynamic", keep_float=(), smooth_alpha=None, batch_one=False, fused_attention=False),
    "dynamic-per-image": Recipe("dynamic", keep_float=(), smooth_alpha=None, fused_attention=False),
    "dynamic-islands": Recipe("dynamic", smooth_alpha=None, fused_attention=False),
    "dynamic-smooth": Recipe("dynamic", fused_attention=False),
    "default": Recipe(),
    "static": Recipe("static", keep_float=(), smooth_alpha=None),
    "static-islands": Recipe("static", smooth_alpha=None),
    "static-smooth": Recipe("static"),
}


def default_recipe(method: str = "dynamic") -> Recipe:
    return RECIPES["default"] if method == "dynamic" else RECIPES["static-smooth"]


def sites(net: nn.Module) -> dict[str, nn.Module]:
    """Site name -> the module that owns its weight, in forward order (see the module docstring)."""
    out: dict[str, nn.Module] = {"patch_embed.proj": net.patch_embed.proj}
    for i, block in enumerate(net.blocks):
        out[f"blocks.{i}.attn.qkv"] = block.attn.qkv
        out[f"blocks.{i}.attn.proj"] = block.attn.proj
        out[f"blocks.{i}.mlp.fc1"] = block.mlp.fc1  # SwiGLU too: one [gate | value] projection
        out[f"blocks.{i}.mlp.fc2"] = block.mlp.fc2
    pre = getattr(net, "pre_logits", None)
    if pre is not None and isinstance(getattr(pre, "fc", None), nn.Linear):
        out["pre_logits.fc"] = pre.fc
    for name in ("head", "head_dist"):
        if isinstance(getattr(net, name, None), nn.Linear):
            out[name] = getattr(net, name)
    return out


def quantized_sites(net: nn.Module, recipe: Recipe) -> list[str]:
    """The sites this recipe quantizes (all but its float islands)."""
    return [name for name in sites(net) if not any(name.startswith(prefix) for prefix in recipe.keep_float)]


# layers on pooled (B, D) features: the exporter writes them as Gemm, which onnxruntime's dynamic quantizer has no
# integer form of
POOLED_SITES = ("pre_logits.fc", "head", "head_dist")


def int8_sites(net: nn.Module, recipe: Recipe) -> list[str]:
    """The sites the INT8 graph of this recipe computes in integers: `quantized_sites`, less the pooled layers in
    dynamic mode. The graph builder (vitkit.int8.build) and its PyTorch emulation (vitkit.int8.fake_quant) both
    take their layers from here."""
    chosen = quantized_sites(net, recipe)
    return [s for s in chosen if s not in POOLED_SITES] if recipe.method == "dynamic" else chosen
