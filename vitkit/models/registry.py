"""Named models: architectures (timm names, for bare weights files) and published checkpoints.

An architecture is a config plus the preprocessing its reference weights were trained with. A named
model adds where its weights live (a hub id), their layout, labels and licence. Rows, not functions.

Try it:  vitkit models
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vitkit.config import BEIT_FIELDS, HALF, IMAGENET_MEAN, IMAGENET_STD, WIDTHS, PreprocessSpec, ViTConfig, variant

TIMM_AUGREG = PreprocessSpec(crop_pct=0.9, interpolation="bicubic", mean=HALF, std=HALF)
TIMM_AUGREG_FULL = replace(TIMM_AUGREG, crop_pct=1.0)  # 384 px fine-tunes: no crop
# DeiT: the authors' eval recipe (resize 256, crop 224), as in transformers' DeiT processors; timm's
# current pretrained_cfg says crop_pct 0.9 — a timm hub folder's own config.json still wins over this row.
TIMM_DEIT = PreprocessSpec(crop_pct=0.875, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD)
HF_VIT = PreprocessSpec(crop_pct=1.0, resize_mode="exact", interpolation="bilinear", mean=HALF, std=HALF)
HF_DEIT = PreprocessSpec(crop_pct=0.875, resize_mode="exact", interpolation="bicubic",
                         mean=IMAGENET_MEAN, std=IMAGENET_STD)
# DINOv2's eval transform (its repo): shorter side 256, centre crop 224 (torchvision's rounding); the hub folders'
# BitImageProcessor config wins over this row, its crop offsets floored as transformers floors them
DINOV2 = PreprocessSpec(input_size=224, crop_pct=224 / 256, interpolation="bicubic", mean=IMAGENET_MEAN,
                        std=IMAGENET_STD)
TIMM_DINOV2 = replace(DINOV2, input_size=518, crop_pct=1.0)  # timm's pretrained_cfg: the native 518 px
SIGLIP = PreprocessSpec(input_size=224, crop_pct=1.0, resize_mode="exact", interpolation="bicubic", mean=HALF, std=HALF)
# OpenAI CLIP: shorter side to 224, centre crop 224, bicubic, its own mean / std
CLIP = PreprocessSpec(input_size=224, crop_pct=1.0, interpolation="bicubic",
                      mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
# DINOv3's processor: both sides to 224 (no crop), bilinear, ImageNet mean / std
DINOV3 = PreprocessSpec(input_size=224, crop_pct=1.0, resize_mode="exact", interpolation="bilinear",
                        mean=IMAGENET_MEAN, std=IMAGENET_STD)
DINOV3_FIELDS = dict(abs_pos_embed=False, rope="dinov3", reg_tokens=4, layer_scale_init=1e-5, qkv_bias="qv",
                     norm_eps=1e-5, num_classes=0, family="dinov3")
# EVA-02 in timm: OpenAI CLIP mean / std, crop 0.9 at 224 (1.0 for the 336 px fine-tunes), bicubic
EVA02 = replace(CLIP, crop_pct=0.9)
EVA02_FIELDS = dict(mlp="swiglu", act="silu", rope="eva", rope_theta=10000.0, rope_ref_grid=16, qkv_bias="qv",
                    pool="mean", fc_norm=True, family="eva02")


def _eva02(name: str, spec: PreprocessSpec = EVA02, **fields) -> Arch:
    """timm's eva02_* rows: SwiGLU of 4 * 2/3 the width; base and larger add the sub-LN (and split layers)."""
    width = WIDTHS[name.split("/")[0]][0]
    return _vit(name, spec, mlp_dim=int(width * 4 * 2 / 3), **EVA02_FIELDS, **fields)


