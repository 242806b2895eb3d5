"""vitkit: Vision Transformers (ViT, DeiT, BEiT, DeiT-III, MAE, DINOv2, DINOv3, EVA-02, CLIP and SigLIP image
towers, with CLIP's and SigLIP's text towers for zero-shot classification and text search) with proven
checkpoint parity.

    import vitkit
    model = vitkit.load("google/vit-base-patch16-224")
    model.classify("cat.jpg", top_k=5)
    vitkit.classify_to_file(model, paths, "preds.jsonl")   # resumable, one row per input
    vitkit.embed_to_file(model, paths, "emb.npy")
    text = vitkit.load_text("openai/clip-vit-base-patch32")   # an image-text model's text tower
    vitkit.ZeroShotClassifier(vitkit.load("openai/clip-vit-base-patch32"), text, ["cat", "dog"]).classify("cat.jpg")
"""

from vitkit.version import VERSION

__all__ = ["Classification", "Embeddings", "Model", "Prediction", "TextEncoder", "ZeroShotClassifier", "classify_to_file", "embed_to_file", "load",
           "load_text", "to_records"]
__version__ = VERSION

_LAZY = {"Model": "vitkit.api", "Prediction": "vitkit.api", "load": "vitkit.api", "Classification": "vitkit.api",
         "Embeddings": "vitkit.api", "to_records": "vitkit.api",
         "classify_to_file": "vitkit.tasks.classify", "embed_to_file": "vitkit.tasks.embed",
         "load_text": "vitkit.image_text", "TextEncoder": "vitkit.image_text", "ZeroShotClassifier": "vitkit.image_text"}


def __getattr__(name: str):
    """Everything, imported on first use: `import vitkit` (and so `vitkit --help`) does not import torch."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vitkit' has no attribute {name!r}")
