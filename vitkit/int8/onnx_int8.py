"""INT8 ONNX graphs with onnxruntime's quantizer: only the recipe's weight GEMMs become integer, everything else stays
float (LayerNorm, softmax and its q k^T input, the attention-weighted sum, GELU, residual adds).

    fp32 graph  `vitkit.onnx.graph.graph_bytes` of the (smoothed) network: the same graph `vitkit export onnx` writes
    sites       each quantizable layer is found in the graph by its weight (MatMul B = W^T, Gemm B = W, Conv W), so
                the recipe names layers by vitkit module path, not by exporter-generated node names
    dynamic     `quantize_dynamic`: weights int8 (per output channel), activations u8 per call at run time
                (onnxruntime fuses DynamicQuantizeLinear + MatMulInteger into DynamicQuantizeMatMul)
    static      `quantize_static`, QDQ format: weights int8 per output channel, activations u8 with min/max ranges
                from the calibration images; the GEMM outputs are *not* re-quantized (they feed float LayerNorm,
                softmax, GELU, residual adds), so onnxruntime runs MatMulIntegerToFloat. Only the listed nodes are
                quantized: onnxruntime's default would also quantize q k^T, softmax (QLinearSoftmax) and the
                attention product, which costs accuracy (DESIGN.md's known trap)

Try it:  python -m pytest tests/test_quantize.py -q
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from vitkit.config import PreprocessSpec
from vitkit.models.vit import VisionTransformer
from vitkit.int8.recipe import Recipe, sites

QUANTIZABLE_OPS = ("MatMul", "Gemm", "Conv", "Attention")
META_KEY = "vitkit_quantization"


class QuantizeError(RuntimeError):
    """The INT8 graph cannot be made (the message says why)."""


@contextlib.contextmanager
def _quiet_ort_logging():
    """onnxruntime's quantizer logs advice (pre-processing, calibration progress) on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def fp32_graph(net: VisionTransformer, image_size: int, dynamic_batch: bool) -> bytes:
    """The bare fp32 ONNX graph of `net` (pixels -> logits?, features, pre_logits), as `vitkit export onnx` makes it."""
    from vitkit.onnx.graph import graph_bytes

    return graph_bytes(net, image_size, dynamic_batch=dynamic_batch)


def site_nodes(model, net: VisionTransformer) -> dict[str, str]:
    """Site name -> name of the graph node that multiplies by that site's weight. Matched by value (exactly equal
    weights; in forward order when two layers hold identical weights), so it does not depend on the exporter's
    node naming. Raises QuantizeError when a site has no node."""
    from onnx import numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    arrays: dict[str, np.ndarray] = {}
    candidates = [n for n in model.graph.node if n.op_type in QUANTIZABLE_OPS and len(n.input) > 1
                  and n.input[1] in inits]
    if any(not n.name for n in candidates):
        raise QuantizeError("the exported graph has unnamed GEMM nodes: cannot select layers to quantize")
    taken: set[str] = set()
    found: dict[str, str] = {}
    for name, module in sites(net).items():
        weight = module.weight.detach().float().cpu().numpy()
        forms = [weight] if weight.ndim == 4 else [weight.T, weight]  # MatMul holds W^T; Gemm(transB=1) W
        for node in candidates:
            if node.name in taken:
                continue
            if node.input[1] not in arrays:
                arrays[node.input[1]] = numpy_helper.to_array(inits[node.input[1]])
            value = arrays[node.input[1]]
            if value.dtype == np.float32 and any(f.shape == value.shape and np.array_equal(f, value) for f in forms):
                found[name] = node.name
                taken.add(node.name)
                break
        else:
            raise QuantizeError(f"layer {name} ({tuple(weight.shape)}) was not found in the exported graph")
    return found


class _Batches:
    """onnxruntime CalibrationDataReader over a list of (B, 3, S, S) float32 arrays."""

    def __init__(self, batches: list[np.ndarray], input_name: str = "pixels"):
        self.batches, self.input_name, self.i = batches, input_name, 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.input_name: self.batches[self.i - 1]}

    def rewind(self):
        self.i = 0


def quantize_graph(fp32: bytes, nodes: list[str], recipe: Recipe, calibration: torch.Tensor | None = None,
                   batch_size: int = 16) -> bytes:
    """fp32 graph bytes -> INT8 graph bytes with `nodes` quantized as `recipe` says (static needs `calibration`
    pixels (N, 3, S, S); a batch-1 graph is calibrated one image at a time)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if not nodes:
        raise QuantizeError("the recipe keeps every layer in float: nothing to quantize")
    with tempfile.TemporaryDirectory(prefix="vitkit-int8-") as tmp, _quiet_ort_logging():
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        reduce_range = recipe.seven_bit_weights
        if recipe.method == "dynamic":
            quantize_dynamic(str(src), str(dst), per_channel=recipe.per_channel, weight_type=QuantType.QInt8,
                             reduce_range=reduce_range,
                             op_types_to_quantize=list(QUANTIZABLE_OPS), nodes_to_quantize=list(nodes),
                             extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})
        else:
            if calibration is None or not len(calibration):
                raise QuantizeError("static INT8 needs calibration images (--calib FOLDER)")
            graph_input = onnx.load_from_string(fp32).graph.input[0]
            fixed_one = graph_input.type.tensor_type.shape.dim[0].dim_value == 1
            step = 1 if fixed_one else batch_size
            x = calibration.detach().float().cpu().numpy()
            batches = [np.ascontiguousarray(x[i:i + step]) for i in range(0, len(x), step)]
            quantize_static(str(src), str(dst), _Batches(batches, graph_input.name),
                            quant_format=QuantFormat.QDQ, per_channel=recipe.per_channel, reduce_range=reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=list(QUANTIZABLE_OPS), nodes_to_quantize=list(nodes),
                            calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"MatMulConstBOnly": True, "ActivationSymmetric": False,
                                           "DefaultTensorType": onnx.TensorProto.FLOAT,
                                           "WeightSymmetric": True,
                                           "OpTypesToExcludeOutputQuantization": list(QUANTIZABLE_OPS)})
        return dst.read_bytes()


def add_metadata(data: bytes, net: VisionTransformer, spec: PreprocessSpec, *, dynamic_batch: bool, source: str,
                 quantization: dict, verification: dict | None = None, dtype: str = "int8") -> bytes:
    """vitkit's metadata (preprocessing, labels, config: see vitkit.onnx.format) plus `vitkit_quantization` (the
    recipe and what was measured), so `vitkit.load("model-int8.onnx")` runs it with the right preprocessing."""
    import onnx

    from vitkit.onnx.format import with_metadata

    config = net.config.replace(image_size=spec.input_size, drop_path=0.0)
    data = with_metadata(data, config, spec, dtype=dtype, dynamic_batch=dynamic_batch, source=source,
                         verification=verification)
    model = onnx.load_from_string(data)  # with_metadata dropped every earlier vitkit_* prop, META_KEY included
    model.metadata_props.add(key=META_KEY, value=json.dumps(quantization))
    return model.SerializeToString()


def read_quantization(path_or_bytes) -> dict | None:
    """The `vitkit_quantization` metadata of an INT8 file vitkit wrote (None for other files)."""
    import onnx

    model = (onnx.load_from_string(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray))
             else onnx.load(str(path_or_bytes), load_external_data=False))
    for prop in model.metadata_props:
        if prop.key == META_KEY:
            return json.loads(prop.value)
    return None