DINOV2_FIELDS = dict(layer_scale_init=1e-5, num_classes=0, family="dinov2")
REG4_FIELDS = dict(DINOV2_FIELDS, reg_tokens=4, class_pos_embed=False)  # timm's layout: no position for class
DEIT3_FIELDS = dict(layer_scale_init=1e-6, class_pos_embed=False, family="deit3")
SIGLIP_FIELDS = dict(class_token=False, pool="map", act="gelu_tanh", num_classes=0, family="siglip")
CLIP_FIELDS = dict(pre_norm=True, patch_bias=False, norm_eps=1e-5, num_classes=0, family="clip")


@dataclass(frozen=True)
class Arch:
    config: ViTConfig
    preprocess: PreprocessSpec


def _vit(name: str, spec: PreprocessSpec = TIMM_AUGREG, **fields) -> Arch:
    cfg = variant(name, **fields)
    return Arch(cfg, spec.at_size(cfg.image_size))


def _deit(name: str, **fields) -> Arch:
    return _vit(name, TIMM_DEIT, family="deit", **fields)


def _beit(name: str, **fields) -> Arch:
    return _vit(name, TIMM_AUGREG, **BEIT_FIELDS, **fields)


ARCHS: dict[str, Arch] = {
    "vit_tiny_patch16_224": _vit("Ti/16"),
    "vit_tiny_patch16_384": _vit("Ti/16@384", TIMM_AUGREG_FULL),
    "vit_small_patch16_224": _vit("S/16"),
    "vit_small_patch32_224": _vit("S/32"),
    "vit_base_patch16_224": _vit("B/16"),
    "vit_base_patch32_224": _vit("B/32"),
    "vit_base_patch16_224_in21k": _vit("B/16", num_classes=21843, pre_logits_dim=768),
    "vit_large_patch16_224": _vit("L/16"),
    "vit_large_patch16_384": _vit("L/16@384", TIMM_AUGREG_FULL),
    "vit_huge_patch14_224": _vit("H/14"),
    "deit_tiny_patch16_224": _deit("Ti/16"),
    "deit_small_patch16_224": _deit("S/16"),
    "deit_base_patch16_224": _deit("B/16"),
    "deit_base_patch16_384": _vit("B/16@384", replace(TIMM_DEIT, crop_pct=1.0), family="deit"),
    "deit_tiny_distilled_patch16_224": _deit("Ti/16", dist_token=True),
    "deit_small_distilled_patch16_224": _deit("S/16", dist_token=True),
    "deit_base_distilled_patch16_224": _deit("B/16", dist_token=True),
    "beit_base_patch16_224": _beit("B/16"),
    "beit_base_patch16_384": _vit("B/16@384", TIMM_AUGREG_FULL, **BEIT_FIELDS),
    "beit_large_patch16_224": _beit("L/16"),
    "deit3_small_patch16_224": _vit("S/16", TIMM_DEIT, **DEIT3_FIELDS),
    "deit3_base_patch16_224": _vit("B/16", TIMM_DEIT, **DEIT3_FIELDS),
    "vit_base_patch16_224_mae": _vit("B/16", TIMM_DEIT, num_classes=0, family="mae"),
    "vit_small_patch14_dinov2": _vit("S/14@518", TIMM_DINOV2, **DINOV2_FIELDS),
    "vit_base_patch14_dinov2": _vit("B/14@518", TIMM_DINOV2, **DINOV2_FIELDS),
    "vit_large_patch14_dinov2": _vit("L/14@518", TIMM_DINOV2, **DINOV2_FIELDS),
    "vit_small_patch14_reg4_dinov2": _vit("S/14@518", TIMM_DINOV2, **REG4_FIELDS),
    "vit_base_patch14_reg4_dinov2": _vit("B/14@518", TIMM_DINOV2, **REG4_FIELDS),
    "vit_large_patch14_reg4_dinov2": _vit("L/14@518", TIMM_DINOV2, **REG4_FIELDS),
    "vit_base_patch16_siglip_224": _vit("B/16", SIGLIP, **SIGLIP_FIELDS),
    "eva02_tiny_patch14_224": _eva02("Ti/14", num_classes=0),
    "eva02_small_patch14_224": _eva02("S/14", num_classes=0),
    "eva02_base_patch14_224": _eva02("B/14", num_classes=0, mlp_norm=True),
    "eva02_tiny_patch14_336": _eva02("Ti/14@336", replace(EVA02, crop_pct=1.0)),
    "eva02_small_patch14_336": _eva02("S/14@336", replace(EVA02, crop_pct=1.0)),
    # DINOv3 as transformers holds it (timm's eva-based layout is not mapped yet)
    "vit_small_patch16_dinov3": _vit("S/16", DINOV3, **DINOV3_FIELDS),
    "vit_base_patch16_dinov3": _vit("B/16", DINOV3, **DINOV3_FIELDS),
    # CLIP image towers as transformers holds them (projection into the image-text space, no classifier)
    # (timm's names: `_quickgelu_` for OpenAI's weights, plain GELU for OpenCLIP's LAION / DataComp towers)
    "vit_base_patch32_clip_quickgelu_224": _vit("B/32", CLIP, **CLIP_FIELDS, act="quick_gelu", proj_dim=512),
    "vit_base_patch16_clip_quickgelu_224": _vit("B/16", CLIP, **CLIP_FIELDS, act="quick_gelu", proj_dim=512),
    "vit_base_patch32_clip_224": _vit("B/32", CLIP, **CLIP_FIELDS, proj_dim=512),
    "vit_base_patch16_clip_224": _vit("B/16", CLIP, **CLIP_FIELDS, proj_dim=512),
    # vitkit's own demo model (examples/train_digits.py): 8x8 digits upscaled to 32 px, one token per source pixel
    "vitkit_digits_patch4_32": Arch(
        ViTConfig(image_size=32, patch_size=4, width=64, depth=6, heads=4, mlp_dim=128, num_classes=10,
                  labels=tuple("0123456789")),
        PreprocessSpec(input_size=32, crop_pct=1.0, resize_mode="exact", interpolation="bilinear", mean=HALF,
                       std=HALF)),
}


