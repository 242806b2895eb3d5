"""Network + recipe (+ calibration pixels) -> INT8 ONNX graph bytes, and the fp32 graph it is measured against.

    smooth (optional)   per-channel activation max over the calibration pixels -> SmoothQuant scales folded into
                        a copy of the network (vitkit.int8.smooth)
    export              the fp32 graph of that copy (batch 1 for per-image dynamic INT8, else a dynamic batch), with
                        one onnxruntime Attention node per block when the recipe fuses attention (vitkit.int8.fused)
    quantize            onnxruntime, only the recipe's integer layers (vitkit.int8.recipe.int8_sites, through
                        vitkit.int8.onnx_int8); in dynamic mode the layers on pooled features (exported as Gemm: the
                        classifier head) stay float: onnxruntime's dynamic quantizer has no integer Gemm

Try it:  python -m pytest tests/test_quantize.py -q
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from vitkit.models.vit import VisionTransformer
from vitkit.int8.fused import can_fuse, fused_graph
from vitkit.int8.onnx_int8 import QuantizeError, fp32_graph, quantize_graph, site_nodes
from vitkit.int8.recipe import Recipe, int8_sites, sites
from vitkit.int8.smooth import activation_absmax, smooth, smoothing_scales


@dataclass
class Built:
    int8: bytes
    dynamic_batch: bool
    quantized: list[str]  # site names in INT8
    kept_float: list[str]  # site names in float
    seconds: dict[str, float] = field(default_factory=dict)
    fused_attention: bool = False


def _batches(pixels: torch.Tensor, size: int = 32):
    return [pixels[i:i + size] for i in range(0, len(pixels), size)]


def smoothed(net: VisionTransformer, recipe: Recipe, calibration: torch.Tensor | None) -> VisionTransformer:
    """`net` with the recipe's SmoothQuant scales (from the calibration pixels) folded into a copy; `net` itself
    (in eval mode) when the recipe does not smooth."""
    if recipe.smooth_alpha is None:
        return net.eval()
    with torch.inference_mode():
        absmax = activation_absmax(net, _batches(calibration), recipe.smooth_sites)
    return smooth(net, smoothing_scales(net, absmax, recipe.smooth_alpha, recipe.smooth_sites))


def build_int8(net: VisionTransformer, image_size: int, recipe: Recipe,
               calibration: torch.Tensor | None = None) -> Built:
    """The INT8 graph of `net` (a plain, unprepared vitkit network; untouched) for `recipe`."""
    if getattr(net, "prepared", False) or not isinstance(net, VisionTransformer):
        raise QuantizeError("quantize the plain network (load it without --backend/--dtype)")
    if recipe.needs_calibration and (calibration is None or not len(calibration)):
        what = "static INT8" if recipe.method == "static" else f"SmoothQuant (alpha {recipe.smooth_alpha})"
        raise QuantizeError(f"{what} needs calibration images (--calib FOLDER)")
    seconds = {}
    start = time.perf_counter()
    work = smoothed(net, recipe, calibration)
    seconds["smooth"] = time.perf_counter() - start
    dynamic_batch = not (recipe.method == "dynamic" and recipe.batch_one)
    fused = recipe.fused_attention and can_fuse(work)
    start = time.perf_counter()
    fp32 = fused_graph(work, image_size, dynamic_batch) if fused else fp32_graph(work, image_size, dynamic_batch)
    seconds["export"] = time.perf_counter() - start
    import onnx

    graph = onnx.load_from_string(fp32)
    nodes = site_nodes(graph, work)
    chosen = int8_sites(work, recipe)
    op_type = {n.name: n.op_type for n in graph.graph.node}
    if recipe.method == "dynamic" and (gemms := [s for s in chosen if op_type[nodes[s]] == "Gemm"]):
        raise QuantizeError(f"{', '.join(gemms)} exported as Gemm, which dynamic INT8 cannot quantize")
    start = time.perf_counter()
    int8 = quantize_graph(fp32, [nodes[s] for s in chosen], recipe,
                          calibration if recipe.method == "static" else None)
    seconds["quantize"] = time.perf_counter() - start
    kept = [s for s in sites(work) if s not in chosen]
    return Built(int8, dynamic_batch, chosen, kept, {k: round(v, 2) for k, v in seconds.items()}, fused)
