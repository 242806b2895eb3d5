"""Frozen configuration of a ViT-family network, its variants, and the preprocessing it expects.

Every family is one network that differs by fields of `ViTConfig`:
  ViT      class token + learned absolute positions, qkv bias, final norm, class-token pooling
  DeiT     ViT + a distillation token and a second head (`dist_token=True`), averaged at inference
  BEiT     no absolute positions, relative position bias per layer, layer scale, q/v bias without k bias,
           mean pooling of patch tokens followed by `fc_norm`
  DeiT-III ViT + layer scale, positions for the patches only (`class_pos_embed=False`)
  MAE      plain ViT (its fixed sin-cos positions are stored as weights)
  DINOv2   ViT at patch 14 + layer scale, positions learned at 518 px and resampled; `reg_tokens` for the
           "with registers" models (extra tokens after the class token, without positions, never pooled)
  CLIP     ViT + a LayerNorm before the blocks (`pre_norm`), quick-GELU, no patch bias, an output projection
           (`proj_dim`) after the pooled class token
  SigLIP   no class token, tanh-GELU, attention pooling (`pool="map"`: one learned query over the tokens)
  DINOv3   no absolute positions: 2-D rotary embeddings (`rope="dinov3"`), registers, layer scale, no key bias;
           its large models a SwiGLU MLP (`mlp="swiglu"`)
  EVA-02   ViT + 2-D rotary embeddings (`rope="eva"`) beside the positions, SwiGLU (with a sub-LN, `mlp_norm`, in
           base and larger), q/v bias without k bias, mean pooling + fc_norm

Try it:  python -c "from vitkit.config import variant; print(variant('B/16'))"
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal

from vitkit.labels import default_labels
from vitkit.limits import (CONFIG_INTS, INPUT_SIZE, MAX_PARAMETERS, TEXT_INTS, check_float, check_int,
                           check_tokens)

# Variants are data: name -> (width, depth, mlp_dim, heads), as in big_vision's decode_variant.
WIDTHS = {
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "H": (1280, 32, 5120, 16),
}

# fields a caller may set at load time: they change behaviour (other input sizes, training), not weights
RUNTIME_FIELDS = ("pos_embed_antialias", "rel_pos_resize", "drop_path")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 224  # the grid the position parameters were learned on
    patch_size: int = 16
    in_chans: int = 3
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 1000  # 0: backbone without head
    class_token: bool = True
    dist_token: bool = False  # DeiT distilled: extra token after the class token
    dist_head: bool = True  # with dist_token: a second head on it, averaged with the class head
    reg_tokens: int = 0  # DINOv2 with registers: tokens after the class token, without positions
    class_pos_embed: bool = True  # positions cover the class/distillation tokens (False: timm's no_embed_class)
    abs_pos_embed: bool = True  # learned absolute position embedding (ViT, DeiT)
    pos_embed_antialias: bool = True  # bicubic resample at other sizes: antialiased as timm, plain as transformers
    rel_pos_bias: Literal["none", "layer", "shared"] = "none"  # BEiT: per layer, or one shared
    rel_pos_resize: Literal["geometric", "bilinear"] = "geometric"  # BEiT authors' / transformers' resize
    qkv_bias: Literal["qkv", "qv", "none"] = "qkv"  # BEiT: q and v only
    layer_scale_init: float | None = None  # BEiT, DeiT-III, DINOv2: per-channel residual scale
    patch_bias: bool = True  # CLIP: the patch projection has no bias
    pre_norm: bool = False  # CLIP: LayerNorm on the embedded tokens, before the blocks
    act: Literal["gelu", "gelu_tanh", "quick_gelu", "silu"] = "gelu"  # erf GELU, SigLIP's, CLIP's, SwiGLU's gate
    mlp: Literal["plain", "swiglu"] = "plain"  # swiglu: fc2(act(gate) * value), [gate | value] = fc1 x
    mlp_norm: bool = False  # EVA-02: LayerNorm inside the SwiGLU MLP, before fc2 (sub-LN)
    rope: Literal["none", "dinov3", "eva"] = "none"  # rotary positions on the patch tokens' queries and keys
    rope_theta: float = 100.0  # DINOv3 100, EVA-02 10000
    rope_ref_grid: int = 0  # EVA-02: the pre-training grid that patch indices are rescaled to (0: this grid)
    # mean: patch-token average (BEiT); cls_mean: both side by side (DINOv2 classifiers); map: attention (SigLIP)
    pool: Literal["cls", "mean", "cls_mean", "map"] = "cls"
    fc_norm: bool = False  # norm after pooling instead of before (BEiT mean pooling)
    pre_logits_dim: int = 0  # dense + tanh "pooler"/representation layer (JAX in21k, HF ViTModel)
    proj_dim: int = 0  # CLIP: linear projection (no bias) of the pooled token into the shared image-text space
    norm_eps: float = 1e-6
    drop_path: float = 0.0
    # decides the layout names used when saving
    family: Literal["vit", "deit", "beit", "deit3", "mae", "dinov2", "dinov3", "eva02", "clip", "siglip"] = "vit"
    labels: tuple[str, ...] = field(default=(), compare=False)
    # multi-label: independent sigmoid scores, a label is predicted when its score reaches its threshold
    # (one per class, tuned F1-optimal on validation by finetune --multi-label; empty: 0.5 for every class)
    multi_label: bool = field(default=False, compare=False)
    thresholds: tuple[float, ...] = field(default=(), compare=False)
    # its name in vitkit's architecture table and timm's create_model ("vit_base_patch16_224"), when the source said
    # which it is: what a timm file or folder is written for, so that `convert --to timm` needs no --arch
    arch: str = field(default="", compare=False)

    def __post_init__(self):
        for name, (low, high) in CONFIG_INTS.items():
            check_int(name, getattr(self, name), low, high)
        check_float("norm_eps", self.norm_eps, 0.0, 1.0, low_open=True)
        check_float("drop_path", self.drop_path, 0.0, 0.99)
        if self.layer_scale_init is not None:
            check_float("layer_scale_init", self.layer_scale_init, 0.0, 100.0, low_open=True)
        if self.patch_size > self.image_size:
            raise ValueError(f"patch_size {self.patch_size} is larger than image_size {self.image_size}")
        check_tokens(self.image_size, self.patch_size)
        if self.parameters_estimate() > MAX_PARAMETERS:
            raise ValueError(f"width {self.width} x depth {self.depth} (mlp {self.mlp_dim}) is about "
                             f"{self.parameters_estimate() / 1e9:.0f}B parameters, more than {MAX_PARAMETERS / 1e9:.0f}B")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.dist_token and not self.class_token:
            raise ValueError("a distillation token needs a class token")
        if self.pool in ("cls", "cls_mean") and not self.class_token:
            raise ValueError(f"pool {self.pool!r} needs a class token: use pool 'mean' or 'map'")
        if self.rope != "none" and self.head_dim % 4:
            raise ValueError(f"2-D rotary embeddings need a head size divisible by 4, got {self.head_dim}")
        check_float("rope_theta", self.rope_theta, 0.0, 1e9, low_open=True)
        if self.pre_logits_dim and self.proj_dim:
            raise ValueError("a model has a pre-logits layer or an output projection, not both")
        if not self.labels and self.num_classes:  # ImageNet-1k names for 1000 classes, else class_<i>
            object.__setattr__(self, "labels", default_labels(self.num_classes))
        if len(self.labels) != self.num_classes:
            raise ValueError(f"{len(self.labels)} labels for {self.num_classes} classes")
        if not isinstance(self.arch, str):
            raise ValueError(f"arch must be an architecture name, got {self.arch!r}")
        if self.thresholds and (not self.multi_label or len(self.thresholds) != self.num_classes
                                or not all(0.0 <= t <= 1.0 for t in self.thresholds)):
            raise ValueError(f"thresholds need a multi-label head and one value in [0, 1] per class "
                             f"({len(self.thresholds)} for {self.num_classes} classes)")

    def class_thresholds(self) -> tuple[float, ...]:
        """The multi-label decision threshold of every class (0.5 where none were tuned)."""
        return self.thresholds or (0.5,) * self.num_classes

    def parameters_estimate(self) -> int:
        """Roughly how many parameters this config allocates (blocks, patch embedding, head)."""
        block = 4 * self.width * self.width + (3 if self.mlp == "swiglu" else 2) * self.width * self.mlp_dim
        head = self.embed_dim * self.num_classes * (2 if self.dist_token else 1)
        return self.depth * block + self.in_chans * self.patch_size ** 2 * self.width + head

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens: class, distillation, registers."""
        return int(self.class_token) + int(self.dist_token) + self.reg_tokens

    @property
    def pos_prefix_tokens(self) -> int:
        """Leading rows of pos_embed that belong to prefix tokens (class, distillation), not patches."""
        return int(self.class_token) + int(self.dist_token) if self.class_pos_embed else 0

    @property
    def embed_dim(self) -> int:
        """Size of the head's input: the pre-logits layer's, the projection's, or the width."""
        return self.pre_logits_dim or self.proj_dim or (2 if self.pool == "cls_mean" else 1) * self.width

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def replace(self, **changes) -> "ViTConfig":
        """A copy with `changes`; a new head size without new labels drops the old names."""
        if changes.get("num_classes", self.num_classes) != self.num_classes and "labels" not in changes:
            changes["labels"] = ()
            changes.setdefault("thresholds", ())
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["labels"] = list(self.labels)
        out["thresholds"] = list(self.thresholds)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "ViTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ViTConfig fields: {sorted(unknown)}")
        d = dict(d)
        for name in ("labels", "thresholds"):
            if name in d:
                d[name] = tuple(d[name])
        return cls(**d)


