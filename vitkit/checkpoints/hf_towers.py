"""transformers' config.json <-> ViTConfig for the self-supervised and image-text families: ViTMAE, DINOv2 (with
registers), CLIP and SigLIP vision towers. (ViT, DeiT and BEiT are in hf_config.py, which dispatches here.)

  model_type                 vitkit family  what differs from ViT
  vit_mae                    mae            nothing at inference (the encoder without masking)
  dinov2                     dinov2         patch 14, layer scale, MLP from mlp_ratio, positions at 518 px
  dinov2_with_registers      dinov2         + register tokens; positions resampled with antialias
  clip(_vision_model)        clip           pre-norm, no patch bias, projection, quick-GELU (OpenAI) or GELU
  siglip(_vision_model)      siglip         no class token, attention pooling, tanh-GELU
  dinov3_vit                 dinov3         2-D RoPE instead of positions, registers, layer scale, no key bias,
                                            SwiGLU (use_gated_mlp) in its large models

Image-text configs (`clip`, `siglip`) are read through their `vision_config`.

Try it:  python -m pytest tests/test_parity_families.py -q
"""

from __future__ import annotations

TOWER_TYPES = ("vit_mae", "dinov2", "dinov2_with_registers", "dinov3_vit", "clip", "clip_vision_model", "siglip",
               "siglip_vision_model")
ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
               "silu": "silu"}
_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, image_size=224, num_channels=3)
# transformers' defaults for the fields a config.json may leave out (its configs save only non-defaults)
DEFAULTS = {
    "vit_mae": dict(_BASE, intermediate_size=3072, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-12),
    "dinov2": dict(_BASE, mlp_ratio=4, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6),
    "dinov2_with_registers": dict(_BASE, mlp_ratio=4, patch_size=16, hidden_act="gelu", layer_norm_eps=1e-6,
                                  num_register_tokens=4),
    "dinov3_vit": dict(_BASE, hidden_size=384, num_attention_heads=6, intermediate_size=1536, patch_size=16,
                       hidden_act="gelu", layer_norm_eps=1e-5),
    "clip_vision_model": dict(_BASE, intermediate_size=3072, patch_size=32, hidden_act="quick_gelu",
                              layer_norm_eps=1e-5),
    "siglip_vision_model": dict(_BASE, intermediate_size=3072, patch_size=16, hidden_act="gelu_pytorch_tanh",
                                layer_norm_eps=1e-6),
}
QKV_BIAS = {(True, True, True): "qkv", (True, False, True): "qv", (False, False, False): "none"}


