"""Linear layers on oneDNN pre-packed weights, and the inference-only block that uses them.

PyTorch's default CPU `nn.Linear` (MKL sgemm on a plain row-major weight) reaches ~42% of this
machine's fp32 peak; oneDNN's inner product on a weight reordered once into its blocked layout
(`torch.ops.mkldnn._reorder_linear_weight`, run by `torch.ops.mkldnn._linear_pointwise`) reaches
70-80%, with the same results up to float rounding (max abs logit diff ~1e-6). The same op takes
bf16 weights and inputs and fuses a GELU (after fc1) or the residual add (after attn.proj, mlp.fc2).

The packed weight *replaces* the fp32 one: the module keeps no other copy (peak memory stays one set
of weights). `state_dict()` still yields the original keys and a dense fp32 weight, unpacked on demand,
so a prepared network can be saved; it cannot be trained or loaded into.

Try it:  python -m pytest tests/test_runtime.py -q -k packed
"""

from __future__ import annotations

import torch
from torch import nn

from vitkit.models.layers import Attention, Block, LayerScale, PatchEmbed, attend
from vitkit.models.rope import rotate_patches
from vitkit.runtime.memory import release_file_pages

# (oneDNN post-op, algorithm): exact erf GELU, tanh GELU (SigLIP); quick-GELU (CLIP) has no post-op: run after
ACTIVATIONS = {"none": ("none", ""), "gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh")}


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """y = act(x W^T + b) [+ residual] with W held only in oneDNN's packed layout (CPU, inference only).

    `weight` (out, in) and `bias` (out,) are consumed: pass tensors the caller drops afterwards.
    `dtype` is the compute dtype (float32 or bfloat16); inputs must already be in it.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype = torch.float32,
                 activation: str = "none", save_bias: bool = True):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.attr, self.algorithm = ACTIVATIONS[activation]
        self.save_bias = save_bias and bias is not None  # False: the bias is not this module's own key (BEiT q/v)
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dtype).contiguous())
        self.register_buffer("packed_weight", packed, persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().to(dtype).clone(), persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        """A dense copy (out, in) of the packed weight, made on demand (e.g. for saving)."""
        return self.packed_weight.to_dense()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if residual is not None:  # x W^T + b + residual in one pass (activation must be "none")
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.packed_weight, self.bias, "add")
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, self.attr, [], self.algorithm)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.weight.float()
        if self.save_bias:
            destination[prefix + "bias"] = self.bias.float()

    def _load_from_state_dict(self, *args, **kwargs):
        raise RuntimeError("a prepared (packed, inference-only) network cannot load weights: load them into "
                           "the plain VisionTransformer, then call vitkit.runtime.prepare again")

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"dtype={self.packed_weight.dtype}, activation={self.attr}")


def packed_linear(linear: nn.Linear, dtype: torch.dtype, activation: str = "none",
                scale: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                save_bias: bool = True) -> nn.Module:
    """`linear` -> PackedLinear, optionally folding a per-output `scale` (layer scale:
    gamma * (W x + b) = (gamma W) x + gamma b) and replacing its bias (BEiT's q, 0, v)."""
    weight, bias = linear.weight.detach(), (linear.bias if bias is None else bias)
    bias = None if bias is None else bias.detach()
    if scale is not None:
        scale = scale.detach().float()
        weight = weight.float() * scale[:, None]
        bias = (bias.float() if bias is not None else torch.zeros_like(scale)) * scale
    return PackedLinear(weight, bias, dtype, activation, save_bias)


class PackedPatchEmbed(nn.Module):
    """`layers.PatchEmbed` as a packed linear layer on the unfolded patches: the patch convolution has
    kernel == stride, so it is one matrix product (B*gh*gw, C*p*p) @ (C*p*p, D), which oneDNN's inner
    product runs 1.3x (fp32) to 3x (bf16) faster than its convolution. Pixels past the last whole patch are
    ignored, as the convolution does."""

    def __init__(self, embed: PatchEmbed, dtype: torch.dtype):
        super().__init__()
        conv = embed.proj
        self.patch = conv.kernel_size[0]
        self.weight_shape = tuple(conv.weight.shape)  # (D, C, p, p)
        assert conv.kernel_size == conv.stride and conv.kernel_size[0] == conv.kernel_size[1], conv
        self.proj = PackedLinear(conv.weight.detach().reshape(conv.out_channels, -1), conv.bias, dtype)
        release_file_pages([conv.weight])
        conv.weight = None

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        B, C, H, W = pixels.shape
        p = self.patch
        gh, gw = H // p, W // p
        if (H, W) != (gh * p, gw * p):
            pixels = pixels[:, :, : gh * p, : gw * p]
        patches = pixels.reshape(B, C, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)  # (B, gh, gw, C, p, p)
        patches = patches.reshape(B, gh * gw, C * p * p)  # (B, gh*gw, C*p*p): the conv's (C, kh, kw) order
        return self.proj(patches), (gh, gw)  # (B, gh*gw, D)

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        destination = {} if destination is None else destination
        destination[prefix + "proj.weight"] = self.proj.weight.float().reshape(self.weight_shape)
        destination[prefix + "proj.bias"] = self.proj.bias.float()
        return destination

    def _load_from_state_dict(self, *args, **kwargs):
        raise RuntimeError("a prepared (inference-only) network cannot load weights: load them into the plain "
                           "VisionTransformer, then call vitkit.runtime.prepare again")


class InferenceBlock(nn.Module):
    """A transformer block for inference: the same maths as `layers.Block` in eval mode, with every linear
    layer packed, GELU fused into fc1, layer scale folded into attn.proj / mlp.fc2, and the
    residual adds fused into those two layers. Keeps the readable attention path for attention maps."""

    def __init__(self, block: Block, dtype: torch.dtype):
        super().__init__()
        attn: Attention = block.attn
        self.heads, self.scale, self.fused = attn.heads, attn.scale, attn.fused
        self.rope_interleaved = attn.rope_interleaved
        self.norm1, self.norm2 = block.norm1.to(dtype), block.norm2.to(dtype)
        gamma1 = block.ls1.gamma if isinstance(block.ls1, LayerScale) else None
        gamma2 = block.ls2.gamma if isinstance(block.ls2, LayerScale) else None
        qv_bias = hasattr(attn, "q_bias")
        self.qkv = packed_linear(attn.qkv, dtype, bias=attn._qkv_bias(), save_bias=not qv_bias)
        if qv_bias:  # keep the learned parameters' keys for state_dict (they are folded into qkv's bias)
            self.q_bias, self.v_bias = attn.q_bias, attn.v_bias
        self.proj = packed_linear(attn.proj, dtype, scale=gamma1)
        act = block.mlp.act
        fused = {"none": "gelu", "tanh": "gelu_tanh"}.get(getattr(act, "approximate", None))
        self.act = nn.Identity() if fused else act  # an activation oneDNN cannot fuse runs after fc1
        self.fc1 = packed_linear(block.mlp.fc1, dtype, activation=fused or "none")
        self.fc2 = packed_linear(block.mlp.fc2, dtype, scale=gamma2)
        if gamma1 is not None:  # folded; kept as parameters so state_dict keeps its keys
            self.gamma1, self.gamma2 = gamma1, gamma2
        if hasattr(block, "rel_pos"):
            self.rel_pos = block.rel_pos
        replaced = (attn.qkv, attn.proj, block.mlp.fc1, block.mlp.fc2)
        release_file_pages([linear.weight for linear in replaced])  # memory-mapped pages packing has read
        for linear in replaced:  # the fp32 weights are gone now
            linear.weight = None

    def _attend(self, x: torch.Tensor, bias: torch.Tensor | None, need_weights: bool, rope: torch.Tensor | None):
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, h, N, hd)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, hd)
        if rope is not None:
            q, k = rotate_patches(q, k, rope, self.rope_interleaved)
        out, weights = attend(q, k, v, bias, self.scale, fused=self.fused and not need_weights)  # (B, heads, N, hd)
        return out.transpose(1, 2).reshape(B, N, D), weights  # (B, N, heads*hd)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None, need_weights: bool = False,
                rope: torch.Tensor | None = None):
        heads_out, weights = self._attend(self.norm1(x), bias, need_weights, rope)
        x = self.proj(heads_out, residual=x)  # x + gamma1 * proj(attn)
        x = self.fc2(self.act(self.fc1(self.norm2(x))), residual=x)  # x + gamma2 * fc2(act(fc1(norm2(x))))
        return x, weights

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        """The keys and fp32 values of `layers.Block` (so a prepared network still saves as itself)."""
        destination = {} if destination is None else destination
        put = lambda name, t: destination.__setitem__(prefix + name, t.detach().float())  # noqa: E731
        for norm in ("norm1", "norm2"):
            for key, t in getattr(self, norm).state_dict().items():
                put(f"{norm}.{key}", t)
        gammas = (self.gamma1, self.gamma2) if hasattr(self, "gamma1") else (None, None)
        for name, layer, gamma in (("attn.qkv", self.qkv, None), ("attn.proj", self.proj, gammas[0]),
                                   ("mlp.fc1", self.fc1, None), ("mlp.fc2", self.fc2, gammas[1])):
            weight = layer.weight.float()
            bias = layer.bias.float() if layer.save_bias else None
            if gamma is not None:  # unfold the layer scale
                weight, bias = weight / gamma.detach().float()[:, None], bias / gamma.detach().float()
            put(f"{name}.weight", weight)
            if bias is not None:
                put(f"{name}.bias", bias)
        if hasattr(self, "q_bias"):
            put("attn.q_bias", self.q_bias)
            put("attn.v_bias", self.v_bias)
        if hasattr(self, "gamma1"):
            put("ls1.gamma", self.gamma1)
            put("ls2.gamma", self.gamma2)
        if hasattr(self, "rel_pos"):
            for key, t in self.rel_pos.state_dict().items():
                destination[f"{prefix}rel_pos.{key}"] = t
        return destination

    def _load_from_state_dict(self, *args, **kwargs):
        raise RuntimeError("a prepared (inference-only) network cannot load weights: load them into the plain "
                           "VisionTransformer, then call vitkit.runtime.prepare again")
