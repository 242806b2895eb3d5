"""INT8 (and fp16) ONNX models that keep their accuracy: `vitkit quantize`.

    from vitkit.quantize import quantize, markdown
    report = quantize(vitkit.load(...), "dynamic", calib=["calib/"], eval_folder="val/", out="model-int8.onnx")
    print(markdown(report))

The default recipe (measured on the real DeiT-Tiny, docs/quantization-report.md): dynamic INT8 activations per image,
int8 weights per output channel, the patch embedding and the first block in float, SmoothQuant (alpha 0.7) folded
into the LayerNorms and v, one fused onnxruntime Attention node per block; LayerNorm, softmax and its inputs, and
GELU always in float.

    recipe.py      Recipe (frozen), the named steps (RECIPES), the quantizable layers ("sites")
    smooth.py      SmoothQuant scales and their folding into the network
    fused.py       the fp32 graph with com.microsoft.Attention nodes
    onnx_int8.py   onnxruntime quantization of the chosen nodes; metadata
    build.py       network + recipe + calibration pixels -> INT8 graph
    data.py        calibration views, labelled evaluation folders
    report.py      QuantizationReport; agreement / accuracy / cosine, speed, markdown
    pipeline.py    quantize(): all of the above plus the accuracy gate and the file

Try it:  python benchmarks/quantize.py --quick
"""

from vitkit.quantize.onnx_int8 import QuantizeError, read_quantization
from vitkit.quantize.pipeline import METHODS, QuantizationRefused, quantize
from vitkit.quantize.recipe import RECIPES, Recipe, default_recipe
from vitkit.quantize.report import QuantizationReport, markdown

__all__ = ["METHODS", "RECIPES", "QuantizationRefused", "QuantizationReport", "QuantizeError", "Recipe",
           "default_recipe", "markdown",
           "quantize", "read_quantization"]
