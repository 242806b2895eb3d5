"""The named choices a user picks by string, in the API and on the command line: what a pool, a runtime backend,
a compute dtype, a precision and a save format can be. Torch-free, so that `vitkit --help` parses in milliseconds;
the modules that implement each choice import its names from here.

Try it:  python -c "import sys, vitkit.choices as c; print(c.POOLS, c.PRECISIONS, 'torch' in sys.modules)"
"""

POOLS = ("cls", "mean", "cls_mean", "tokens", "prelogits")  # how tokens become an embedding (vitkit.models.vit)
VECTOR_POOLS = ("cls", "mean", "cls_mean", "prelogits")  # the pools that give one vector per image

BACKENDS = ("auto", "eager", "compile", "onnx")  # vitkit.runtime
DTYPES = ("auto", "fp32", "bf16", "fp16")
# exact: fp32 (within 1e-4 of the reference); fast: the fastest runtime on this machine that agrees with fp32
# on a calibration set (vitkit.runtime.fast)
PRECISIONS = ("exact", "fast")

SAVE_FORMATS = ("hf", "timm", "safetensors", "jax")  # vitkit.checkpoints.save
