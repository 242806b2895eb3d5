"""INT8 (and fp16) ONNX models that keep their accuracy: `vitkit quantize`.

    from vitkit.quantize import quantize, markdown
    report = quantize(vitkit.load(...), "dynamic", calib=["calib/"], eval_folder="val/", out="model-int8.onnx")
    print(markdown(report))

The default recipe (measured on the real DeiT-Tiny, docs/quantization-report.md): dynamic INT8 activations per image,
int8 weights per output channel, the patch embedding and the first block in float, SmoothQuant (alpha 0.7) folded
into the LayerNorms and v, one fused onnxruntime Attention node per block; LayerNorm, softmax and its inputs, and
GELU always in float.

    vitkit.int8    the INT8 graph itself (recipe, SmoothQuant, fused attention, onnxruntime quantization), a
                   floor below, so that the runtime's --fast builds it in process too
    data.py        calibration views, labelled evaluation folders
    report.py      QuantizationReport; agreement / accuracy / cosine, speed, markdown
    qat.py         quantization-aware fine-tuning (--qat DATA) through vitkit.int8.fake_quant, fp32 as teacher
    pipeline.py    quantize(): all of the above plus the accuracy gate and the file

Try it:  python benchmarks/quantize.py --quick
"""

import importlib

_WHERE = {"QuantizeError": "vitkit.int8.onnx_int8", "read_quantization": "vitkit.int8.onnx_int8",
          "METHODS": "vitkit.quantize.pipeline", "QuantizationRefused": "vitkit.quantize.pipeline",
          "quantize": "vitkit.quantize.pipeline", "RECIPES": "vitkit.int8.recipe", "Recipe": "vitkit.int8.recipe",
          "QATOptions": "vitkit.quantize.qat",
          "default_recipe": "vitkit.int8.recipe", "QuantizationReport": "vitkit.quantize.report",
          "markdown": "vitkit.quantize.report"}
__all__ = tuple(sorted(_WHERE))


def __getattr__(name: str):
    """Names imported on first use, so that `vitkit.quantize.cli` (loaded by every `vitkit` command) stays light."""
    if name not in _WHERE:
        raise AttributeError(f"module 'vitkit.quantize' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
