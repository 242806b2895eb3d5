"""transformers' config.json / preprocessor_config.json <-> vitkit's ViTConfig / PreprocessSpec.

Try it:  python -m pytest tests/test_parity_hf.py -q -k roundtrip
"""

from __future__ import annotations

import dataclasses
import math

from vitkit.checkpoints.hf_towers import (TOWER_TYPES, tower_architecture, tower_fields, tower_model_type, tower_prefix,
                                         tower_to_hf)
from vitkit.config import ViTConfig, PreprocessSpec

PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
RESAMPLE_CODE = {name: code for code, name in PIL_RESAMPLE.items()}
SUPPORTED_TYPES = ("vit", "deit", "beit") + TOWER_TYPES
TOWER_FAMILIES = ("mae", "dinov2", "dinov3", "clip", "siglip")
THRESHOLDS = "vitkit_thresholds"  # config.json: a multi-label head's per-class thresholds, in id order


def _side(value, what: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        h, w = value
    elif not isinstance(value, dict):
        raise ValueError(f"{what} must be an integer, [height, width] or {{'height', 'width'}}, got {value!r}")
    else:
        if "shortest_edge" in value:
            return value["shortest_edge"]
        h, w = value["height"], value["width"]
    if h != w:
        raise ValueError(f"non-square {what} {h}x{w} is not supported")
    return h


def _rows(shapes: dict[str, tuple], suffixes: tuple[str, ...]) -> int:
    """Output rows of the first weight whose key ends with one of `suffixes`, or 0 when absent."""
    return next((shape[0] for key, shape in shapes.items() if key.endswith(suffixes)), 0)


def config_from_hf(hf: dict, shapes: dict[str, tuple]) -> ViTConfig:
    """A ViTConfig from transformers' config.json; head and pooler sizes come from the checkpoint's
    shapes (`shapes`: its key -> shape), so a *Model checkpoint without a head loads as a backbone."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_TYPES:
        raise ValueError(f"unsupported transformers model_type {model_type!r}: vitkit reads {SUPPORTED_TYPES}")
    if model_type in TOWER_TYPES:
        return ViTConfig(**_with_labels(tower_fields(hf, shapes, _side), hf))
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r}: ViT-family checkpoints use exact 'gelu'")
    architecture = (hf.get("architectures") or [""])[0]
    fields = dict(
        image_size=_side(hf.get("image_size", 224), "image_size"),
        patch_size=_side(hf.get("patch_size", 16), "patch_size"),
        in_chans=hf.get("num_channels", 3),
        width=hf["hidden_size"],
        depth=hf["num_hidden_layers"],
        heads=hf["num_attention_heads"],
        mlp_dim=hf["intermediate_size"],
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        num_classes=_rows(shapes, ("classifier.weight", "cls_classifier.weight")),
        pre_logits_dim=_rows(shapes, ("pooler.dense.weight",)),
        family=model_type,
        pos_embed_antialias=False,  # transformers' interpolate_pos_encoding: bicubic without antialias
    )
    if model_type == "vit":
        fields["qkv_bias"] = "qkv" if hf.get("qkv_bias", True) else "none"
    elif model_type == "deit":
        fields.update(dist_token=True, dist_head=architecture.endswith("WithTeacher"))
    else:
        mean_pool = hf.get("use_mean_pooling", True)
        rel = "shared" if hf.get("use_shared_relative_position_bias") else (
            "layer" if hf.get("use_relative_position_bias") else "none")
        scale = hf.get("layer_scale_init_value", 0.1)
        fields.update(abs_pos_embed=hf.get("use_absolute_position_embeddings", False), rel_pos_bias=rel,
                      qkv_bias="qv", layer_scale_init=scale if scale > 0 else None,
                      pool="mean" if mean_pool else "cls", fc_norm=mean_pool)
    return ViTConfig(**_with_labels(fields, hf))


def _with_labels(fields: dict, hf: dict) -> dict:
    """`fields` with the classifier's label names from id2label, when there are as many as classes, and its
    multi-label setting (transformers' problem_type, vitkit's tuned thresholds)."""
    if fields["num_classes"]:
        id2label = hf.get("id2label") or {}
        labels = tuple(id2label[k] for k in sorted(id2label, key=int))
        if len(labels) == fields["num_classes"]:
            fields["labels"] = labels
        if hf.get("problem_type") == "multi_label_classification":
            fields["multi_label"] = True
            fields["thresholds"] = tuple(hf.get(THRESHOLDS) or ())
    return fields


def multi_label_to_hf(cfg: ViTConfig) -> dict:
    """transformers' problem_type for a multi-label head (its loss is then BCE) and vitkit's thresholds."""
    if not cfg.multi_label:
        return {}
    return {"problem_type": "multi_label_classification", THRESHOLDS: list(cfg.class_thresholds())}


def hf_model_type(cfg: ViTConfig) -> str:
    """The transformers family that can hold this network (plain DeiT is published as 'vit')."""
    if cfg.family in TOWER_FAMILIES:
        return tower_model_type(cfg)
    if cfg.qkv_bias == "qv" or cfg.rel_pos_bias != "none":
        return "beit"
    return "deit" if cfg.dist_token else "vit"


def hf_architecture(cfg: ViTConfig) -> tuple[str, str]:
    """(architecture class name, state-dict prefix of its backbone)."""
    if cfg.family in TOWER_FAMILIES:
        return tower_architecture(cfg), tower_prefix(cfg)
    model_type = hf_model_type(cfg)
    name = {"vit": "ViT", "deit": "DeiT", "beit": "Beit"}[model_type]
    if not cfg.num_classes:
        return f"{name}Model", ""
    if cfg.pre_logits_dim:
        raise ValueError("transformers has no classifier class with a pre-logits layer; save the backbone "
                         "(num_classes=0) or drop the pre-logits layer first")
    suffix = "ForImageClassificationWithTeacher" if cfg.dist_token and cfg.dist_head else "ForImageClassification"
    return name + suffix, model_type + "."


def config_to_hf(cfg: ViTConfig) -> dict:
    return {**_backbone_to_hf(cfg), **multi_label_to_hf(cfg)}


def _backbone_to_hf(cfg: ViTConfig) -> dict:
    if cfg.family in TOWER_FAMILIES:
        return tower_to_hf(cfg)
    model_type = hf_model_type(cfg)
    architecture, _ = hf_architecture(cfg)
    labels = cfg.labels
    hf = dict(
        model_type=model_type, architectures=[architecture], hidden_size=cfg.width, num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.heads, intermediate_size=cfg.mlp_dim, hidden_act="gelu",
        layer_norm_eps=cfg.norm_eps, image_size=cfg.image_size, patch_size=cfg.patch_size,
        num_channels=cfg.in_chans, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        id2label={str(i): name for i, name in enumerate(labels)},
        label2id={name: i for i, name in enumerate(labels)},
        torch_dtype="float32",
    )
    if model_type == "vit":
        hf["qkv_bias"] = cfg.qkv_bias == "qkv"
    if cfg.pre_logits_dim:
        hf.update(pooler_output_size=cfg.pre_logits_dim, pooler_act="tanh")
    if model_type == "beit":
        hf.update(
            use_absolute_position_embeddings=cfg.abs_pos_embed,
            use_relative_position_bias=cfg.rel_pos_bias == "layer",
            use_shared_relative_position_bias=cfg.rel_pos_bias == "shared",
            layer_scale_init_value=cfg.layer_scale_init or 0.0, use_mean_pooling=cfg.pool == "mean",
            use_mask_token=False, drop_path_rate=0.0,
        )
    return hf


def spec_from_hf(pre: dict) -> PreprocessSpec:
    """A PreprocessSpec from transformers' preprocessor_config.json: its crops start where transformers' center_crop
    starts them (the offset floored, for the shortest-edge processors too)."""
    if pre.get("rescale_factor", 1 / 255) != 1 / 255 and pre.get("do_rescale", True):
        raise ValueError(f"unsupported rescale_factor {pre['rescale_factor']}")
    size = pre.get("size", 224)
    resize = _side(size, "size")
    mode = "shortest" if isinstance(size, dict) and "shortest_edge" in size else "exact"
    crop = _side(pre.get("crop_size", resize), "crop_size") if pre.get("do_center_crop") else resize
    crop_pct = crop / resize
    if math.floor(crop / crop_pct) != resize:  # float rounding, e.g. 224 / (224 / 256) -> 255.99...
        crop_pct = math.nextafter(crop_pct, 0.0)
    normalize = pre.get("do_normalize", True)
    resample = pre.get("resample", 2)
    return PreprocessSpec(
        input_size=crop, crop_pct=crop_pct, resize_mode=mode, crop_rounding="floor" if mode == "shortest" else None,
        interpolation=PIL_RESAMPLE[int(resample)] if not isinstance(resample, str) else resample,
        mean=tuple(pre.get("image_mean", (0.5,) * 3)) if normalize else (0.0,) * 3,
        std=tuple(pre.get("image_std", (0.5,) * 3)) if normalize else (1.0,) * 3,
    )


def transformers_view(spec: PreprocessSpec) -> PreprocessSpec:
    """The recipe transformers runs for `spec` once it is written by spec_to_hf: the same resize and crop size, the
    crop offset floored. timm's rule rounds it half to even (torchvision's CenterCrop), and no transformers
    processor does: on an image whose margin (side - crop) is 3 mod 4 pixels, e.g. 400x296 -> 335x248 -> 224,
    timm's crop starts at 56 and transformers' at 55 (11 of the 100 photos in ../shared/images at crop_pct 0.9)."""
    return dataclasses.replace(spec, crop_rounding="floor" if spec.resize_mode == "shortest" else None)


def spec_to_hf(spec: PreprocessSpec, model_type: str) -> dict:
    """preprocessor_config.json for transformers. The shorter-side rule is written for BitImageProcessor, the
    transformers processor that resizes the shortest edge (as torchvision's Resize: the longer side truncated) and
    centre-crops; transformers then runs `transformers_view(spec)`."""
    common = dict(do_resize=True, resample=RESAMPLE_CODE[spec.interpolation], do_rescale=True,
                  rescale_factor=1 / 255, do_normalize=True, image_mean=list(spec.mean), image_std=list(spec.std))
    if spec.resize_mode == "pad":
        raise ValueError("resize mode pad (letterbox) has no transformers image processor: save the model without "
                         "--resize-mode pad, or export it (vitkit export onnx keeps the mode in its metadata)")
    crop = spec.resize != spec.input_size
    if spec.resize_mode == "shortest":
        return dict(common, image_processor_type="BitImageProcessor", size={"shortest_edge": spec.resize},
                    do_center_crop=True, crop_size={"height": spec.input_size, "width": spec.input_size},
                    do_convert_rgb=True)
    processor = {"vit": "ViTImageProcessor", "deit": "DeiTImageProcessor", "beit": "BeitImageProcessor",
                 "vit_mae": "ViTImageProcessor", "siglip_vision_model": "SiglipImageProcessor"}.get(
        model_type, "ViTImageProcessor")
    out = dict(common, image_processor_type=processor, size={"height": spec.resize, "width": spec.resize})
    if crop or model_type in ("deit", "beit"):
        out.update(do_center_crop=crop, crop_size={"height": spec.input_size, "width": spec.input_size})
    return out
