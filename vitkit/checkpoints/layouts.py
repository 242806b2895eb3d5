"""The foreign checkpoint layouts vitkit reads and writes, as key-map tables.

  hf    transformers ViT / DeiT / BEiT / ViTMAE, in the layout published on the hub and written by
        save_pretrained (`vit.encoder.layer.0.attention.attention.query.weight`, ...); DINOv2 (with registers)
        (`encoder.layer.0.norm1.weight`, `layer_scale1.lambda1`); CLIP and SigLIP vision towers
        (`vision_model.encoder.layers.0.self_attn.q_proj.weight`, ...), alone or inside the image-text model
  timm  timm vision_transformer / deit / beit (vitkit's own layout is timm's ViT layout; BEiT renames a few)
  openclip  OpenCLIP / OpenAI CLIP image towers (`visual.transformer.resblocks.0.attn.in_proj_weight`, ...), with
        the text tower left out
  jax   Google's vision_transformer .npz (`Transformer/encoderblock_0/MultiHeadDotProductAttention_1/...`),
        also used by the AugReg release

Try it:  python -m pytest tests/test_parity_hf.py -q
"""

from __future__ import annotations

import torch

from vitkit.checkpoints.keymap import Fuse, KeyMap, Rename, Transform
from vitkit.config import ViTConfig

DERIVED_BUFFERS = (r"relative_position_index$",)  # recomputed from the grid, never learned


HF_PATCH_KEYS = ("embeddings.patch_embeddings.projection.weight",  # ViT, DeiT, BEiT, ViTMAE, DINOv2
                 "embeddings.patch_embeddings.weight",  # DINOv3
                 "embeddings.patch_embedding.weight")  # CLIP, SigLIP (under vision_model. in most files)


def detect_layout(keys) -> str:
    """'hf', 'jax' or 'timm' from the names in a checkpoint."""
    keys = list(keys)
    if any(k.endswith(HF_PATCH_KEYS) for k in keys):
        return "hf"
    if any(k.endswith("embedding/kernel") for k in keys):
        return "jax"
    if "visual.conv1.weight" in keys:
        return "openclip"
    if "patch_embed.proj.weight" in keys:
        return "timm"
    raise ValueError(f"unrecognised checkpoint layout (first keys: {keys[:6]}); vitkit reads transformers "
                     "(ViT/DeiT/BEiT/MAE/DINOv2/DINOv3/CLIP/SigLIP), timm (vision_transformer/eva/deit/beit), "
                     "OpenCLIP and JAX vision_transformer .npz files")


# -- transformers ------------------------------------------------------------------------------------

def hf_prefix(keys) -> str:
    """'vit.' / 'deit.' / 'beit.' / 'dinov2.' for *ForImageClassification checkpoints, '' for bare *Model ones;
    CLIP and SigLIP: 'vision_model.' (the hub's files, image-text models) or '' (a vision tower saved by recent
    transformers)."""
    patch = next(k for k in keys if k.endswith(HF_PATCH_KEYS))
    return patch.removesuffix(next(s for s in HF_PATCH_KEYS if patch.endswith(s)))


def hf_keymap(cfg: ViTConfig, prefix: str) -> KeyMap:
    """The transformers table of `cfg`'s family."""
    if cfg.family == "dinov2":
        return _hf_dinov2_keymap(prefix)
    if cfg.family == "dinov3":
        return _hf_dinov3_keymap(cfg, prefix)
    if cfg.family in ("clip", "siglip"):
        return _hf_clip_keymap(cfg, prefix)
    return _hf_vit_keymap(cfg, prefix)


