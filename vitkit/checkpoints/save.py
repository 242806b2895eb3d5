"""vitkit -> transformers folder, timm file/folder, JAX .npz, or vitkit's own .safetensors (config and
preprocessing in its metadata). Every format carries labels, preprocessing and the architecture name where the
format can: a transformers folder in config.json (id2label, vitkit_arch, vitkit_preprocess) and
preprocessor_config.json; a timm .safetensors in its metadata (vitkit_config, vitkit_preprocess), a timm folder in
timm's config.json too; a .pth state dict or a JAX .npz nowhere (`what_is_lost` says so).

Try it:  vitkit convert ../shared/weights/deit-tiny-patch16-224/model.safetensors --arch deit_tiny_patch16_224 \
           --to hf --out /tmp/deit-hf
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vitkit.checkpoints.convert import VITKIT_ARCH, VITKIT_CONFIG, VITKIT_LAYOUT, VITKIT_PREPROCESS
from vitkit.checkpoints.hf_config import (config_from_hf, config_to_hf, hf_architecture, hf_model_type, spec_to_hf,
                                          transformers_view)
from vitkit.checkpoints.io import PICKLE_SUFFIXES, CheckpointError, write_atomic_text, write_tensors
from vitkit.checkpoints.layouts import JAX_KEYMAP, hf_keymap, timm_keymap
from vitkit.checkpoints.text_config import text_config_to_hf
from vitkit.checkpoints.text_layouts import hf_text_keymap
from vitkit.choices import SAVE_FORMATS
from vitkit.config import RUNTIME_FIELDS, PreprocessSpec, ViTConfig
from vitkit.models.registry import ARCHS
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
    # vitkit's exact spec (as transformers will run it) and architecture name; transformers ignores unknown keys
    hf[VITKIT_PREPROCESS] = transformers_view(spec).to_dict()
    if cfg.arch:
        hf[VITKIT_ARCH] = cfg.arch
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
    hf[VITKIT_PREPROCESS] = transformers_view(spec).to_dict()
    write_atomic_text(_json(hf), folder / "config.json")
    write_atomic_text(_json(spec_to_hf(spec, hf_model_type(vcfg))), folder / "preprocessor_config.json")
    for name in TOKENIZER_FILES if tokenizer_folder else ():
        if (Path(tokenizer_folder) / name).is_file():
            shutil.copyfile(Path(tokenizer_folder) / name, folder / name)
    return folder


def _check_hf_holds(cfg: ViTConfig, hf: dict, shapes: dict[str, tuple]) -> None:
    """Refuse, before writing, a network that the transformers class would build differently (e.g. DINOv2
    without positions for its class token): the config read back must describe the same network."""
    ignored = {"labels", "family", "arch", *RUNTIME_FIELDS} | (set() if cfg.dist_token else {"dist_head"})
    back = config_from_hf(hf, shapes).to_dict()
    differ = [k for k, v in cfg.to_dict().items() if k not in ignored and back.get(k) != v]
    if differ:
        raise CheckpointError(f"transformers' {hf['architectures'][0]} cannot hold this network: it differs in "
                              f"{', '.join(f'{k} ({getattr(cfg, k)!r})' for k in differ)}; save --to timm or "
                              "--to safetensors instead")


# fields that timm's create_model takes from elsewhere (num_classes from the file's config, img_size from model_args)
# or that leave its network as it is (names, init values' sizes, run-time choices); LayerNorm eps: timm builds 1e-6
# where transformers' configs say 1e-12, a difference in float round-off only
TIMM_FREE_FIELDS = {"num_classes", "dist_head", "image_size", "labels", "multi_label", "thresholds", "arch", "family",
                    "norm_eps", *RUNTIME_FIELDS}
TIMM_CROP_MODE = {"shortest": "center", "exact": "squash"}  # vitkit's resize_mode -> timm's eval crop_mode
STATE_DICT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


def _timm_arch(cfg: ViTConfig, arch: str | None = None) -> str:
    """The timm architecture to write `cfg` as: `arch`, else the one the source named. Raises, naming what is
    missing, when neither says, and when vitkit's row of that name is another network."""
    name = arch or cfg.arch
    if not name:
        raise CheckpointError("timm builds a model from its architecture name and this source does not say which "
                              "it is (a transformers folder or a weights file without vitkit's metadata): pass "
                              "--arch NAME, timm's name for it (`vitkit models` lists the known ones)")
    row = ARCHS.get(name)
    if row is not None:  # a timm name vitkit has no row for: timm's strict load is the check
        mine, theirs = _timm_structure(cfg), _timm_structure(row.config)
        differ = [f"{k} {mine[k]!r} (timm's: {theirs[k]!r})" for k in mine if mine[k] != theirs[k]]
        if differ:
            raise CheckpointError(f"this network is not timm's {name}: it differs in {', '.join(differ)}; pass the "
                                  "right --arch")
    return name