def _act(hf: dict) -> str:
    name = hf.get("hidden_act", "gelu")
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}: vitkit runs {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _has(shapes: dict[str, tuple], suffix: str) -> bool:
    return any(k.endswith(suffix) for k in shapes)


def tower_fields(hf: dict, shapes: dict[str, tuple], side) -> dict:
    """ViTConfig fields for one of TOWER_TYPES (`side` reads an int / [h, w] / {height, width} size)."""
    model_type = hf["model_type"]
    if model_type in ("clip", "siglip"):
        hf = {**(hf.get("vision_config") or {}), "projection_dim": hf.get("projection_dim")}
    hf = {**DEFAULTS[{"clip": "clip_vision_model", "siglip": "siglip_vision_model"}.get(model_type, model_type)],
          **{k: v for k, v in hf.items() if v is not None}}
    base = dict(image_size=side(hf["image_size"], "image_size"),
                patch_size=side(hf["patch_size"], "patch_size"), in_chans=hf["num_channels"],
                width=hf["hidden_size"], depth=hf["num_hidden_layers"], heads=hf["num_attention_heads"],
                act=_act(hf), pos_embed_antialias=False, num_classes=0)
    if model_type == "vit_mae":
        return dict(base, mlp_dim=hf["intermediate_size"], norm_eps=hf["layer_norm_eps"],
                    qkv_bias="qkv" if hf.get("qkv_bias", True) else "none", family="mae")
    if model_type == "dinov3_vit":
        return dict(base, **_dinov3_fields(hf))
    if model_type.startswith("dinov2"):
        if hf.get("use_swiglu_ffn"):
            raise ValueError("DINOv2 with a SwiGLU MLP (the giant model) is not supported yet")
        classes = next((v[0] for k, v in shapes.items() if k.endswith("classifier.weight")), 0)
        return dict(base, num_classes=classes, pool="cls_mean" if classes else "cls",  # the head reads cls + mean
                    mlp_dim=int(hf["hidden_size"] * hf["mlp_ratio"]), norm_eps=hf["layer_norm_eps"],
                    qkv_bias="qkv" if hf.get("qkv_bias", True) else "none",
                    layer_scale_init=hf.get("layerscale_value", 1.0), reg_tokens=hf.get("num_register_tokens", 0),
                    pos_embed_antialias=model_type == "dinov2_with_registers", family="dinov2")
    common = dict(base, mlp_dim=hf["intermediate_size"], norm_eps=hf["layer_norm_eps"])
    if model_type.startswith("clip"):
        proj = next((v[0] for k, v in shapes.items() if k.endswith("visual_projection.weight")), 0)
        return dict(common, pre_norm=True, patch_bias=False, proj_dim=proj, family="clip")
    head = _has(shapes, "head.probe")
    return dict(common, class_token=False, pool="map" if head else "mean", family="siglip")


def _dinov3_fields(hf: dict) -> dict:
    biases = tuple(hf.get(f"{name}_bias", default) for name, default in (("query", True), ("key", False),
                                                                          ("value", True)))
    if biases not in QKV_BIAS:
        raise ValueError(f"DINOv3 with query/key/value biases {biases} is not supported")
    if not hf.get("proj_bias", True) or not hf.get("mlp_bias", True):
        raise ValueError("DINOv3 without output-projection or MLP biases is not supported")
    return dict(mlp_dim=hf["intermediate_size"], norm_eps=hf["layer_norm_eps"], abs_pos_embed=False,
                rope="dinov3", rope_theta=float(hf.get("rope_theta", 100.0)), reg_tokens=hf.get("num_register_tokens", 0),
                layer_scale_init=hf.get("layerscale_value", 1.0), qkv_bias=QKV_BIAS[biases],
                mlp="swiglu" if hf.get("use_gated_mlp") else "plain", family="dinov3")


def tower_model_type(cfg) -> str:
    return {"mae": "vit_mae", "clip": "clip_vision_model", "siglip": "siglip_vision_model",
            "dinov3": "dinov3_vit"}.get(
        cfg.family, "dinov2_with_registers" if cfg.reg_tokens else "dinov2")


def tower_prefix(cfg) -> str:
    """Where the backbone's keys live in the class tower_architecture names."""
    if cfg.family in ("clip", "siglip"):
        return "vision_model."
    return tower_model_type(cfg) + "." if cfg.num_classes else ""


def tower_architecture(cfg) -> str:
    if cfg.num_classes:  # only DINOv2 has a classifier class vitkit writes (tower_to_hf checks)
        return {"dinov2": "Dinov2ForImageClassification",
                "dinov2_with_registers": "Dinov2WithRegistersForImageClassification"}.get(tower_model_type(cfg), "")
    return {"vit_mae": "ViTMAEModel", "dinov2": "Dinov2Model", "dinov2_with_registers": "Dinov2WithRegistersModel",
            "clip_vision_model": "CLIPVisionModelWithProjection" if cfg.proj_dim else "CLIPVisionModel",
            "siglip_vision_model": "SiglipVisionModel", "dinov3_vit": "DINOv3ViTModel"}[tower_model_type(cfg)]


def tower_to_hf(cfg) -> dict:
    """config.json of the transformers class that holds `cfg` (a backbone: these families have no classifier
    class in transformers that vitkit writes)."""
    model_type = tower_model_type(cfg)
    if cfg.num_classes and not (model_type.startswith("dinov2") and cfg.pool == "cls_mean"):
        raise ValueError(f"transformers has no {cfg.family} classifier class that holds this head: save with "
                         "--to timm or --to safetensors, or save the backbone (num_classes=0)")
    act = {v: k for k, v in ACTIVATIONS.items() if k != "gelu_new"}[cfg.act]
    hf = dict(model_type=model_type, architectures=[tower_architecture(cfg)], hidden_size=cfg.width,
              num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads, hidden_act=act,
              layer_norm_eps=cfg.norm_eps, image_size=cfg.image_size, patch_size=cfg.patch_size,
              num_channels=cfg.in_chans, torch_dtype="float32",
              id2label={str(i): name for i, name in enumerate(cfg.labels)},
              label2id={name: i for i, name in enumerate(cfg.labels)})
    if model_type.startswith("dinov2"):
        ratio = cfg.mlp_dim / cfg.width
        hf.update(mlp_ratio=int(ratio) if ratio.is_integer() else ratio, layerscale_value=cfg.layer_scale_init or 1.0,
                  qkv_bias=cfg.qkv_bias == "qkv", use_swiglu_ffn=False, drop_path_rate=0.0)
        if cfg.reg_tokens:
            hf["num_register_tokens"] = cfg.reg_tokens
    else:
        hf["intermediate_size"] = cfg.mlp_dim
    if model_type == "vit_mae":
        hf.update(qkv_bias=cfg.qkv_bias == "qkv", mask_ratio=0.0)
    if model_type == "dinov3_vit":
        query, key, value = {v: k for k, v in QKV_BIAS.items()}[cfg.qkv_bias]
        hf.update(rope_theta=cfg.rope_theta, num_register_tokens=cfg.reg_tokens, layerscale_value=cfg.layer_scale_init
                  or 1.0, query_bias=query, key_bias=key, value_bias=value, proj_bias=True, mlp_bias=True,
                  use_gated_mlp=cfg.mlp == "swiglu", drop_path_rate=0.0)
    if cfg.proj_dim:
        hf["projection_dim"] = cfg.proj_dim
    if model_type == "siglip_vision_model":
        hf["vision_use_head"] = cfg.pool == "map"
    return hf
