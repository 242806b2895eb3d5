"""Image-text config files <-> TextConfig: transformers' `text_config` (CLIP, SigLIP, SigLIP 2) and OpenCLIP's
`text_cfg`. The projection size is read from the weights' shapes, as the image towers' is.

  transformers  clip: causal, pool by eos id (the highest id, `argmax`, in configs from before the eos fix: eos 2),
                      projection without bias, quick-GELU (OpenAI) or GELU (LAION)
                siglip / siglip2: bidirectional, last position, a head with bias, tanh-GELU, a logit bias
  OpenCLIP      text_cfg: width, heads, layers, mlp_ratio, pool_type, no_causal_mask, proj_bias, eos_id,
                act_kwargs / norm_kwargs; `quick_gelu` at the model level

Try it:  python -m pytest tests/test_parity_text.py -q
"""

from __future__ import annotations

from vitkit.checkpoints.hf_towers import ACTIVATIONS
from vitkit.config import TextConfig

IMAGE_TEXT_TYPES = ("clip", "siglip", "siglip2")
# transformers' defaults for the fields a config.json may leave out (checked against its config classes in tests)
HF_TEXT_DEFAULTS = {
    "clip": dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                 eos_token_id=49407),
    "siglip": dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=64, hidden_act="gelu_pytorch_tanh",
                   layer_norm_eps=1e-6),
}
HF_TEXT_DEFAULTS["siglip2"] = HF_TEXT_DEFAULTS["siglip"]


def _proj_dim(shapes: dict[str, tuple], *keys: str) -> int:
    return next((shapes[k][0] for k in keys if k in shapes), 0)


def text_config_from_hf(hf: dict, shapes: dict[str, tuple]) -> TextConfig:
    """TextConfig of a transformers CLIPModel / SiglipModel / Siglip2Model config.json."""
    model_type = hf["model_type"]
    if model_type not in IMAGE_TEXT_TYPES:
        raise ValueError(f"model_type {model_type!r} has no text tower (image-text types: {IMAGE_TEXT_TYPES})")
    text = {**HF_TEXT_DEFAULTS[model_type], **{k: v for k, v in (hf.get("text_config") or {}).items()
                                               if v is not None}}
    act = ACTIVATIONS.get(text["hidden_act"])
    if act not in ("gelu", "gelu_tanh", "quick_gelu"):
        raise ValueError(f"unsupported text hidden_act {text['hidden_act']!r}")
    common = dict(vocab_size=text["vocab_size"], context_length=text["max_position_embeddings"],
                  width=text["hidden_size"], depth=text["num_hidden_layers"], heads=text["num_attention_heads"],
                  mlp_dim=text["intermediate_size"], act=act, norm_eps=text["layer_norm_eps"])
    if model_type == "clip":
        eos = text["eos_token_id"]
        return TextConfig(**common, causal=True, pool="argmax" if eos == 2 else "eos", eos_id=eos,
                          proj_dim=_proj_dim(shapes, "text_projection.weight"), family="clip")
    return TextConfig(**common, causal=False, pool="last", eos_id=0, proj_dim=_proj_dim(shapes, "text_model.head.weight"),
                      proj_bias="text_model.head.bias" in shapes, logit_bias=True, family="siglip")


def text_config_to_hf(cfg: TextConfig) -> dict:
    """The `text_config` of the transformers image-text config that holds `cfg` (CLIPModel or SiglipModel)."""
    act = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "quick_gelu": "quick_gelu"}[cfg.act]
    out = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.width, intermediate_size=cfg.mlp_dim,
               num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads, max_position_embeddings=cfg.context_length,
               hidden_act=act, layer_norm_eps=cfg.norm_eps)
    if cfg.family == "clip":
        if not cfg.causal or cfg.pool == "last" or not cfg.proj_dim or cfg.proj_bias or cfg.logit_bias:
            raise ValueError("transformers' CLIPModel holds a causal text tower pooled at its eos token with a "
                             "projection without bias")
        out.update(projection_dim=cfg.proj_dim, eos_token_id=2 if cfg.pool == "argmax" else cfg.eos_id)
    else:
        if cfg.causal or cfg.pool != "last" or not cfg.proj_bias or not cfg.logit_bias:
            raise ValueError("transformers' SiglipModel holds a bidirectional text tower pooled at its last "
                             "position, with a head with bias and a logit bias")
        out.update(projection_size=cfg.proj_dim)
    return out


def text_config_from_openclip(meta: dict, shapes: dict[str, tuple], prefix: str) -> TextConfig:
    """TextConfig of an open_clip_config.json's text tower (`prefix`: where its keys live, '' or 'text.')."""
    model = meta["model_cfg"]
    text = model.get("text_cfg") or {}
    if text.get("hf_model_name"):
        raise ValueError("OpenCLIP text towers built from a transformers model (hf_model_name) are not supported")
    for key in ("embed_cls", "final_ln_after_pool", "qk_norm", "scaled_cosine_attn", "scale_heads",
                "scale_attn_inner", "scale_attn", "scale_fc", "ls_init_value"):
        if text.get(key):
            raise ValueError(f"OpenCLIP text tower with {key} is not supported")
    pool = text.get("pool_type", "argmax")
    if pool not in ("argmax", "eos", "last"):
        raise ValueError(f"OpenCLIP text pooling {pool!r} is not supported")
    approximate = (text.get("act_kwargs") or {}).get("approximate")
    act = "gelu_tanh" if approximate == "tanh" else "quick_gelu" if model.get("quick_gelu") else "gelu"
    width = text.get("width", 512)
    proj = _proj_dim(shapes, prefix + "text_projection.weight")
    if prefix + "text_projection" in shapes:
        proj = shapes[prefix + "text_projection"][1]  # a bare (D, P) matrix
    return TextConfig(
        vocab_size=text.get("vocab_size", 49408), context_length=text.get("context_length", 77), width=width,
        depth=text.get("layers", 12), heads=text.get("heads", 8), mlp_dim=int(width * text.get("mlp_ratio", 4.0)),
        act=act, norm_eps=(text.get("norm_kwargs") or {}).get("eps", 1e-5), causal=not text.get("no_causal_mask"),
        pool=pool, eos_id=text.get("eos_id", 2) if pool == "eos" else 0, proj_dim=proj,
        proj_bias=prefix + "text_projection.bias" in shapes, logit_bias="logit_bias" in shapes,
        family="siglip" if "logit_bias" in shapes else "clip")
