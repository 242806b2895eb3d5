"""Any supported source -> a ready VisionTransformer and its preprocessing: detect -> map -> resample ->
strict load. Sources: a registry name, a hub id, a local folder (transformers or timm), a weights file
(with an architecture name when the file carries no config).

Try it:  python -c "from vitkit.checkpoints.convert import load_network; \
print(load_network('../shared/weights/deit-tiny-patch16-224/model.safetensors', 'deit_tiny_patch16_224'))"
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from vitkit.assets import SHIPPED, shipped_path
from vitkit.checkpoints import hub
from vitkit.checkpoints.hf_config import config_from_hf, spec_from_hf
from vitkit.checkpoints.io import CheckpointError, read_tensors
from vitkit.checkpoints.keymap import short
from vitkit.checkpoints.layouts import (JAX_KEYMAP, OPENCLIP_KEYMAP, detect_layout, hf_keymap, hf_prefix,
                                        strip_jax_prefix, timm_keymap)
from vitkit.checkpoints.provenance import provenance, split_revision
from vitkit.checkpoints.openclip_config import config_from_openclip, spec_from_openclip
from vitkit.config import RUNTIME_FIELDS, PreprocessSpec, ViTConfig
from vitkit.models.pos_embed import resample_abs_pos_embed, resample_rel_pos_table
from vitkit.models.registry import ARCHS, MODELS, arch as get_arch, preprocess_for
from vitkit.models.vit import VisionTransformer

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin.index.json",
                "pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")
WEIGHT_GLOBS = ("*.safetensors", "*.pth", "*.bin", "*.pt", "*.npz")
# what vitkit writes beside the weights: its config and preprocessing (safetensors metadata, config.json), the layout
# of a .safetensors file's tensors ("vitkit" or "timm"), the architecture name in a transformers config.json
VITKIT_CONFIG, VITKIT_PREPROCESS, VITKIT_LAYOUT, VITKIT_ARCH = ("vitkit_config", "vitkit_preprocess", "vitkit_layout",
                                                               "vitkit_arch")


@dataclass
class Loaded:
    net: VisionTransformer
    preprocess: PreprocessSpec
    source: str  # what was loaded, for messages and metadata
    layout: str  # "hf", "timm", "jax", "openclip" or "vitkit"
    provenance: dict = field(default_factory=dict)  # hub commit and weights sha256 (checkpoints.provenance)

    def __repr__(self) -> str:
        c = self.net.config
        return (f"Loaded({self.source!r}, layout={self.layout}, width={c.width}, depth={c.depth}, "
                f"classes={c.num_classes}, input={self.preprocess.input_size})")


def load_network(model: str | None, arch: str | None = None, revision: str | None = None, **runtime) -> Loaded:
    """Resolve `model` and build the network, with its provenance (the hub commit read, the sha256 of its weights
    files). With no model, `arch` alone gives random weights. `revision` (or `org/name@REV`): a hub branch, tag or
    commit. `runtime`: config fields that change behaviour, not weights (see config.RUNTIME_FIELDS), e.g.
    rel_pos_resize="bilinear" to resize BEiT tables as transformers does."""
    if model is not None:
        model, pinned = split_revision(model)
        revision = revision or pinned
    loaded, where = _resolve(model, arch, revision, runtime)
    if where is not None:
        loaded.provenance = provenance(weights_in(where) if where.is_dir() else where, revision)
    return loaded


def _resolve(model: str | None, arch: str | None, revision: str | None, runtime: dict) -> tuple[Loaded, Path | None]:
    """-> (the loaded network, the folder or file its weights came from; None for random weights)."""
    unknown = set(runtime) - set(RUNTIME_FIELDS)
    if unknown:
        raise ValueError(f"cannot override {sorted(unknown)} at load time; allowed: {RUNTIME_FIELDS}")
    if model is None:
        if arch is None:
            raise CheckpointError("give a model (name, hub id, folder or weights file) or an architecture")
        net = VisionTransformer(_row_config(arch, runtime)).eval()
        return Loaded(net, get_arch(arch).preprocess, f"{arch} (random weights)", "vitkit"), None
    if model in MODELS:
        entry = MODELS[model]
        folder = hub.fetch(entry.hub_id, revision)
        return load_folder(folder, arch or entry.arch, preprocess_for(entry), model, runtime), folder
    if revision is not None and not hub.looks_like_hub_id(model):
        raise CheckpointError(f"a revision ({revision}) pins a hub model; {model} is not one")
    if model in SHIPPED:  # in the package: offline
        return load_folder(shipped_path(model), arch, source=model, runtime=runtime), shipped_path(model)
    path = Path(model).expanduser()
    if path.is_dir():
        return load_folder(path, arch, runtime=runtime), path
    if path.is_file():
        if arch is None and path.suffix.lower() in WEIGHT_SUFFIXES and _has_folder_config(path.parent):
            # its config beside it (one shard: the whole checkpoint its index names)
            weights = _index_naming(path) or path
            return load_folder(path.parent, source=str(path), runtime=runtime, weights=weights), weights
        return load_file(path, arch, runtime=runtime), path
    if model in ARCHS:
        raise CheckpointError(f"{model} is an architecture, not weights: pass the weights with "
                              f"--model FILE --arch {model}, or --arch {model} alone for random weights")
    if looks_local(model):
        raise FileNotFoundError(f"no such file or folder: {model}")
    if hub.looks_like_hub_id(model):
        folder = hub.fetch(model, revision)
        return load_folder(folder, arch, source=model if revision is None else f"{model}@{revision}",
                           runtime=runtime), folder
    raise CheckpointError(f"cannot find model {model!r}: not a registry name (see `vitkit models`), not a local "
                          "file or folder, and not a hub id (org/name)")


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz", ".ckpt", ".onnx")


def _has_folder_config(folder: Path) -> bool:
    return (folder / "config.json").is_file() or (folder / "open_clip_config.json").is_file()


def _index_naming(shard: Path) -> Path | None:
    """The *.index.json beside `shard` that lists it as one of its shards, if any."""
    for index in sorted(shard.parent.glob("*.index.json")):
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map") or {}
        except (ValueError, UnicodeDecodeError, AttributeError):
            continue  # not an index: read_tensors says so if it is the one loaded
        if isinstance(weight_map, dict) and shard.name in weight_map.values():
            return index
    return None


def _row_config(arch: str, runtime: dict | None) -> ViTConfig:
    """The architecture row's config, named by it, with the runtime fields asked for."""
    return get_arch(arch).config.replace(arch=arch, **(runtime or {}))