def _timm_structure(cfg: ViTConfig) -> dict:
    """What timm's create_model(name) fixes of the network: the config without TIMM_FREE_FIELDS (layer scale: whether
    there is one, its weights hold the values)."""
    out = {k: v for k, v in cfg.to_dict().items() if k not in TIMM_FREE_FIELDS}
    out["layer_scale_init"] = cfg.layer_scale_init is not None
    return out


def _timm_pretrained_cfg(cfg: ViTConfig, spec: PreprocessSpec) -> dict:
    """timm's pretrained_cfg for the folder's config.json: its eval transform (timm rounds crops half to even;
    vitkit_preprocess keeps a floored recipe exact) and what the factory reads of the head."""
    if spec.resize_mode not in TIMM_CROP_MODE:
        raise LayoutCannotHold(f"resize mode {spec.resize_mode} has no timm eval transform: save the model without "
                               "--resize-mode pad, or as one .safetensors file (its metadata keeps the mode)")
    return dict(input_size=[cfg.in_chans, spec.input_size, spec.input_size], crop_pct=spec.crop_pct,
                crop_mode=TIMM_CROP_MODE[spec.resize_mode], interpolation=spec.interpolation, mean=list(spec.mean),
                std=list(spec.std), num_classes=cfg.num_classes, fixed_input_size=True, first_conv="patch_embed.proj",
                classifier=["head", "head_dist"] if cfg.dist_token and cfg.dist_head else "head", custom_load=False)


def _metadata(cfg: ViTConfig, spec: PreprocessSpec, layout: str) -> dict[str, str]:
    """safetensors metadata (strings) that makes a file self-describing for vitkit: config (labels and architecture
    name inside), preprocessing, and the layout of its tensors."""
    return {"format": "pt", VITKIT_CONFIG: json.dumps(cfg.to_dict()), VITKIT_PREPROCESS: json.dumps(spec.to_dict()),
            VITKIT_LAYOUT: layout}


def save_timm(net: VisionTransformer, spec: PreprocessSpec, target: str | Path, arch: str | None = None) -> Path:
    """A timm state dict (.safetensors with vitkit's metadata, or .pth) that timm.create_model(arch,
    checkpoint_path=...) loads; a folder target gets model.safetensors and timm's hub config.json, which
    timm.create_model("local-dir:FOLDER", pretrained=True) reads. `arch`: timm's name, when the source has none."""
    cfg, target = net.config, Path(target)
    named = cfg.replace(arch=_timm_arch(cfg, arch))
    tensors = timm_keymap(cfg).to_foreign(net.state_dict(), cfg)
    if target.name.endswith(STATE_DICT_SUFFIXES):
        write_tensors(tensors, target, _metadata(named, spec, "timm") if target.suffix == ".safetensors" else None)
        return target
    meta = dict(architecture=named.arch, num_classes=cfg.num_classes, num_features=cfg.width,
                pretrained_cfg=_timm_pretrained_cfg(cfg, spec))
    meta[VITKIT_PREPROCESS] = spec.to_dict()  # vitkit's exact recipe; timm reads pretrained_cfg
    if cfg.num_classes:
        meta["label_names"] = list(cfg.labels)
    row = ARCHS.get(named.arch)
    if row is not None and row.config.image_size != cfg.image_size:
        meta["model_args"] = {"img_size": cfg.image_size}  # a fine-tune at another resolution
    write_tensors(tensors, target / "model.safetensors", _metadata(named, spec, "timm"))
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
    write_tensors(net.state_dict(), target, metadata=_metadata(net.config, spec, "vitkit"))
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


def what_is_lost(fmt: str, target: str | Path, spec: PreprocessSpec) -> list[str]:
    """What a conversion to `fmt` at `target` cannot keep, one sentence each (nothing: an empty list)."""
    if fmt == "jax":
        return ["the JAX .npz layout has no place for labels, preprocessing or the architecture: load it with "
                "--arch NAME (labels class_0 ..., the architecture's preprocessing)"]
    if fmt == "timm" and Path(target).name.endswith(PICKLE_SUFFIXES):
        return [f"a {Path(target).suffix} state dict has no place for labels, preprocessing or the architecture name: "
                "write .safetensors or a folder to keep them"]
    crops = spec.resize_mode == "shortest" or spec.resize != spec.input_size  # the centre crop cuts something
    if fmt == "hf" and crops and transformers_view(spec).crop_offset_rounding != spec.crop_offset_rounding:
        return ["transformers floors a centre crop's offset where this recipe rounds it half to even (timm's "
                "rule): on some image sizes the folder's crop starts 1 px earlier, in vitkit as in transformers"]
    folder = not Path(target).name.endswith(STATE_DICT_SUFFIXES)  # timm reads an eval transform from its config.json
    if fmt == "timm" and folder and crops and spec.crop_offset_rounding == "floor":
        return ["timm's eval transform rounds a centre crop's offset half to even where this recipe floors it "
                "(transformers' rule): on some image sizes timm's crop starts 1 px later; vitkit keeps the recipe"]
    return []


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
