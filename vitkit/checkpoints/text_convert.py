"""The text tower of an image-text checkpoint -> a ready TextTransformer and its tokenizer: the same sources as
the image tower (a registry name, a hub id, a transformers or OpenCLIP folder), read the same way (strict load,
every key claimed, pickles only with weights_only=True).

Try it:  python -m pytest tests/test_parity_text.py -q
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from vitkit.checkpoints import hub
from vitkit.checkpoints.convert import json_object, load_strict, parsed, weights_in
from vitkit.checkpoints.io import CheckpointError, read_tensors
from vitkit.checkpoints.text_config import text_config_from_hf, text_config_from_openclip
from vitkit.checkpoints.text_layouts import detect_text_layout, text_keymap
from vitkit.config import TextConfig
from vitkit.models.registry import MODELS
from vitkit.models.text import TextTransformer


@dataclass
class LoadedText:
    net: TextTransformer
    folder: Path  # where the tokenizer files are
    tokenizer_kind: str  # "clip", "siglip" (SentencePiece) or "siglip2" (Gemma)
    source: str
    layout: str


def text_folder(model: str) -> tuple[Path, str]:
    """(local folder, source name) of an image-text checkpoint given as a registry name, folder or hub id."""
    if model in MODELS:
        return hub.fetch(MODELS[model].hub_id), model
    path = Path(model).expanduser()
    if path.is_dir():
        return path, model
    if path.is_file():
        raise CheckpointError(f"{model} is one weights file: a text tower needs its folder (config and tokenizer)")
    if hub.looks_like_hub_id(model):
        return hub.fetch(model), model
    raise CheckpointError(f"cannot find model {model!r}: not a registry name, a local folder or a hub id")


def load_text_tower(model: str) -> LoadedText:
    folder, source = text_folder(model)
    tensors = read_tensors(weights_in(folder))
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    try:
        layout, prefix = detect_text_layout(shapes)
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None
    config_file, openclip_file = folder / "config.json", folder / "open_clip_config.json"
    if layout == "hf":
        meta = parsed(config_file, lambda: json_object(config_file))
        cfg = parsed(config_file, lambda: text_config_from_hf(meta, shapes))
        kind = _tokenizer_kind(folder, cfg, meta.get("model_type", ""))
    else:
        if not openclip_file.is_file():
            raise CheckpointError(f"{folder} holds OpenCLIP weights without open_clip_config.json")
        meta = parsed(openclip_file, lambda: json_object(openclip_file))
        cfg = parsed(openclip_file, lambda: text_config_from_openclip(meta, shapes, prefix))
        kind = _tokenizer_kind(folder, cfg, "")
    native = text_keymap(layout, prefix, cfg).to_native(tensors, cfg)
    return LoadedText(build_text(native, cfg, layout), folder, kind, source, layout)


def build_text(native: dict[str, torch.Tensor], cfg: TextConfig, layout: str) -> TextTransformer:
    native = {k: v if v.dtype == torch.float32 else v.float() for k, v in native.items()}
    with torch.device("meta"):
        net = TextTransformer(cfg)
    load_strict(net, native, f"{layout} text tower")
    return net.eval()


def _tokenizer_kind(folder: Path, cfg: TextConfig, model_type: str) -> str:
    """CLIP's BPE, SigLIP's SentencePiece (spiece.model) or SigLIP 2's Gemma tokenizer (tokenizer.json; the
    fixed-resolution SigLIP 2 checkpoints say model_type 'siglip' but ship Gemma's tokenizer)."""
    if cfg.family == "clip":
        return "clip"
    if model_type == "siglip2":
        return "siglip2"
    settings = folder / "tokenizer_config.json"
    if settings.is_file():
        try:
            name = str(json.loads(settings.read_text(encoding="utf-8")).get("tokenizer_class", ""))
        except (ValueError, UnicodeDecodeError, AttributeError):
            name = ""
        if "Gemma" in name or "Siglip2" in name:
            return "siglip2"
    return "siglip" if (folder / "spiece.model").is_file() or not (folder / "tokenizer.json").is_file() else "siglip2"
