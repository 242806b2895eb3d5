"""The INT8 graph of a network: the recipe (which layers, which float islands), SmoothQuant, one fused onnxruntime
Attention node per block, and onnxruntime's quantization of the chosen nodes. Used by `vitkit quantize` (which adds
the evaluation, the accuracy gate and the report) and by the runtime's precision="fast" (which builds it in process).

    recipe.py      Recipe (frozen), the named steps (RECIPES), the quantizable layers ("sites")
    smooth.py      SmoothQuant scales and their folding into the network
    fused.py       the fp32 graph with com.microsoft.Attention nodes
    onnx_int8.py   onnxruntime quantization of the chosen nodes; metadata
    build.py       network + recipe + calibration pixels -> INT8 graph
    fake_quant.py  the same graph's rounding in PyTorch (straight-through), for quantization-aware fine-tuning

Try it:  python -m pytest tests/test_quantize.py -q
"""
