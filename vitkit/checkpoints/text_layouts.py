"""The text towers' foreign layouts, as key-map tables (both directions; the image towers are in layouts.py).

  hf        transformers CLIPModel / CLIPTextModelWithProjection (`text_model.encoder.layers.0.self_attn.q_proj
            .weight`, `text_projection.weight`, `logit_scale` of shape ()), SiglipModel and Siglip2Model
            (`text_model.head.*` with a bias, `logit_scale` and `logit_bias` of shape (1,))
  openclip  OpenCLIP / OpenAI CLIP (`transformer.resblocks.0.attn.in_proj_weight`, `text_projection` as a
            (D, P) matrix, `logit_scale`); CustomTextCLIP models keep the tower under `text.`

Try it:  python -m pytest tests/test_parity_text.py -q
"""

from __future__ import annotations

from vitkit.checkpoints.keymap import KeyMap, Rename, Transform
from vitkit.checkpoints.layouts import EMBEDDING_TABLE, clip_encoder_rules
from vitkit.config import TextConfig

SCALAR = Transform(lambda t, c: t.reshape(()), lambda t, c: t.reshape(1))  # SigLIP's (1,) <-> vitkit's ()
TRANSPOSE = Transform(lambda t, c: t.T, lambda t, c: t.T)  # OpenCLIP's x @ P (D, P) <-> a Linear weight (P, D)


def hf_text_keymap(cfg: TextConfig) -> KeyMap:
    tower = "text_model."
    scalar = SCALAR if cfg.family == "siglip" else Transform()
    # the projection: CLIP's text_projection (no bias) or SigLIP's head (with one)
    proj = Rename("text_projection.weight", "proj.weight") if cfg.family == "clip" else \
        Rename(tower + "head.{p}", "proj.{p}")
    rules = (
        Rename(tower + "embeddings.token_embedding.weight", "token_embed.weight"),
        Rename(tower + "embeddings.position_embedding.weight", "pos_embed", EMBEDDING_TABLE),
        *clip_encoder_rules(tower),
        Rename(tower + "final_layer_norm.{p}", "norm.{p}"),
        proj,
        Rename("logit_scale", "logit_scale", scalar),
        Rename("logit_bias", "logit_bias", scalar),
    )
    ignore = (r"^vision_model\.", r"^visual_projection\.", r"position_ids$")  # the image tower is layouts.py's
    return KeyMap("transformers", rules, ignore=ignore)


def openclip_text_keymap(cfg: TextConfig, prefix: str = "") -> KeyMap:
    """`prefix`: '' for CLIP models (the text tower at the top level), 'text.' for CustomTextCLIP ones."""
    block = prefix + "transformer.resblocks.{i}."
    # the projection: a bare (D, P) matrix, or a Linear when it has a bias
    proj = Rename(prefix + "text_projection.{p}", "proj.{p}") if cfg.proj_bias else \
        Rename(prefix + "text_projection", "proj.weight", TRANSPOSE)
    return KeyMap("openclip", (
        Rename(prefix + "token_embedding.weight", "token_embed.weight"),
        Rename(prefix + "positional_embedding", "pos_embed", EMBEDDING_TABLE),
        Rename(block + "ln_1.{p}", "blocks.{i}.norm1.{p}"),
        Rename(block + "attn.in_proj_weight", "blocks.{i}.attn.qkv.weight"),
        Rename(block + "attn.in_proj_bias", "blocks.{i}.attn.qkv.bias"),
        Rename(block + "attn.out_proj.{p}", "blocks.{i}.attn.proj.{p}"),
        Rename(block + "ln_2.{p}", "blocks.{i}.norm2.{p}"),
        Rename(block + "mlp.c_fc.{p}", "blocks.{i}.mlp.fc1.{p}"),
        Rename(block + "mlp.c_proj.{p}", "blocks.{i}.mlp.fc2.{p}"),
        Rename(prefix + "ln_final.{p}", "norm.{p}"),
        proj,
        Rename("logit_scale", "logit_scale"),
        Rename("logit_bias", "logit_bias", SCALAR),
    ), ignore=(r"^visual\.", r"attn_mask$"))


def detect_text_layout(keys) -> tuple[str, str]:
    """('hf', '') / ('openclip', '' or 'text.') from the names in an image-text checkpoint, or ValueError when
    it holds no text tower."""
    keys = set(keys)
    if "text_model.embeddings.token_embedding.weight" in keys:
        return "hf", ""
    for prefix in ("", "text."):
        if prefix + "token_embedding.weight" in keys:
            return "openclip", prefix
    raise ValueError("no text tower in this checkpoint (an image-only model): zero-shot classification and text "
                     "search need a CLIP or SigLIP checkpoint with its text tower")


def text_keymap(layout: str, prefix: str, cfg: TextConfig) -> KeyMap:
    return hf_text_keymap(cfg) if layout == "hf" else openclip_text_keymap(cfg, prefix)