def _arch_named(meta: dict, source: Path) -> str | None:
    """The architecture a config.json names (vitkit's key in a transformers config), checked to be a name."""
    name = meta.get(VITKIT_ARCH)
    if name is not None and not isinstance(name, str):
        raise CheckpointError(f"{source}: {VITKIT_ARCH} must be an architecture name, found {name!r}")
    return name or None


def looks_local(model: str) -> bool:
    """A path, not a hub id: it starts like one (./ ../ / ~), has more than one slash, or names a weights file."""
    return (model.startswith((".", "/", "~", "\\")) or model.count("/") > 1 or "\\" in model
            or model.lower().endswith(WEIGHT_SUFFIXES))


def weights_in(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    for pattern in WEIGHT_GLOBS:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    raise CheckpointError(f"no weights file in {folder} (looked for {', '.join(WEIGHT_FILES + WEIGHT_GLOBS)})")


def load_folder(folder: Path, arch: str | None = None, fallback_spec: PreprocessSpec | None = None,
                source: str | None = None, runtime: dict | None = None, weights: Path | None = None) -> Loaded:
    """A transformers or timm folder. Preprocessing comes from the folder itself (vitkit's exact spec in
    config.json, else preprocessor_config.json, else timm's pretrained_cfg); `fallback_spec` (a registry
    row) is used only when the folder says nothing. `weights`: this file of the folder instead of the one
    weights_in finds (a weights file given by path, beside its config)."""
    folder = Path(folder)
    source = source or str(folder)
    weights = weights or weights_in(folder)
    config_file = folder / "config.json"
    meta = parsed(config_file, lambda: json_object(config_file)) if config_file.is_file() else {}
    spec = parsed(config_file, lambda: PreprocessSpec.from_dict(meta[VITKIT_PREPROCESS])) \
        if VITKIT_PREPROCESS in meta else None
    if "model_type" in meta:  # transformers
        tensors = read_tensors(weights)
        pre_file = folder / "preprocessor_config.json"
        if spec is None and pre_file.is_file():
            spec = parsed(pre_file, lambda: spec_from_hf(json_object(pre_file)))
        spec = spec or fallback_spec
        if spec is None:
            raise CheckpointError(f"{folder} has no preprocessor_config.json: vitkit will not guess the "
                                  "normalization; add one or load with --arch NAME to use that architecture's")
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        named = _arch_named(meta, config_file) or arch or ""
        cfg = parsed(config_file, lambda: config_from_hf(meta, shapes).replace(arch=named, **(runtime or {})))
        keymap = hf_keymap(cfg, hf_prefix(tensors))
        return Loaded(_build(keymap.to_native(tensors, cfg), cfg, keymap.name), spec, source, "hf")
    openclip_file = folder / "open_clip_config.json"
    if not meta and openclip_file.is_file():  # an OpenCLIP hub folder: its image tower
        oc = parsed(openclip_file, lambda: json_object(openclip_file))
        tensors = read_tensors(weights)
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        cfg = parsed(openclip_file, lambda: config_from_openclip(oc, shapes).replace(arch=arch or "",
                                                                                    **(runtime or {})))
        spec = spec or parsed(openclip_file, lambda: spec_from_openclip(oc))
        return Loaded(_build(OPENCLIP_KEYMAP.to_native(tensors, cfg), cfg, "openclip"), spec, source, "openclip")
    if "architecture" in meta:  # timm hub folder
        arch = arch or meta["architecture"]
        if spec is None and meta.get("pretrained_cfg"):
            spec = parsed(config_file, lambda: _spec_from_timm(meta["pretrained_cfg"], arch))
        loaded = load_file(weights, arch, spec or fallback_spec, source, runtime)
        label_names = meta.get("label_names") or meta.get("pretrained_cfg", {}).get("label_names")
        if label_names and len(label_names) == loaded.net.config.num_classes:
            loaded.net.config = loaded.net.config.replace(labels=tuple(label_names))
        return loaded
    return load_file(weights, arch, spec or fallback_spec, source, runtime)


def json_object(path: Path) -> dict:
    value = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, found {type(value).__name__}")
    return value


def parsed(source: Path, build):
    """`build()`, with any error in what it reads from `source` (a missing field, a wrong type, a value out of
    range, broken JSON) as one CheckpointError that names the file."""
    try:
        return build()
    except CheckpointError:
        raise
    except KeyError as err:
        raise CheckpointError(f"{source}: missing field {err.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{source}: {err}") from None


TIMM_CROP_MODES = {"center": "shortest", "squash": "exact"}  # timm's eval crop_mode -> vitkit's resize_mode


def _spec_from_timm(pretrained_cfg: dict, arch: str) -> PreprocessSpec:
    """timm's eval transform of a pretrained_cfg (torchvision's crop rounding); what it leaves out, the row's."""
    base = get_arch(arch).preprocess
    crop_mode = pretrained_cfg.get("crop_mode") or "center"
    if crop_mode not in TIMM_CROP_MODES:
        raise ValueError(f"timm crop_mode {crop_mode!r} is not supported (vitkit reads {', '.join(TIMM_CROP_MODES)})")
    return PreprocessSpec(
        input_size=pretrained_cfg.get("input_size", (3, base.input_size, base.input_size))[-1],
        crop_pct=pretrained_cfg.get("crop_pct", base.crop_pct), resize_mode=TIMM_CROP_MODES[crop_mode],
        crop_rounding="half_even" if crop_mode == "squash" else None,  # torchvision's crop, in either mode
        interpolation=pretrained_cfg.get("interpolation", base.interpolation),
        mean=tuple(pretrained_cfg.get("mean", base.mean)), std=tuple(pretrained_cfg.get("std", base.std)),
    )


def _vitkit_metadata(path: Path) -> dict[str, str]:
    if not path.name.endswith(".safetensors"):
        return {}
    try:
        with safe_open(path, framework="pt") as fh:
            return fh.metadata() or {}
    except SafetensorError as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from None


def load_file(path: Path, arch: str | None = None, spec: PreprocessSpec | None = None,
              source: str | None = None, runtime: dict | None = None) -> Loaded:
    path = Path(path)
    source = source or str(path)
    meta = _vitkit_metadata(path)
    tensors = read_tensors(path)
    if VITKIT_CONFIG in meta:  # written by vitkit: config, labels, architecture name and preprocessing inside
        layout = meta.get(VITKIT_LAYOUT, "vitkit")
        if layout not in ("vitkit", "timm"):
            raise CheckpointError(f"{path}: {VITKIT_LAYOUT} {layout!r} is not 'vitkit' or 'timm'")
        cfg = parsed(path, lambda: ViTConfig.from_dict(json.loads(meta[VITKIT_CONFIG])))
        cfg = cfg.replace(arch=cfg.arch or arch or "", **(runtime or {}))
        spec = spec or parsed(path, lambda: PreprocessSpec.from_dict(json.loads(meta[VITKIT_PREPROCESS])))
        # vitkit's names are timm's but a few (BEiT, EVA, SigLIP pooling), and the timm map passes them through
        return Loaded(_build(timm_keymap(cfg).to_native(tensors, cfg), cfg, layout), spec, source, layout)
    if arch is None:
        raise CheckpointError(f"{path.name} carries no model config: pass --arch NAME (one of: "
                              f"{', '.join(sorted(ARCHS))})")
    base = _row_config(arch, runtime)
    layout = detect_layout(tensors)
    if layout == "hf":
        raise CheckpointError(f"{path.name} is in transformers layout: load its folder (with config.json) instead")
    if layout == "jax":
        tensors, keymap = strip_jax_prefix(tensors), JAX_KEYMAP
    elif layout == "openclip":
        keymap = OPENCLIP_KEYMAP
    else:
        keymap = timm_keymap(base)
    native = keymap.to_native(tensors, base)
    cfg = _fit_config(base, native)
    return Loaded(_build(native, cfg, keymap.name), spec or get_arch(arch).preprocess, source, layout)


def _fit_config(cfg: ViTConfig, native: dict[str, torch.Tensor]) -> ViTConfig:
    """An architecture row fitted to what the weights hold: head size (or none), pre-logits layer, output
    projection, distillation head. Everything structural must match the row; the strict load checks that."""
    head = native.get("head.weight")
    pre_logits = native.get("pre_logits.fc.weight")
    proj = native.get("proj.weight")
    num_classes = head.shape[0] if head is not None else 0
    return cfg.replace(
        num_classes=num_classes,
        pre_logits_dim=pre_logits.shape[0] if pre_logits is not None else 0,
        proj_dim=proj.shape[0] if proj is not None else 0,
        dist_head=cfg.dist_token and "head_dist.weight" in native,
        labels=cfg.labels if len(cfg.labels) == num_classes else (),
    )


def _fit_positions(native: dict[str, torch.Tensor], cfg: ViTConfig) -> dict[str, torch.Tensor]:
    """Weights trained at another resolution: resample absolute positions (bicubic, as timm) and BEiT
    relative tables (the configured method) to the config's grid."""
    grid = (cfg.grid, cfg.grid)
    pos = native.get("pos_embed")
    if pos is not None and pos.shape[1] != cfg.pos_prefix_tokens + cfg.grid**2:
        native["pos_embed"] = resample_abs_pos_embed(pos, grid, cfg.pos_prefix_tokens, cfg.pos_embed_antialias)
    for key in [k for k in native if k.endswith("rel_pos.table")]:
        rows = native[key].shape[0]
        old = (int(math.isqrt(rows - 3)) + 1) // 2
        if old != cfg.grid:
            native[key] = resample_rel_pos_table(native[key], (old, old), grid, cfg.rel_pos_resize)
    return native


def _build(native: dict[str, torch.Tensor], cfg: ViTConfig, layout: str) -> VisionTransformer:
    native = _fit_positions(native, cfg)
    native = {k: v if v.dtype == torch.float32 else v.float() for k, v in native.items()}
    with torch.device("meta"):
        net = VisionTransformer(cfg)
    load_strict(net, native, layout)
    return net.eval()


def load_strict(net: VisionTransformer, native: dict[str, torch.Tensor], layout: str) -> None:
    """Load without a second copy of the weights (tensors are assigned, not copied); any missing,
    unexpected or mis-shaped key is an error that names it."""
    expected = net.state_dict()
    missing = sorted(set(expected) - set(native))
    unexpected = sorted(set(native) - set(expected))
    mis_shaped = [f"{k} {tuple(native[k].shape)} != {tuple(expected[k].shape)}"
                  for k in sorted(set(expected) & set(native)) if native[k].shape != expected[k].shape]
    problems = [f"{what}: {short(keys)}" for what, keys in (
        ("missing keys", missing), ("unexpected keys", unexpected),
        ("shape mismatches (checkpoint != model)", mis_shaped)) if keys]
    if problems:
        cfg = net.config
        raise CheckpointError(f"{layout} checkpoint does not fit the model ({cfg.width} wide, {cfg.depth} blocks"
                              f"{_checkpoint_shape(native)}): " + " | ".join(problems))
    net.load_state_dict(native, strict=True, assign=True)


def _checkpoint_shape(native: dict[str, torch.Tensor]) -> str:
    """'; the checkpoint is 192 wide with 12 blocks: is the architecture right?' when it can tell."""
    patch = native.get("patch_embed.proj.weight")
    blocks = {k.split(".")[1] for k in native if k.startswith("blocks.")}
    if patch is None:
        return ""
    return f"; the checkpoint is {patch.shape[0]} wide with {len(blocks)} blocks: is the architecture right?"
