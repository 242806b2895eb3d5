"""OpenCLIP's open_clip_config.json (the file beside open_clip_pytorch_model.bin on the hub) -> the ViTConfig and
PreprocessSpec of its image tower. Towers that are not a plain pre-norm ViT (timm backbones, attentional pooling,
average pooling, ModifiedResNet) are refused with the reason.

Try it:  python -m pytest tests/test_parity_families.py -q -k openclip
"""

from __future__ import annotations

from vitkit.config import PreprocessSpec, ViTConfig

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
UNSUPPORTED = {"timm_model_name": "a timm backbone", "attentional_pool": "attentional pooling (CoCa)",
               "no_ln_pre": "no pre-norm", "final_ln_after_pool": "the final norm after pooling"}


def config_from_openclip(meta: dict, shapes: dict[str, tuple]) -> ViTConfig:
    """ViTConfig of the image tower in `meta` (an open_clip_config.json); shapes name the projection size."""
    model = meta["model_cfg"]
    vision = model["vision_cfg"]
    if not isinstance(vision.get("layers"), int):
        raise ValueError("OpenCLIP ModifiedResNet towers are not ViTs")
    for key, what in UNSUPPORTED.items():
        if vision.get(key):
            raise ValueError(f"OpenCLIP tower with {what} is not supported")
    if vision.get("pool_type", "tok") != "tok":
        raise ValueError(f"OpenCLIP pooling {vision['pool_type']!r} is not supported (vitkit reads the class token)")
    width = vision["width"]
    heads = width // vision.get("head_width", 64)
    proj = shapes.get("visual.proj", (width, 0))[1]
    return ViTConfig(
        image_size=vision.get("image_size", 224), patch_size=vision["patch_size"], width=width,
        depth=vision["layers"], heads=heads, mlp_dim=int(width * vision.get("mlp_ratio", 4.0)), num_classes=0,
        pre_norm=True, patch_bias=False, act="quick_gelu" if model.get("quick_gelu") else "gelu", norm_eps=1e-5,
        layer_scale_init=vision.get("ls_init_value"), proj_dim=proj, pos_embed_antialias=False, family="clip")


def spec_from_openclip(meta: dict) -> PreprocessSpec:
    """open_clip's eval transform: shorter side to the input size, centre crop (or a squash with
    resize_mode 'squash'), bicubic unless the file says otherwise."""
    pre = meta.get("preprocess_cfg", {})
    size = meta["model_cfg"]["vision_cfg"].get("image_size", 224)
    mode = pre.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise ValueError(f"OpenCLIP resize_mode {mode!r} is not supported")
    return PreprocessSpec(input_size=size, crop_pct=1.0, resize_mode="exact" if mode == "squash" else "shortest",
                          interpolation=pre.get("interpolation", "bicubic"),
                          mean=tuple(pre.get("mean", OPENAI_MEAN)), std=tuple(pre.get("std", OPENAI_STD)))
