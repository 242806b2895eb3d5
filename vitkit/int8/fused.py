"""An fp32 ONNX graph for onnxruntime whose self-attention is one `com.microsoft.Attention` node per block.

The portable graph (`vitkit export onnx`) spells attention out: qkv MatMul, Reshape, Transpose, Split, Squeeze, two
MatMuls, Softmax, Transpose, Reshape (about 25 nodes per block). onnxruntime's contrib op `Attention` does the same
maths in one kernel (input (B, N, D), weight (D, 3D) = qkv.weight^T, bias (3D,), num_heads): vitkit's qkv layout
(3, heads, head_dim) is exactly the op's [Q | K | V] layout, so the weights go in unchanged. Its dynamic INT8 form,
`QAttention`, quantizes the qkv GEMM (int8 weights, 7-bit as onnxruntime's quantizer makes them for this op, per
output channel) and keeps q k^T, softmax and the weighted sum in float.

Only networks without a relative position bias (ViT, DeiT) are fused; BEiT keeps the portable graph. The fused
graph is checked against PyTorch before use (max abs logit diff <= 1e-3 on random pixels).

Try it:  python -m pytest tests/test_quantize.py -q -k fused
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.models.vit import VisionTransformer
from vitkit.onnx.format import LOGITS, output_names
from vitkit.onnx.graph import Graph, export_graph, network_at_size
from vitkit.onnx.session import Session

MAX_DIFF = 1e-3


class _Attention(torch.autograd.Function):
    """softmax(q k^T / sqrt(hd)) v with qkv = x W^T + b; exported as com.microsoft.Attention."""

    @staticmethod
    def forward(ctx, x, weight_t, bias, heads: int):
        B, N, D = x.shape
        qkv = (x @ weight_t + bias).reshape(B, N, 3, heads, D // heads).permute(2, 0, 3, 1, 4)  # (3, B, h, N, hd)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, hd)
        return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D)  # (B, N, D)

    @staticmethod
    def symbolic(g, x, weight_t, bias, heads: int):
        out = g.op("com.microsoft::Attention", x, weight_t, bias, num_heads_i=heads)
        out.setType(x.type())
        return out


class FusedAttention(nn.Module):
    """Drop-in for `layers.Attention` in an export copy: same outputs, one graph node (plus the proj GEMM)."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.heads = attn.heads
        self.qkv_weight_t = nn.Parameter(attn.qkv.weight.detach().t().contiguous(), requires_grad=False)  # (D, 3D)
        bias = attn._qkv_bias()
        width = attn.proj.in_features
        bias = torch.zeros(3 * width) if bias is None else bias.detach().clone()
        self.qkv_bias = nn.Parameter(bias, requires_grad=False)  # (3D,)
        self.proj = attn.proj

    def forward(self, x, bias=None, need_weights: bool = False, rope=None):
        if bias is not None or need_weights or rope is not None:
            raise RuntimeError("the fused attention has no attention bias, rotary embedding or attention weights")
        return self.proj(_Attention.apply(x, self.qkv_weight_t, self.qkv_bias, self.heads)), None


def can_fuse(net: VisionTransformer) -> bool:
    """onnxruntime's Attention op has no relative position bias (BEiT) and no rotary embedding (DINOv3)."""
    return net.config.rel_pos_bias == "none" and net.config.rope == "none"


def fused_graph(net: VisionTransformer, image_size: int, dynamic_batch: bool, opset: int = 17) -> bytes:
    """The fused fp32 graph of `net` at image_size (raises RuntimeError when it does not match PyTorch)."""
    if not can_fuse(net):
        raise ValueError("attention with a relative position bias (BEiT) is not fused")
    fixed = network_at_size(net, image_size)  # a copy, eval, no grad
    pixels = torch.randn(1, fixed.config.in_chans, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = Graph(fixed).eval()(pixels)  # the reference, before the attention is swapped
    for block in fixed.blocks:
        block.attn = FusedAttention(block.attn)
    names = output_names(fixed.config)
    data = export_graph(Graph(fixed).eval(), image_size, fixed.config.in_chans, names, dynamic_batch=dynamic_batch,
                        opset=opset, custom_opsets={"com.microsoft": 1})
    got = Session(data).run(pixels, names)
    for name, w in zip(names, want):
        diff = float((torch.from_numpy(got[name]) - w).abs().max())
        limit = MAX_DIFF if name == LOGITS else MAX_DIFF * max(1.0, float(w.abs().max()))
        if not diff <= limit:
            raise RuntimeError(f"the fused attention graph differs from PyTorch: {name} max abs diff {diff:.3g}")
    return data
