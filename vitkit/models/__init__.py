def __getattr__(name: str):
    """`VisionTransformer`, imported on first use: the registry (`vitkit models`) needs no torch."""
    if name == "VisionTransformer":
        from vitkit.models.vit import VisionTransformer

        return VisionTransformer
    raise AttributeError(f"module 'vitkit.models' has no attribute {name!r}")

__all__ = ["VisionTransformer"]
