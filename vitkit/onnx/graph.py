"""From a vitkit network to ONNX graph bytes: the network at a fixed size (positions and BEiT tables resampled by
vitkit's own functions, never by a Resize in the graph: ONNX Runtime rejects or mismatches antialiased bicubic
Resize), the module the graph computes, and the one call to the exporter (also used by the fused-attention
graph of vitkit.quantize).

Position information is baked in: when S differs from the network's own grid, a copy of the network is
configured for S with its absolute position embedding and BEiT relative tables resampled exactly as the model
resamples them at run time. BEiT's relative position index is a constant of the graph; the exporter's constant
folding then stores each layer's gathered bias (heads, N+1, N+1) as one initializer (BEiT-B/16: +22 MB at 224 px,
+180 MB at 384 px; onnxruntime would build the same tensors at load time anyway). Any Resize or Upsample node
is an error.

Exporter: PyTorch's TorchScript-based `torch.onnx.export(..., dynamo=False)`: it needs nothing beyond torch and
onnx (the dynamo exporter needs onnxscript).

Try it:  python -c "import vitkit; from vitkit.onnx.graph import graph_bytes; \
print(len(graph_bytes(vitkit.load(arch='deit_tiny_patch16_224').net, 224)))"
"""

from __future__ import annotations

import copy
import io
import warnings

import torch
from torch import nn

from vitkit.models.pos_embed import relative_position_index, resample_abs_pos_embed, resample_rel_pos_table
from vitkit.models.vit import VisionTransformer
from vitkit.onnx.format import DEFAULT_OPSET, DTYPES, INPUT, MIN_OPSET, OnnxExportError, output_names

FORBIDDEN_OPS = ("Resize", "Upsample")


class _FixedRelPosBias(nn.Module):
    """BEiT's bias at one grid: the (resampled) table and a constant index; `forward(grid)` ->
    (heads, N+1, N+1), as `RelativePositionBias._compute` gives it."""

    def __init__(self, table: torch.Tensor, index: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.detach().clone(), requires_grad=False)
        self.register_buffer("index", index, persistent=False)  # (N+1)^2 int64, a constant of the graph
        self.n = int(round(index.numel() ** 0.5))

    def forward(self, grid) -> torch.Tensor:
        n = self.n
        return self.table[self.index].view(n, n, -1).permute(2, 0, 1)  # (heads, N+1, N+1)


def network_at_size(net: VisionTransformer, image_size: int) -> VisionTransformer:
    """A copy of `net` whose own grid is image_size / patch: absolute positions resampled as
    `VisionTransformer._pos_embed_for` does, BEiT tables as `RelativePositionBias._compute` does (then baked
    with a constant index). In eval mode, without gradients; `net` is untouched."""
    cfg = net.config
    if image_size % cfg.patch_size:
        raise OnnxExportError(f"image size {image_size} is not a multiple of the patch size {cfg.patch_size}")
    grid = (image_size // cfg.patch_size,) * 2
    out = copy.deepcopy(net).eval().requires_grad_(False)
    out.config = cfg.replace(image_size=image_size, drop_path=0.0)
    if cfg.abs_pos_embed:
        pos = resample_abs_pos_embed(net.pos_embed.detach(), grid, cfg.pos_prefix_tokens,
                                     antialias=cfg.pos_embed_antialias)
        out.pos_embed = nn.Parameter(pos.clone(), requires_grad=False)
    if cfg.rel_pos_bias != "none":
        index = relative_position_index(grid).view(-1)  # one constant, shared by every layer
        owners = [out] if cfg.rel_pos_bias == "shared" else list(out.blocks)
        for owner in owners:
            rel = owner.rel_pos
            table = resample_rel_pos_table(rel.table.detach(), rel.grid, grid, rel.resize_method)
            owner.rel_pos = _FixedRelPosBias(table, index)
    return out


class Graph(nn.Module):
    """What the ONNX graph computes, with vitkit's own forward: pixels -> (logits?, features, pre_logits)."""

    def __init__(self, net: VisionTransformer, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, pixels: torch.Tensor):
        tokens = self.net.forward_features(pixels.to(self.dtype))  # (B, T, D)
        pre_logits = self.net.forward_head(tokens, pre_logits=True)  # (B, D')
        outs = [tokens.float(), pre_logits.float()]
        if self.net.config.num_classes:
            outs.insert(0, self.net.forward_head(tokens).float())  # (B, C)
        return tuple(outs)


def plain(net) -> VisionTransformer:
    """`net` when it can be exported: a vitkit network not prepared for a runtime backend."""
    if getattr(net, "prepared", False):
        raise OnnxExportError("this network was prepared for a runtime backend (packed/bf16 weights): export the "
                              "plain network (load it without --backend/--dtype)")
    if not isinstance(net, VisionTransformer):
        raise OnnxExportError(f"cannot export {type(net).__name__}: expected a vitkit VisionTransformer")
    return net


def export_graph(graph: nn.Module, image_size: int, channels: int, names: list[str], *, dynamic_batch: bool,
                 opset: int, custom_opsets: dict[str, int] | None = None) -> bytes:
    """`graph` (pixels (1, channels, S, S) -> outputs `names`) through torch.onnx.export, serialized."""
    example = torch.zeros(1, channels, image_size, image_size)
    return export_module(graph, example, INPUT, names, dynamic_batch=dynamic_batch, opset=opset,
                         custom_opsets=custom_opsets)


def export_module(graph: nn.Module, example: torch.Tensor, input_name: str, names: list[str], *,
                  dynamic_batch: bool, opset: int, custom_opsets: dict[str, int] | None = None) -> bytes:
    """The one torch.onnx.export call: `graph` (one input, traced on `example`) -> outputs `names`, serialized
    (the image graphs above, and the text tower's in vitkit.onnx.text)."""
    axes = {name: {0: "batch"} for name in [input_name] + names} if dynamic_batch else None
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation, tracer and custom-domain notices
        torch.onnx.export(graph, (example,), buffer, dynamo=False, input_names=[input_name], output_names=names,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
                          custom_opsets=custom_opsets or {})
    return buffer.getvalue()


def graph_bytes(net: VisionTransformer, image_size: int, *, dynamic_batch: bool = False,
                opset: int = DEFAULT_OPSET, dtype: str = "fp32") -> bytes:
    """The bare ONNX graph (no vitkit metadata) of `net` at image_size, serialized."""
    import onnx

    net = plain(net)
    if dtype not in DTYPES:
        raise OnnxExportError(f"unknown dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if opset < MIN_OPSET:
        raise OnnxExportError(f"opset {opset} is too old: vitkit's attention needs opset {MIN_OPSET} or newer")
    fixed = network_at_size(net, image_size)
    torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
    fixed.to(torch_dtype)  # fp16: BEiT's tables too (the model casts the gathered bias to fp16: same values)
    try:
        data = export_graph(Graph(fixed, torch_dtype).eval(), image_size, fixed.config.in_chans,
                            output_names(fixed.config), dynamic_batch=dynamic_batch, opset=opset)
    except Exception as err:  # e.g. a graph over protobuf's 2 GB limit (H/14, BEiT-L at 512 px)
        raise OnnxExportError(f"torch.onnx.export failed at {image_size} px, opset {opset}, {dtype}: "
                              f"{str(err).strip().splitlines()[0] if str(err).strip() else err!r}") from err
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    bad = sorted({node.op_type for node in _all_nodes(model.graph) if node.op_type in FORBIDDEN_OPS})
    if bad:
        raise OnnxExportError(f"the exported graph contains {', '.join(bad)}: position resampling leaked into it")
    return data


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)