@dataclass(frozen=True)
class Published:
    """A checkpoint's published ImageNet-1k validation accuracy and the eval transform it was measured with
    (the geometry and interpolation of `protocol`; its mean/std are the checkpoint's own)."""

    top1: float  # percent
    top5: float | None
    source: str
    protocol: PreprocessSpec


TIMM_RESULTS = "timm results-imagenet.csv"


def _timm_result(tag: str, top1: float, top5: float, crop_pct: float = 0.9, size: int = 224) -> Published:
    return Published(top1, top5, f"{TIMM_RESULTS} ({tag}, the same weights in timm)",
                     PreprocessSpec(input_size=size, crop_pct=crop_pct, interpolation="bicubic"))


def _zero_shot(top1: float, source: str, spec: PreprocessSpec) -> Published:
    """A published zero-shot ImageNet-1k top-1 (CLIP's curated class names and 80-prompt ensemble, which
    `vitkit zero-shot eval` uses too; SigLIP's authors used their own prompt set)."""
    return Published(top1, None, source + " (not verifiable offline)", spec)


@dataclass(frozen=True)
class NamedModel:
    hub_id: str
    layout: str  # "hf" or "timm": the files on the hub
    arch: str  # the architecture row it matches (used for preprocessing when the files carry none)
    labels: str  # "imagenet-1k", "imagenet-21k" or "none"
    licence: str
    note: str = ""
    preprocess: PreprocessSpec | None = None  # overrides the arch's when the publisher's processor differs
    published: Published | None = None  # ImageNet-1k val accuracy, where the checkpoint classifies ImageNet-1k
    zero_shot: Published | None = None  # image-text models: zero-shot ImageNet-1k val accuracy (class names + prompts)