@dataclass(frozen=True)
class TextConfig:
    """The text tower of an image-text model (CLIP, OpenCLIP, SigLIP, SigLIP 2): token and learned position
    embeddings, pre-norm blocks (the ViT's own `Block`), a final norm, one pooled token, a projection into the
    shared space, and the learned temperature (and SigLIP's bias) that turn cosine similarities into logits.

      CLIP    causal attention, the first end-of-text token pooled (`pool="eos"`; old configs: the highest id,
              `"argmax"`), a projection without bias, softmax over the labels
      SigLIP  bidirectional attention, the last position pooled, a projection with bias, a learned logit bias,
              a sigmoid per label
    """

    vocab_size: int = 49408
    context_length: int = 77  # the learned positions: every tokenized text is padded or cut to this length
    width: int = 512
    depth: int = 12
    heads: int = 8
    mlp_dim: int = 2048
    act: Literal["gelu", "gelu_tanh", "quick_gelu"] = "quick_gelu"
    norm_eps: float = 1e-5
    causal: bool = True  # CLIP: a token attends to those before it only
    pool: Literal["eos", "argmax", "last"] = "eos"
    eos_id: int = 49407  # pool "eos": the first position holding this id
    proj_dim: int = 512  # 0: the pooled token is the embedding
    proj_bias: bool = False  # SigLIP's head has a bias
    logit_bias: bool = False  # SigLIP: sigmoid logits = scale * cos + bias
    family: Literal["clip", "siglip"] = "clip"

    def __post_init__(self):
        for name, (low, high) in TEXT_INTS.items():
            check_int(name, getattr(self, name), low, high)
        check_float("norm_eps", self.norm_eps, 0.0, 1.0, low_open=True)
        if self.width % self.heads:
            raise ValueError(f"text width {self.width} is not divisible by heads {self.heads}")
        if self.pool == "eos" and not 0 <= self.eos_id < self.vocab_size:
            raise ValueError(f"eos_id {self.eos_id} is outside the vocabulary (0..{self.vocab_size - 1})")
        if self.proj_bias and not self.proj_dim:
            raise ValueError("a projection bias needs a projection (proj_dim > 0)")

    @property
    def embed_dim(self) -> int:
        return self.proj_dim or self.width

    def block_config(self) -> ViTConfig:
        """The fields the ViT's `Block` reads (width, heads, MLP, activation, norm epsilon), as a ViTConfig."""
        return ViTConfig(width=self.width, depth=self.depth, heads=self.heads, mlp_dim=self.mlp_dim, act=self.act,
                         norm_eps=self.norm_eps, num_classes=0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TextConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown TextConfig fields: {sorted(unknown)}")
        return cls(**d)


def variant(name: str, **overrides) -> ViTConfig:
    """'B/16' -> ViT-Base, patch 16; 'L/16@384' adds the image size. Overrides replace any field."""
    size_part, _, res = name.partition("@")
    width_name, _, patch = size_part.partition("/")
    if width_name not in WIDTHS or not patch.isdigit():
        raise ValueError(f"unknown variant {name!r}: expected e.g. 'S/16', 'B/32', 'L/16@384' (sizes {list(WIDTHS)})")
    width, depth, mlp_dim, heads = WIDTHS[width_name]
    fields = dict(width=width, depth=depth, mlp_dim=mlp_dim, heads=heads, patch_size=int(patch))
    if res:
        fields["image_size"] = int(res)
    fields.update(overrides)
    return ViTConfig(**fields)


BEIT_FIELDS = dict(
    family="beit", abs_pos_embed=False, rel_pos_bias="layer", qkv_bias="qv", layer_scale_init=0.1,
    pool="mean", fc_norm=True,
)


INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


RESIZE_MODES = ("crop", "pad", "squash")  # how an image meets the square input: see PreprocessSpec.with_resize_mode


@dataclass(frozen=True)
class PreprocessSpec:
    """How pixels reach the model: resize, centre crop, scale to [0, 1], normalize.

    resize_mode "shortest": shorter side to floor(input_size / crop_pct), aspect kept (timm's eval rule).
    resize_mode "exact":    both sides to floor(input_size / crop_pct) (transformers' ViT/BEiT/DeiT processors).
    Then a centre crop of input_size x input_size (a no-op when crop_pct is 1).
    resize_mode "pad":      the whole image, aspect kept: the longer side to input_size, centred on an input_size
                            square of the mean colour (letterbox; crop_pct is not used). See `with_resize_mode`.
    crop_rounding: where a centre crop starts when (side - input_size) / 2 is not whole: "half_even" rounds it as
    torchvision's CenterCrop (timm; what None means for "shortest"), "floor" as transformers' center_crop (what None
    means for "exact"; transformers' shortest-edge processors, BitImageProcessor and CLIPImageProcessor, floor too).
    """

    input_size: int = 224
    crop_pct: float = 0.875
    resize_mode: Literal["shortest", "exact", "pad"] = "shortest"
    interpolation: Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"] = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_rounding: Literal["half_even", "floor"] | None = None  # None: the resize mode's library's (see above)

    def __post_init__(self):
        if self.crop_rounding not in (None, "half_even", "floor"):
            raise ValueError(f"crop_rounding {self.crop_rounding!r} is not 'half_even', 'floor' or None")
        check_int("input_size", self.input_size, *INPUT_SIZE)
        check_float("crop_pct", self.crop_pct, 0.0, 2.0, low_open=True)  # > 1: zero padding
        if self.resize_mode not in ("shortest", "exact", "pad"):
            raise ValueError(f"resize_mode {self.resize_mode!r} is not 'shortest', 'exact' or 'pad'")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, (tuple, list)) or len(values) != 3:
                raise ValueError(f"{name} must be 3 numbers (R, G, B), got {values!r}")
            for value in values:
                check_float(name, value, 0.0 if name == "std" else -10.0, 10.0, low_open=name == "std")
        if self.resize > 16 * INPUT_SIZE[1]:
            raise ValueError(f"crop_pct {self.crop_pct} resizes to {self.resize} px: too small a crop fraction")

    @property
    def crop_offset_rounding(self) -> str:
        """crop_rounding, else the resize mode's library's: transformers' "floor" for "exact", torchvision's
        "half_even" for "shortest"."""
        return self.crop_rounding or ("floor" if self.resize_mode == "exact" else "half_even")

    @property
    def resize(self) -> int:
        return math.floor(self.input_size / self.crop_pct)  # timm's rule, e.g. 224 / 0.9 -> 248

    def with_resize_mode(self, mode: str) -> "PreprocessSpec":
        """A user's choice of how the image meets the square input (RESIZE_MODES): "crop" this recipe as it is (the
        checkpoint's centre crop), "pad" the whole image letterboxed onto the mean colour, "squash" the whole image
        stretched to the square."""
        if mode not in RESIZE_MODES:
            raise ValueError(f"resize mode {mode!r} is not one of {', '.join(RESIZE_MODES)}")
        if mode == "crop":
            return self
        return dataclasses.replace(self, resize_mode="pad" if mode == "pad" else "exact", crop_pct=1.0)

    @property
    def whole_image(self) -> str:
        """Which RESIZE_MODES choice this recipe is: "pad", "squash" (both sides to the input, nothing cut) or
        "crop"."""
        if self.resize_mode == "pad":
            return "pad"
        return "squash" if self.resize_mode == "exact" and self.crop_pct == 1.0 else "crop"

    def at_size(self, input_size: int) -> "PreprocessSpec":
        """The same recipe for another model input side, keeping the crop fraction."""
        return dataclasses.replace(self, input_size=input_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)