def _hf_vit_keymap(cfg: ViTConfig, prefix: str) -> KeyMap:
    layer = prefix + "encoder.layer.{i}."
    attn = layer + "attention.attention."
    rules = [
        Rename(prefix + "embeddings.cls_token", "cls_token"),
        Rename(prefix + "embeddings.distillation_token", "dist_token"),
        Rename(prefix + "embeddings.position_embeddings", "pos_embed"),
        Rename(prefix + "embeddings.patch_embeddings.projection.{p}", "patch_embed.proj.{p}"),
        Rename(layer + "layernorm_before.{p}", "blocks.{i}.norm1.{p}"),
        Rename(layer + "layernorm_after.{p}", "blocks.{i}.norm2.{p}"),
        Rename(layer + "attention.output.dense.{p}", "blocks.{i}.attn.proj.{p}"),
        Rename(layer + "intermediate.dense.{p}", "blocks.{i}.mlp.fc1.{p}"),
        Rename(layer + "output.dense.{p}", "blocks.{i}.mlp.fc2.{p}"),
        Rename(layer + "lambda_1", "blocks.{i}.ls1.gamma"),
        Rename(layer + "lambda_2", "blocks.{i}.ls2.gamma"),
        Rename(attn + "relative_position_bias.relative_position_bias_table", "blocks.{i}.rel_pos.table"),
        Rename(prefix + "encoder.relative_position_bias.relative_position_bias_table", "rel_pos.table"),
        Rename(prefix + "pooler.layernorm.{p}", "fc_norm.{p}"),
        Rename(prefix + "layernorm.{p}", "norm.{p}"),
        Rename(prefix + "pooler.dense.{p}", "pre_logits.fc.{p}"),
    ]
    if cfg.qkv_bias == "qv":  # BEiT: key has no bias
        rules += [
            Fuse((attn + "query.weight", attn + "key.weight", attn + "value.weight"), "blocks.{i}.attn.qkv.weight"),
            Rename(attn + "query.bias", "blocks.{i}.attn.q_bias"),
            Rename(attn + "value.bias", "blocks.{i}.attn.v_bias"),
            Rename(attn + "q_bias", "blocks.{i}.attn.q_bias"),  # older BEiT conversions
            Rename(attn + "v_bias", "blocks.{i}.attn.v_bias"),
        ]
    else:
        rules.append(Fuse((attn + "query.{p}", attn + "key.{p}", attn + "value.{p}"), "blocks.{i}.attn.qkv.{p}"))
    if cfg.dist_token and cfg.dist_head:
        rules += [Rename("cls_classifier.{p}", "head.{p}"), Rename("distillation_classifier.{p}", "head_dist.{p}")]
    else:
        rules.append(Rename("classifier.{p}", "head.{p}"))
    return KeyMap("transformers", tuple(rules), ignore=DERIVED_BUFFERS + (r"embeddings\.mask_token$", r"^decoder\."))


def _hf_dinov2_keymap(prefix: str) -> KeyMap:
    layer = prefix + "encoder.layer.{i}."
    attn = layer + "attention.attention."
    return KeyMap("transformers", (
        Rename(prefix + "embeddings.cls_token", "cls_token"),
        Rename(prefix + "embeddings.register_tokens", "reg_token"),
        Rename(prefix + "embeddings.position_embeddings", "pos_embed"),
        Rename(prefix + "embeddings.patch_embeddings.projection.{p}", "patch_embed.proj.{p}"),
        Rename(layer + "norm1.{p}", "blocks.{i}.norm1.{p}"),
        Rename(layer + "norm2.{p}", "blocks.{i}.norm2.{p}"),
        Fuse((attn + "query.{p}", attn + "key.{p}", attn + "value.{p}"), "blocks.{i}.attn.qkv.{p}"),
        Rename(layer + "attention.output.dense.{p}", "blocks.{i}.attn.proj.{p}"),
        Rename(layer + "layer_scale1.lambda1", "blocks.{i}.ls1.gamma"),
        Rename(layer + "layer_scale2.lambda1", "blocks.{i}.ls2.gamma"),
        Rename(layer + "mlp.fc1.{p}", "blocks.{i}.mlp.fc1.{p}"),
        Rename(layer + "mlp.fc2.{p}", "blocks.{i}.mlp.fc2.{p}"),
        Rename(prefix + "layernorm.{p}", "norm.{p}"),
        Rename("classifier.{p}", "head.{p}"),  # *ForImageClassification: on class token + patch mean
    ), ignore=(r"embeddings\.mask_token$",))


