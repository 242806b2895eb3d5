"""vitkit -> transformers folder, timm file/folder, JAX .npz, or vitkit's own .safetensors (config and
preprocessing in its metadata). Every format carries labels and preprocessing where the format can.

Try it:  vitkit convert ../shared/weights/deit-tiny-patch16-224/model.safetensors --arch deit_tiny_patch16_224 \
           --to hf --out /tmp/deit-hf
"""

from __future__ import annotations

import json
from pathlib import Path

from vitkit.checkpoints.convert import VITKIT_CONFIG, VITKIT_PREPROCESS
from vitkit.checkpoints.hf_config import config_to_hf, hf_architecture, hf_model_type, spec_to_hf
from vitkit.checkpoints.io import CheckpointError, write_atomic_text, write_tensors
from vitkit.checkpoints.layouts import JAX_KEYMAP, hf_keymap, timm_keymap
from vitkit.config import PreprocessSpec
from vitkit.models.vit import VisionTransformer

FORMATS = ("hf", "timm", "safetensors", "jax")


def _json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def save_hf(net: VisionTransformer, spec: PreprocessSpec, folder: str | Path) -> Path:
    """A folder that transformers' AutoModel / *ForImageClassification and AutoImageProcessor load."""
    cfg, folder = net.config, Path(folder)
    _, prefix = hf_architecture(cfg)
    tensors = hf_keymap(cfg, prefix).to_foreign(net.state_dict(), cfg)
    write_tensors(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    hf = config_to_hf(cfg)
    hf[VITKIT_PREPROCESS] = spec.to_dict()  # exact spec for vitkit; transformers ignores unknown keys
    write_atomic_text(_json(hf), folder / "config.json")
    write_atomic_text(_json(spec_to_hf(spec, hf_model_type(cfg))), folder / "preprocessor_config.json")
    return folder


def _timm_pretrained_cfg(net: VisionTransformer, spec: PreprocessSpec) -> dict:
    return dict(input_size=[net.config.in_chans, spec.input_size, spec.input_size], crop_pct=spec.crop_pct,
                interpolation=spec.interpolation, mean=list(spec.mean), std=list(spec.std),
                num_classes=net.config.num_classes, crop_mode="center")


def save_timm(net: VisionTransformer, spec: PreprocessSpec, target: str | Path, arch: str | None = None) -> Path:
    """A timm state dict (.safetensors or .pth); a folder target also gets timm's hub config.json."""
    cfg, target = net.config, Path(target)
    tensors = timm_keymap(cfg).to_foreign(net.state_dict(), cfg)
    if target.suffix in (".safetensors", ".pth", ".bin", ".pt"):
        write_tensors(tensors, target)
        return target
    if arch is None:
        raise CheckpointError("a timm folder needs the timm architecture name (--arch) for its config.json")
    write_tensors(tensors, target / "model.safetensors", metadata={"format": "pt"})
    meta = dict(architecture=arch, num_classes=cfg.num_classes, num_features=cfg.width,
                label_names=list(cfg.labels), pretrained_cfg=_timm_pretrained_cfg(net, spec))
    write_atomic_text(_json(meta), target / "config.json")
    return target


def save_vitkit(net: VisionTransformer, spec: PreprocessSpec, target: str | Path) -> Path:
    """One .safetensors in vitkit's layout, with config and preprocessing in its metadata."""
    metadata = {"format": "pt", VITKIT_CONFIG: json.dumps(net.config.to_dict()),
                VITKIT_PREPROCESS: json.dumps(spec.to_dict())}
    write_tensors(net.state_dict(), target, metadata=metadata)
    return Path(target)


def save_jax(net: VisionTransformer, spec: PreprocessSpec, target: str | Path) -> Path:
    """Google's vision_transformer .npz layout (plain ViT only: class token, absolute positions)."""
    cfg = net.config
    if cfg.family == "beit" or cfg.dist_token or cfg.qkv_bias != "qkv":
        raise CheckpointError("the JAX vision_transformer layout holds plain ViTs only (no BEiT, no distillation)")
    write_tensors(JAX_KEYMAP.to_foreign(net.state_dict(), cfg), target)
    return Path(target)


def save(net: VisionTransformer, spec: PreprocessSpec, fmt: str, target: str | Path, arch: str | None = None):
    if fmt == "hf":
        return save_hf(net, spec, target)
    if fmt == "timm":
        return save_timm(net, spec, target, arch)
    if fmt == "safetensors":
        return save_vitkit(net, spec, target)
    if fmt == "jax":
        return save_jax(net, spec, target)
    raise CheckpointError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
