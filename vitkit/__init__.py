"""vitkit: Vision Transformers (ViT, DeiT, BEiT, DeiT-III, MAE, DINOv2, DINOv3, EVA-02, CLIP and SigLIP image
towers) with proven checkpoint parity.

    import vitkit
    model = vitkit.load("google/vit-base-patch16-224")
    model.classify("cat.jpg", top_k=5)
    vitkit.classify_to_file(model, paths, "preds.jsonl")   # resumable, one row per input
    vitkit.embed_to_file(model, paths, "emb.npy")
"""

from vitkit.api import Model, Prediction, load
from vitkit.version import VERSION

__all__ = ["Model", "Prediction", "classify_to_file", "embed_to_file", "load"]
__version__ = VERSION

_LAZY = {"classify_to_file": "vitkit.tasks.classify", "embed_to_file": "vitkit.tasks.embed"}


def __getattr__(name: str):
    """The batch-job functions, imported on first use (`import vitkit` stays light)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vitkit' has no attribute {name!r}")
