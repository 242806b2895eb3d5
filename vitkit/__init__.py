"""vitkit: Vision Transformers (ViT, DeiT, BEiT) with proven checkpoint parity.

    import vitkit
    model = vitkit.load("google/vit-base-patch16-224")
    model.classify("cat.jpg", top_k=5)
"""

from vitkit.api import Model, Prediction, load

__all__ = ["Model", "Prediction", "load"]
__version__ = "0.1.0"
