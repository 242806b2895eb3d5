from vitkit.models.vit import VisionTransformer

__all__ = ["VisionTransformer"]