MODELS: dict[str, NamedModel] = {m.hub_id: m for m in (
    NamedModel("google/vit-base-patch16-224-in21k", "hf", "vit_base_patch16_224_in21k", "none", "apache-2.0",
               "ImageNet-21k backbone: trained pre-logits pooler, no classifier (the published head is zeroed)",
               HF_VIT),
    NamedModel("google/vit-base-patch16-224", "hf", "vit_base_patch16_224", "imagenet-1k", "apache-2.0",
               "ImageNet-21k pre-trained, ImageNet-1k fine-tuned; its pooler is untrained", HF_VIT,
               _timm_result("vit_base_patch16_224.orig_in21k_ft_in1k", 81.782, 96.122)),
    NamedModel("google/vit-large-patch16-384", "hf", "vit_large_patch16_384", "imagenet-1k", "apache-2.0",
               "published as a pickle .bin only (loaded with weights_only=True)", HF_VIT.at_size(384),
               Published(85.30, None, "ViT paper (arXiv 2010.11929) Table 2, ViT-L/16 pre-trained on ImageNet-21k",
                         PreprocessSpec(input_size=384, crop_pct=1.0, resize_mode="exact", interpolation="bilinear"))),
    NamedModel("timm/vit_small_patch16_224.augreg_in21k_ft_in1k", "timm", "vit_small_patch16_224", "imagenet-1k",
               "apache-2.0", "AugReg: ImageNet-21k pre-trained, ImageNet-1k fine-tuned", None,
               _timm_result("vit_small_patch16_224.augreg_in21k_ft_in1k", 81.402, 96.150)),
    NamedModel("microsoft/beit-base-patch16-224", "hf", "beit_base_patch16_224", "imagenet-1k", "apache-2.0",
               "BEiT: self-supervised on ImageNet-21k, fine-tuned on 21k then 1k", HF_VIT,
               _timm_result("beit_base_patch16_224.in22k_ft_in22k_in1k", 85.238, 97.654)),
    NamedModel("facebook/deit-tiny-patch16-224", "hf", "deit_tiny_patch16_224", "imagenet-1k", "apache-2.0",
               "", HF_DEIT, _timm_result("deit_tiny_patch16_224.fb_in1k", 72.190, 91.100)),
    NamedModel("facebook/deit-small-patch16-224", "hf", "deit_small_patch16_224", "imagenet-1k", "apache-2.0",
               "", HF_DEIT, _timm_result("deit_small_patch16_224.fb_in1k", 79.856, 95.056)),
    NamedModel("facebook/deit-base-patch16-224", "hf", "deit_base_patch16_224", "imagenet-1k", "apache-2.0",
               "", HF_DEIT, _timm_result("deit_base_patch16_224.fb_in1k", 81.980, 95.740)),
    NamedModel("facebook/deit-base-distilled-patch16-224", "hf", "deit_base_distilled_patch16_224",
               "imagenet-1k", "apache-2.0", "distilled: class and distillation heads averaged", HF_DEIT,
               _timm_result("deit_base_distilled_patch16_224.fb_in1k", 83.384, 96.492)),
    NamedModel("timm/deit3_base_patch16_224.fb_in1k", "timm", "deit3_base_patch16_224", "imagenet-1k",
               "apache-2.0", "DeiT-III: layer scale, positions for the patches only (published top-1 not "
               "recorded: not verifiable offline)"),
    NamedModel("timm/vit_base_patch16_224.mae", "timm", "vit_base_patch16_224_mae", "none", "cc-by-nc-4.0",
               "MAE self-supervised backbone (non-commercial licence); fine-tune or probe it"),
    *(NamedModel(f"facebook/dinov2-{size}", "hf", f"vit_{size}_patch14_dinov2", "none", "apache-2.0",
                 "DINOv2 backbone: image-to-image retrieval (class token after the norm)", DINOV2)
      for size in ("small", "base", "large")),
    *(NamedModel(f"facebook/dinov2-with-registers-{size}", "hf", f"vit_{size}_patch14_reg4_dinov2", "none",
                 "apache-2.0", "DINOv2 with 4 registers (never pooled): cleaner attention maps", DINOV2)
      for size in ("small", "base", "large")),
    NamedModel("timm/vit_small_patch14_dinov2.lvd142m", "timm", "vit_small_patch14_dinov2", "none", "apache-2.0",
               "DINOv2 ViT-S/14 in timm's layout (native 518 px)"),
    NamedModel("facebook/dinov3-vits16-pretrain-lvd1689m", "hf", "vit_small_patch16_dinov3", "none", "dinov3-license",
               "DINOv3 ViT-S/16: 2-D RoPE, 4 registers; gated on the hub, Meta's DINOv3 License (not OSI: read it "
               "before commercial use)", DINOV3),
    NamedModel("facebook/dinov3-vitb16-pretrain-lvd1689m", "hf", "vit_base_patch16_dinov3", "none", "dinov3-license",
               "DINOv3 ViT-B/16 (same licence)", DINOV3),
    *(NamedModel(f"timm/eva02_{size}_patch14_224.mim_in22k", "timm", f"eva02_{size}_patch14_224", "none", "mit",
                 "EVA-02 masked-image-modelling backbone (ImageNet-22k): 2-D RoPE, SwiGLU")
      for size in ("tiny", "small", "base")),
    *(NamedModel(f"timm/eva02_{size}_patch14_336.mim_in22k_ft_in1k", "timm", f"eva02_{size}_patch14_336",
                 "imagenet-1k", "mit", "EVA-02 fine-tuned on ImageNet-1k at 336 px (published top-1 not recorded: "
                 "not verifiable offline)") for size in ("tiny", "small")),
    NamedModel("google/siglip-base-patch16-224", "hf", "vit_base_patch16_siglip_224", "none", "apache-2.0",
               "SigLIP: attention-pooled image embedding; text tower for zero-shot and text search", SIGLIP,
               zero_shot=_zero_shot(76.2, "SigLIP paper (arXiv 2303.15343), B/16 at 224 px", SIGLIP)),
    NamedModel("google/siglip2-base-patch16-224", "hf", "vit_base_patch16_siglip_224", "none", "apache-2.0",
               "SigLIP 2, fixed resolution; Gemma tokenizer", SIGLIP,
               zero_shot=_zero_shot(78.2, "SigLIP 2 paper (arXiv 2502.14786) Table 1, B/16 at 224 px", SIGLIP)),
    NamedModel("openai/clip-vit-base-patch32", "hf", "vit_base_patch32_clip_quickgelu_224", "none", "mit",
               "CLIP: projected image embedding; text tower for zero-shot and text search", CLIP,
               zero_shot=_zero_shot(63.2, "CLIP model card / paper (arXiv 2103.00020), ViT-B/32", CLIP)),
    NamedModel("openai/clip-vit-base-patch16", "hf", "vit_base_patch16_clip_quickgelu_224", "none", "mit",
               "CLIP: projected image embedding; text tower for zero-shot and text search", CLIP,
               zero_shot=_zero_shot(68.6, "CLIP model card / paper (arXiv 2103.00020), ViT-B/16", CLIP)),
    NamedModel("laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "hf", "vit_base_patch32_clip_224", "none", "mit",
               "OpenCLIP LAION-2B ViT-B/32 (GELU), transformers' files", CLIP,
               zero_shot=_zero_shot(66.6, "the model card (LAION, OpenCLIP)", CLIP)),
)}


def published_for(model: str | None, arch: str | None) -> tuple[str, Published, bool] | None:
    """(registry name, its published figure, whether these are that checkpoint's weights) for a --model /
    --arch pair: the named model itself, or the one published checkpoint of a bare file's architecture."""
    if model in MODELS and MODELS[model].published:
        return model, MODELS[model].published, True
    if arch:
        rows = [name for name, m in MODELS.items() if m.arch == arch and m.published]
        if len(rows) == 1:
            return rows[0], MODELS[rows[0]].published, False
    return None


def arch(name: str) -> Arch:
    if name not in ARCHS:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHS))}")
    return ARCHS[name]


def preprocess_for(model: NamedModel) -> PreprocessSpec:
    return model.preprocess or ARCHS[model.arch].preprocess