def _hf_dinov3_keymap(cfg: ViTConfig, prefix: str) -> KeyMap:
    """DINOv3ViTModel: blocks under `layer.{i}.` as save_pretrained writes them (and under `model.layer.{i}.`,
    the module path, which some conversions keep)."""
    rules = [
        Rename(prefix + "embeddings.cls_token", "cls_token"),
        Rename(prefix + "embeddings.register_tokens", "reg_token"),
        Rename(prefix + "embeddings.patch_embeddings.{p}", "patch_embed.proj.{p}"),
        Rename(prefix + "norm.{p}", "norm.{p}"),
    ]
    for layer in (prefix + "layer.{i}.", prefix + "model.layer.{i}."):  # the first is the one written
        attn = layer + "attention."
        rules += [
            Rename(layer + "norm1.{p}", "blocks.{i}.norm1.{p}"),
            Rename(layer + "norm2.{p}", "blocks.{i}.norm2.{p}"),
            Fuse((attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"),
                 "blocks.{i}.attn.qkv.weight"),
            Rename(attn + "o_proj.{p}", "blocks.{i}.attn.proj.{p}"),
            Rename(layer + "layer_scale1.lambda1", "blocks.{i}.ls1.gamma"),
            Rename(layer + "layer_scale2.lambda1", "blocks.{i}.ls2.gamma"),
            Rename(layer + "mlp.down_proj.{p}", "blocks.{i}.mlp.fc2.{p}"),
        ]
        if cfg.mlp == "swiglu":  # gate and up projections: the two halves of vitkit's fc1
            rules.append(Fuse((layer + "mlp.gate_proj.{p}", layer + "mlp.up_proj.{p}"), "blocks.{i}.mlp.fc1.{p}"))
        else:
            rules.append(Rename(layer + "mlp.up_proj.{p}", "blocks.{i}.mlp.fc1.{p}"))
        if cfg.qkv_bias == "qkv":
            rules.append(Fuse((attn + "q_proj.bias", attn + "k_proj.bias", attn + "v_proj.bias"),
                              "blocks.{i}.attn.qkv.bias"))
        elif cfg.qkv_bias == "qv":
            rules += [Rename(attn + "q_proj.bias", "blocks.{i}.attn.q_bias"),
                      Rename(attn + "v_proj.bias", "blocks.{i}.attn.v_bias")]
    empty = () if cfg.reg_tokens else (r"embeddings\.register_tokens$",)  # (1, 0, D) without registers
    return KeyMap("transformers", tuple(rules), ignore=(r"embeddings\.mask_token$", r"inv_freq$") + empty)


def _unflatten_token(t: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    return t.reshape(1, 1, -1)  # CLIP's class_embedding (D,) -> (1, 1, D)


def _batch_axis(t: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    return t.unsqueeze(0)  # nn.Embedding table (N, D) -> (1, N, D)


TOKEN = Transform(_unflatten_token, lambda t, c: t.reshape(-1))
EMBEDDING_TABLE = Transform(_batch_axis, lambda t, c: t.squeeze(0))


def clip_encoder_rules(tower: str) -> tuple[Rename | Fuse, ...]:
    """transformers' CLIPEncoderLayer (CLIP's and SigLIP's image and text towers alike) -> vitkit's Block."""
    layer = tower + "encoder.layers.{i}."
    attn = layer + "self_attn."
    return (
        Rename(layer + "layer_norm1.{p}", "blocks.{i}.norm1.{p}"),
        Rename(layer + "layer_norm2.{p}", "blocks.{i}.norm2.{p}"),
        Fuse((attn + "q_proj.{p}", attn + "k_proj.{p}", attn + "v_proj.{p}"), "blocks.{i}.attn.qkv.{p}"),
        Rename(attn + "out_proj.{p}", "blocks.{i}.attn.proj.{p}"),
        Rename(layer + "mlp.fc1.{p}", "blocks.{i}.mlp.fc1.{p}"),
        Rename(layer + "mlp.fc2.{p}", "blocks.{i}.mlp.fc2.{p}"),
    )


def _hf_clip_keymap(cfg: ViTConfig, tower: str) -> KeyMap:
    """CLIP and SigLIP vision towers (CLIPVisionModel(WithProjection), SiglipVisionModel), and the vision half of
    CLIPModel / SiglipModel checkpoints (their text tower is left out). `tower`: the vision keys' prefix; the
    projection is always at the top level."""
    head = tower + "head."
    rules = [
        Rename(tower + "embeddings.class_embedding", "cls_token", TOKEN),
        Rename(tower + "embeddings.position_embedding.weight", "pos_embed", EMBEDDING_TABLE),
        Rename(tower + "embeddings.patch_embedding.{p}", "patch_embed.proj.{p}"),
        Rename(tower + "pre_layrnorm.{p}", "norm_pre.{p}"),
        *clip_encoder_rules(tower),
        Rename(tower + "post_layernorm.{p}", "norm.{p}"),
        Rename("visual_projection.weight", "proj.weight"),
        Rename(head + "probe", "attn_pool.latent"),
        Rename(head + "attention.in_proj_weight", "attn_pool.qkv.weight"),
        Rename(head + "attention.in_proj_bias", "attn_pool.qkv.bias"),
        Rename(head + "attention.out_proj.{p}", "attn_pool.proj.{p}"),
        Rename(head + "layernorm.{p}", "attn_pool.norm.{p}"),
        Rename(head + "mlp.fc1.{p}", "attn_pool.mlp.fc1.{p}"),
        Rename(head + "mlp.fc2.{p}", "attn_pool.mlp.fc2.{p}"),
    ]
    # the image-text models' other half, and derived index buffers
    ignore = (r"^text_model\.", r"^text_projection\.", r"^logit_(scale|bias)$", r"position_ids$")
    return KeyMap("transformers", tuple(rules), ignore=ignore)


# -- timm --------------------------------------------------------------------------------------------

TIMM_BEIT_RULES = (
    Rename("blocks.{i}.gamma_1", "blocks.{i}.ls1.gamma"),
    Rename("blocks.{i}.gamma_2", "blocks.{i}.ls2.gamma"),
    Rename("blocks.{i}.attn.relative_position_bias_table", "blocks.{i}.rel_pos.table"),
    Rename("rel_pos_bias.relative_position_bias_table", "rel_pos.table"),
)


TIMM_MAP_RULES = (  # SigLIP's attention pooling: timm keeps q (for the latent) and kv (for the tokens) apart
    Fuse(("attn_pool.q.{p}", "attn_pool.kv.{p}"), "attn_pool.qkv.{p}", ratios=(1, 2)),
)


# EVA-02 base and larger (timm's eva.py with qkv_fused=False, scale_mlp=True): separate q/k/v projections (no k
# bias) and a SwiGLU with separate gate / value layers and a sub-LN; tiny and small use vitkit's packed names
TIMM_EVA_SPLIT_RULES = (
    Fuse(("blocks.{i}.attn.q_proj.weight", "blocks.{i}.attn.k_proj.weight", "blocks.{i}.attn.v_proj.weight"),
         "blocks.{i}.attn.qkv.weight"),
    Rename("blocks.{i}.attn.q_proj.bias", "blocks.{i}.attn.q_bias"),
    Rename("blocks.{i}.attn.v_proj.bias", "blocks.{i}.attn.v_bias"),
    Fuse(("blocks.{i}.mlp.fc1_g.{p}", "blocks.{i}.mlp.fc1_x.{p}"), "blocks.{i}.mlp.fc1.{p}"),
)
TIMM_EVA_RULES = (Rename("blocks.{i}.gamma_1", "blocks.{i}.ls1.gamma"), Rename("blocks.{i}.gamma_2", "blocks.{i}.ls2.gamma"))


def timm_keymap(cfg: ViTConfig) -> KeyMap:
    rules = TIMM_BEIT_RULES if cfg.family == "beit" else ()
    if cfg.family in ("eva02", "dinov3"):  # both live in timm's eva.py
        rules += TIMM_EVA_RULES + (TIMM_EVA_SPLIT_RULES if cfg.mlp_norm else ())
    if cfg.pool == "map":
        rules += TIMM_MAP_RULES
    return KeyMap("timm", rules, ignore=DERIVED_BUFFERS, passthrough=True)


# -- OpenCLIP ----------------------------------------------------------------------------------------------

OC_BLOCK = "visual.transformer.resblocks.{i}."
OPENCLIP_KEYMAP = KeyMap("openclip", (
    Rename("visual.conv1.weight", "patch_embed.proj.weight"),
    Rename("visual.class_embedding", "cls_token", TOKEN),
    Rename("visual.positional_embedding", "pos_embed", EMBEDDING_TABLE),
    Rename("visual.ln_pre.{p}", "norm_pre.{p}"),
    Rename(OC_BLOCK + "ln_1.{p}", "blocks.{i}.norm1.{p}"),
    Rename(OC_BLOCK + "attn.in_proj_weight", "blocks.{i}.attn.qkv.weight"),
    Rename(OC_BLOCK + "attn.in_proj_bias", "blocks.{i}.attn.qkv.bias"),
    Rename(OC_BLOCK + "attn.out_proj.{p}", "blocks.{i}.attn.proj.{p}"),
    Rename(OC_BLOCK + "ls_1.gamma", "blocks.{i}.ls1.gamma"),
    Rename(OC_BLOCK + "ln_2.{p}", "blocks.{i}.norm2.{p}"),
    Rename(OC_BLOCK + "mlp.c_fc.{p}", "blocks.{i}.mlp.fc1.{p}"),
    Rename(OC_BLOCK + "mlp.c_proj.{p}", "blocks.{i}.mlp.fc2.{p}"),
    Rename(OC_BLOCK + "ls_2.gamma", "blocks.{i}.ls2.gamma"),
    Rename("visual.ln_post.{p}", "norm.{p}"),
    Rename("visual.proj", "proj.weight", Transform(lambda t, c: t.T, lambda t, c: t.T)),  # (D, P) <-> (P, D)
), ignore=(r"^(transformer|token_embedding|positional_embedding|ln_final|text_projection|logit_scale|logit_bias|"
           r"attn_mask)\b",))


# -- JAX (google-research/vision_transformer) ----------------------------------------------------------

def _t(t: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    return t.T


def _heads_in(t: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    return t.flatten(1).T  # (D, heads, hd) -> (heads*hd, D); shapes come from the file, the strict load checks them


def _heads_in_back(t: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    return t.T.reshape(cfg.width, cfg.heads, cfg.head_dim)  # (heads*hd, D) -> (D, heads, hd)


def _heads_out_back(t: torch.Tensor, cfg: ViTConfig) -> torch.Tensor:
    return t.T.reshape(cfg.heads, cfg.head_dim, cfg.width)  # (D, heads*hd) -> (heads, hd, D)


TRANSPOSE = Transform(_t, _t)
CONV = Transform(lambda t, c: t.permute(3, 2, 0, 1), lambda t, c: t.permute(2, 3, 1, 0))  # (kh, kw, in, out)
HEADS_IN = Transform(_heads_in, _heads_in_back)
HEAD_BIAS = Transform(lambda t, c: t.reshape(-1), lambda t, c: t.reshape(c.heads, c.head_dim))
HEADS_OUT = Transform(lambda t, c: t.flatten(0, 1).T, _heads_out_back)  # (heads, hd, D) -> (D, heads*hd)


def _norm(foreign: str, native: str) -> tuple[Rename, Rename]:
    return Rename(foreign + "/scale", native + ".weight"), Rename(foreign + "/bias", native + ".bias")


def _dense(foreign: str, native: str, transform: Transform = TRANSPOSE) -> tuple[Rename, Rename]:
    return Rename(foreign + "/kernel", native + ".weight", transform), Rename(foreign + "/bias", native + ".bias")


JAX_BLOCK = "Transformer/encoderblock_{i}/"
JAX_MHA = JAX_BLOCK + "MultiHeadDotProductAttention_1/"
JAX_KEYMAP = KeyMap(
    "jax",
    (
        Rename("cls", "cls_token"),
        Rename("Transformer/posembed_input/pos_embedding", "pos_embed"),
        *_dense("embedding", "patch_embed.proj", CONV),
        *_norm(JAX_BLOCK + "LayerNorm_0", "blocks.{i}.norm1"),
        *_norm(JAX_BLOCK + "LayerNorm_2", "blocks.{i}.norm2"),
        Fuse((JAX_MHA + "query/kernel", JAX_MHA + "key/kernel", JAX_MHA + "value/kernel"),
             "blocks.{i}.attn.qkv.weight", HEADS_IN),
        Fuse((JAX_MHA + "query/bias", JAX_MHA + "key/bias", JAX_MHA + "value/bias"),
             "blocks.{i}.attn.qkv.bias", HEAD_BIAS),
        *_dense(JAX_MHA + "out", "blocks.{i}.attn.proj", HEADS_OUT),
        *_dense(JAX_BLOCK + "MlpBlock_3/Dense_0", "blocks.{i}.mlp.fc1"),
        *_dense(JAX_BLOCK + "MlpBlock_3/Dense_1", "blocks.{i}.mlp.fc2"),
        *_norm("Transformer/encoder_norm", "norm"),
        *_dense("pre_logits", "pre_logits.fc"),
        *_dense("head", "head"),
    ),
)
JAX_PREFIXES = ("opt/target/", "params/")  # checkpoints saved with optimizer state or as flax params


def strip_jax_prefix(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in JAX_PREFIXES:
        if any(k.startswith(prefix + "embedding/") for k in tensors):
            return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    return tensors
