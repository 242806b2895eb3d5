"""vitkit -> transformers folder, timm file/folder, JAX .npz, or vitkit's own .safetensors (config and
preprocessing in its metadata). Every format carries labels and preprocessing where the format can.

Try it:  vitkit convert ../shared/weights/deit-tiny-patch16-224/model.safetensors --arch deit_tiny_patch16_224 \
           --to hf --out /tmp/deit-hf
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vitkit.checkpoints.convert import VITKIT_CONFIG, VITKIT_PREPROCESS
from vitkit.checkpoints.hf_config import config_from_hf, config_to_hf, hf_architecture, hf_model_type, spec_to_hf
from vitkit.checkpoints.io import CheckpointError, write_atomic_text, write_tensors
from vitkit.checkpoints.layouts import JAX_KEYMAP, hf_keymap, timm_keymap
from vitkit.checkpoints.text_config import text_config_to_hf
from vitkit.checkpoints.text_layouts import hf_text_keymap
from vitkit.choices import SAVE_FORMATS
from vitkit.config import RUNTIME_FIELDS, PreprocessSpec, ViTConfig
from vitkit.models.text import TextTransformer
from vitkit.models.vit import VisionTransformer

FORMATS = SAVE_FORMATS
JAX_PLAIN_FIELDS = ("class_token", "dist_token", "reg_tokens", "class_pos_embed", "abs_pos_embed", "rel_pos_bias",
                    "qkv_bias", "layer_scale_init", "patch_bias", "pre_norm", "act", "pool", "fc_norm", "proj_dim")


def _json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


class LayoutCannotHold(CheckpointError):
    """The format has no place for this network (nothing was written)."""


def save_hf(net: VisionTransformer, spec: PreprocessSpec, folder: str | Path) -> Path:
    """A folder that transformers' AutoModel / *ForImageClassification and AutoImageProcessor load. Raises
    LayoutCannotHold, before writing anything, for a network no transformers class holds."""
    cfg, folder = net.config, Path(folder)
    try:
        _, prefix = hf_architecture(cfg)
        tensors = hf_keymap(cfg, prefix).to_foreign(net.state_dict(), cfg)
        hf = config_to_hf(cfg)
        _check_hf_holds(cfg, hf, {k: tuple(v.shape) for k, v in tensors.items()})
    except (ValueError, CheckpointError) as err:
        raise LayoutCannotHold(str(err)) from None
    write_tensors(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    hf[VITKIT_PREPROCESS] = spec.to_dict()  # exact spec for vitkit; transformers ignores unknown keys
    write_atomic_text(_json(hf), folder / "config.json")
    write_atomic_text(_json(spec_to_hf(spec, hf_model_type(cfg))), folder / "preprocessor_config.json")
    return folder


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "spiece.model")


def save_image_text_hf(vision: VisionTransformer, text: TextTransformer, spec: PreprocessSpec, folder: str | Path,
                       tokenizer_folder: str | Path | None = None) -> Path:
    """An image-text pair as the folder transformers' CLIPModel / SiglipModel load (from_pretrained), with the
    tokenizer files of `tokenizer_folder` copied beside it. Raises LayoutCannotHold before writing anything."""
    vcfg, tcfg, folder = vision.config, text.config, Path(folder)
    try:
        if vcfg.family != tcfg.family:
            raise ValueError(f"a {vcfg.family} image tower with a {tcfg.family} text tower")
        if vcfg.embed_dim != tcfg.embed_dim:
            raise ValueError(f"image embeddings are {vcfg.embed_dim}-d, text embeddings {tcfg.embed_dim}-d")
        tensors = {**hf_keymap(vcfg, "vision_model.").to_foreign(vision.state_dict(), vcfg),
                   **hf_text_keymap(tcfg).to_foreign(text.state_dict(), tcfg)}
        vision_hf = {k: v for k, v in config_to_hf(vcfg).items() if k not in ("architectures", "id2label", "label2id")}
        hf = dict(model_type=tcfg.family, architectures=["CLIPModel" if tcfg.family == "clip" else "SiglipModel"],
                  vision_config=vision_hf, text_config=text_config_to_hf(tcfg), torch_dtype="float32")
        if tcfg.family == "clip":
            hf["projection_dim"] = tcfg.proj_dim
    except (ValueError, CheckpointError) as err:
        raise LayoutCannotHold(str(err)) from None
    folder.mkdir(parents=True, exist_ok=True)
    write_tensors(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    hf[VITKIT_PREPROCESS] = spec.to_dict()
    write_atomic_text(_json(hf), folder / "config.json")
    write_atomic_text(_json(spec_to_hf(spec, hf_model_type(vcfg))), folder / "preprocessor_config.json")
    for name in TOKENIZER_FILES if tokenizer_folder else ():
        if (Path(tokenizer_folder) / name).is_file():
            shutil.copyfile(Path(tokenizer_folder) / name, folder / name)
    return folder


def _check_hf_holds(cfg: ViTConfig, hf: dict, shapes: dict[str, tuple]) -> None:
    """Refuse, before writing, a network that the transformers class would build differently (e.g. DINOv2
    without positions for its class token): the config read back must describe the same network."""
    ignored = {"labels", "family", *RUNTIME_FIELDS} | (set() if cfg.dist_token else {"dist_head"})
    back = config_from_hf(hf, shapes).to_dict()
    differ = [k for k, v in cfg.to_dict().items() if k not in ignored and back.get(k) != v]
    if differ:
        raise CheckpointError(f"transformers' {hf['architectures'][0]} cannot hold this network: it differs in "
                              f"{', '.join(f'{k} ({getattr(cfg, k)!r})' for k in differ)}; save --to timm or "
                              "--to safetensors instead")


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


def save_folder(net: VisionTransformer, spec: PreprocessSpec, folder: str | Path) -> str:
    """A model folder every vitkit loader reads: transformers' layout when one of its classes holds the network
    (then transformers reads it too), else vitkit's safetensors (config and preprocessing inside) as
    folder/model.safetensors (e.g. a DINOv2, CLIP or SigLIP backbone with a new classifier). Returns the layout."""
    try:
        save_hf(net, spec, folder)
        return "hf"
    except LayoutCannotHold:
        save_vitkit(net, spec, Path(folder) / "model.safetensors")
        return "vitkit"


def save_vitkit(net: VisionTransformer, spec: PreprocessSpec, target: str | Path) -> Path:
    """One .safetensors in vitkit's layout, with config and preprocessing in its metadata."""
    metadata = {"format": "pt", VITKIT_CONFIG: json.dumps(net.config.to_dict()),
                VITKIT_PREPROCESS: json.dumps(spec.to_dict())}
    write_tensors(net.state_dict(), target, metadata=metadata)
    return Path(target)


def save_jax(net: VisionTransformer, spec: PreprocessSpec, target: str | Path) -> Path:
    """Google's vision_transformer .npz layout (plain ViT only: class token, absolute positions)."""
    cfg = net.config
    plain = ViTConfig()  # the layout's structure: every field below at ViT's default
    fancy = [k for k in JAX_PLAIN_FIELDS if getattr(cfg, k) != getattr(plain, k)]
    if fancy:
        raise CheckpointError(f"the JAX vision_transformer layout holds plain ViTs only (this one has "
                              f"{', '.join(f'{k}={getattr(cfg, k)!r}' for k in fancy)})")
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
