"""The one Vision Transformer: ViT, DeiT (distilled too), BEiT, DeiT-III, MAE, DINOv2 (with registers), CLIP and
SigLIP image towers are configurations of this class (see vitkit.config).

Its parameter names are vitkit's own state-dict layout; foreign layouts are mapped at the edge
(`vitkit.checkpoints.keymaps`). Features are separate from the head so that classification,
embeddings and fine-tuning share one path:
  forward_features(x)             -> tokens after the final norm           (B, T, D)
  forward_intermediates(x, idx)   -> tokens after the chosen blocks        [(B, T, D), ...]
  pool(tokens, kind)              -> one embedding per image: cls, mean, prelogits, tokens
  forward_head(tokens)            -> logits (pre_logits=True: the head's input)  (B, C)

Try it:  python -c "import torch; from vitkit.config import variant; from vitkit.models.vit import \
VisionTransformer; print(VisionTransformer(variant('Ti/16'))(torch.rand(1, 3, 224, 224)).shape)"
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vitkit.choices import POOLS, VECTOR_POOLS  # noqa: F401  (both: part of this module's interface)
from vitkit.config import ViTConfig
from vitkit.models.layers import AttentionPool, Block, PatchEmbed, init_linear_layers
from vitkit.models.pos_embed import RelativePositionBias, SizeCache, resample_abs_pos_embed
from vitkit.models.rope import rope_tables


# how one image's tokens become an embedding (see VisionTransformer.pool); the vector ones are what an index stores


def layer_id(name: str, depth: int) -> int:
    """Layer ids of parameter names: the embedding (patch projection, class/distillation tokens, positions, a
    shared BEiT table) is 0, block i is i + 1, everything after the blocks (norms, pre-logits, heads) depth + 1."""
    if name.startswith(("patch_embed.", "cls_token", "dist_token", "reg_token", "pos_embed", "rel_pos.",
                        "norm_pre.")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


class VisionTransformer(nn.Module):
    prepared = False  # True once vitkit.runtime.prepare has packed it for inference (then it cannot be exported)

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = cfg = config
        self.patch_embed = PatchEmbed(cfg)
        grid = (cfg.grid, cfg.grid)
        if cfg.class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        if cfg.dist_token:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        if cfg.reg_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, cfg.width))
        if cfg.abs_pos_embed:
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_prefix_tokens + cfg.grid**2, cfg.width))
            self._pos_cache = SizeCache()
        self.norm_pre = nn.LayerNorm(cfg.width, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        if cfg.rel_pos_bias == "shared":
            self.rel_pos = RelativePositionBias(grid, cfg.heads, cfg.rel_pos_resize)
        if cfg.rope != "none":
            self._rope_cache: dict[tuple[int, int], torch.Tensor] = {}
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear stochastic depth
        self.blocks = nn.ModuleList(Block(cfg, rate) for rate in rates)
        if cfg.rel_pos_bias == "layer":
            for block in self.blocks:
                block.rel_pos = RelativePositionBias(grid, cfg.heads, cfg.rel_pos_resize)
        self.norm = nn.Identity() if cfg.fc_norm else nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.fc_norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps) if cfg.fc_norm else nn.Identity()
        if cfg.pool == "map":
            self.attn_pool = AttentionPool(cfg)
        if cfg.pre_logits_dim:
            self.pre_logits = nn.Sequential()
            self.pre_logits.add_module("fc", nn.Linear(cfg.width, cfg.pre_logits_dim))
            self.pre_logits.add_module("act", nn.Tanh())
        if cfg.proj_dim:
            self.proj = nn.Linear(cfg.width, cfg.proj_dim, bias=False)
        features = cfg.embed_dim
        self.head = nn.Linear(features, cfg.num_classes) if cfg.num_classes else nn.Identity()
        if cfg.dist_token and cfg.dist_head:
            self.head_dist = nn.Linear(features, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.grad_checkpointing = False
        self.init_weights()

    # -- set-up -----------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Truncated-normal init (std 0.02) as in timm/transformers; norms at (1, 0); zero head."""
        init_linear_layers(self)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for name in ("cls_token", "dist_token", "reg_token", "pos_embed"):
            if hasattr(self, name):
                nn.init.trunc_normal_(getattr(self, name), std=0.02)

    def set_fused_attention(self, fused: bool) -> None:
        for block in self.blocks:
            block.attn.fused = fused
        if hasattr(self, "attn_pool"):
            self.attn_pool.fused = fused

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels

    def reset_classifier(self, labels: Sequence[str], multi_label: bool = False) -> None:
        """A new head (and distillation head) for `labels`, initialised as `init_weights` does (truncated normal,
        std 0.02; zero bias); a pre-logits layer goes with the old head, as transformers and timm drop it when
        fine-tuning (their classifiers read the class token directly). An output projection (CLIP) stays: the
        new head reads the projected embedding. `multi_label`: its outputs are independent sigmoid scores."""
        self.config = self.config.replace(num_classes=len(labels), labels=tuple(labels), pre_logits_dim=0,
                                          multi_label=multi_label, thresholds=())
        if hasattr(self, "pre_logits"):
            del self.pre_logits
        heads = ["head"] + (["head_dist"] if self.config.dist_token and self.config.dist_head else [])
        for name in heads:
            layer = nn.Linear(self.config.embed_dim, len(labels))
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
            setattr(self, name, layer)

    def layer_of(self, name: str) -> int:
        """The layer a parameter belongs to, for layer-wise learning-rate decay (see `layer_id`)."""
        return layer_id(name, self.config.depth)

    # -- features -----------------------------------------------------------------------------------
    def _pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == (self.config.grid, self.config.grid):
            return self.pos_embed
        cfg = self.config
        resample = lambda: resample_abs_pos_embed(  # noqa: E731
            self.pos_embed, grid, cfg.pos_prefix_tokens, antialias=cfg.pos_embed_antialias)
        return self._pos_cache.get(self.pos_embed, grid, resample)

    def embed(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Pixels (B, C, H, W) -> tokens (B, P + gh*gw, D): class, distillation and register tokens, then the
        patches, with positions added to the patches (and to class/distillation when class_pos_embed)."""
        cfg = self.config
        x, grid = self.patch_embed(pixels)  # (B, gh*gw, D)
        B = x.shape[0]
        prefix = [getattr(self, name) for name in ("cls_token", "dist_token") if hasattr(self, name)]  # [(1, 1, D)]
        if cfg.abs_pos_embed:
            pos = self._pos_embed_for(grid)  # (1, P0 + gh*gw, D) with P0 = pos_prefix_tokens (0 or the prefix)
            x = x + pos[:, cfg.pos_prefix_tokens:]
            if cfg.pos_prefix_tokens:
                prefix = [token + pos[:, i:i + 1] for i, token in enumerate(prefix)]
        if cfg.reg_tokens:
            prefix.append(self.reg_token)  # (1, R, D)
        # no empty tensor joins the concatenation: ONNX shape inference would count it as one token
        x = torch.cat([t.expand(B, -1, -1) for t in prefix] + [x], dim=1) if prefix else x  # (B, P + gh*gw, D)
        return self.norm_pre(x), grid

    def _rope_for(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor | None:
        """(2, gh*gw, hd) rotary tables for this grid (cached; they hold no parameters), or None."""
        cfg = self.config
        if cfg.rope == "none":
            return None
        ref = (cfg.rope_ref_grid or cfg.grid,) * 2
        build = lambda: rope_tables(cfg.rope, grid, cfg.head_dim, cfg.rope_theta, ref).to(device)  # noqa: E731
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return build()
        key = (tuple(grid), device)
        if key not in self._rope_cache:
            with torch.inference_mode(False):  # a normal tensor: the cache also serves passes with gradients
                self._rope_cache[key] = build()
        return self._rope_cache[key]

    def _run_blocks(self, x: torch.Tensor, grid, need_weights: bool = False):
        """Yields (block index, tokens after it, attention weights or None)."""
        shared = self.rel_pos(grid) if self.config.rel_pos_bias == "shared" else None
        rope = self._rope_for(grid, x.device)
        for i, block in enumerate(self.blocks):
            bias = block.rel_pos(grid) if self.config.rel_pos_bias == "layer" else shared
            if bias is not None:
                bias = bias.unsqueeze(0).to(x.dtype)  # (1, heads, N, N)
            if self.grad_checkpointing and self.training and not need_weights:
                x, weights = block.checkpointed(x, bias, rope), None
            else:
                x, weights = block(x, bias, need_weights, rope)
            yield i, x, weights

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        x, grid = self.embed(pixels)
        for _, x, _ in self._run_blocks(x, grid):
            pass
        return self.norm(x)  # (B, T, D)

    def forward_intermediates(
        self, pixels: torch.Tensor, indices: list[int], norm: bool = False
    ) -> list[torch.Tensor]:
        """Tokens (B, T, D) after each block in `indices` (negative counts from the end), in the given order;
        with norm=True the final norm is applied to each."""
        depth = self.config.depth
        wanted = [i % depth for i in indices]
        if any(not -depth <= i < depth for i in indices):
            raise IndexError(f"block indices {indices} out of range for depth {depth}")
        x, grid = self.embed(pixels)
        found = {}
        for i, x, _ in self._run_blocks(x, grid):
            if i in wanted:
                found[i] = self.norm(x) if norm else x
            if i == max(wanted):
                break
        return [found[i] for i in wanted]

    def attention_maps(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """Attention weights (B, heads, N, N) of every block, from the readable attention path."""
        x, grid = self.embed(pixels)
        return [weights for _, _, weights in self._run_blocks(x, grid, need_weights=True)]

    # -- head ---------------------------------------------------------------------------------------
    def _pooled(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Tokens (B, T, D) -> pre-logit features (B, D'), one per head: [class] or, for distilled DeiT,
        [class, distillation]."""
        cfg = self.config
        if cfg.pool == "mean":
            pooled = [tokens[:, cfg.num_prefix_tokens:].mean(dim=1)]  # [(B, D)]
        elif cfg.pool == "cls_mean":  # DINOv2's classifiers: class token beside the patch mean
            pooled = [self.pool(tokens, "cls_mean")]  # [(B, 2D)]
        elif cfg.pool == "map":
            pooled = [self.attn_pool(tokens)[0]]  # [(B, D)]
        else:
            pooled = [tokens[:, i] for i in range(1 + int(cfg.dist_token and cfg.dist_head))]
        pooled = [self.fc_norm(p) for p in pooled]
        if cfg.pre_logits_dim:
            return [self.pre_logits(p) for p in pooled]
        return [self.proj(p) for p in pooled] if cfg.proj_dim else pooled  # [(B, D')]

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, T, D) -> logits (B, C), or the pre-logit features (B, D') with pre_logits=True.
        Distilled DeiT averages its two heads (and, for features, the two tokens) as timm does."""
        if pre_logits:
            pooled = self._pooled(tokens)
            return pooled[0] if len(pooled) == 1 else torch.stack(pooled).mean(dim=0)
        logits = self.head_logits(tokens)
        return logits[0] if len(logits) == 1 else torch.stack(logits).mean(dim=0)

    def head_logits(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Tokens (B, T, D) -> each head's logits [(B, C)]: [class head], or [class head, distillation head] for a
        distilled DeiT (trained apart by knowledge distillation, averaged by forward_head)."""
        heads = [self.head] + ([self.head_dist] if hasattr(self, "head_dist") else [])
        return [head(p) for head, p in zip(heads, self._pooled(tokens))]

    def pool(self, tokens: torch.Tensor, kind: str, final: bool = True) -> torch.Tensor:
        """Tokens (B, T, D) -> one embedding per image: 'cls' the class token (B, D), 'mean' the patch-token
        mean (B, D; registers left out; then fc_norm when the model pools that way and these are the final
        tokens), 'cls_mean' the two side by side (B, 2D; DINOv2's linear-evaluation features), 'prelogits' the head's input (B, D', final tokens only: the pooler, CLIP's projection or
        SigLIP's attention pooling included), 'tokens' every token (B, T, D). `final`: the tokens
        after the final norm (forward_features), else one block's raw hidden states."""
        if kind == "tokens":
            return tokens
        if kind == "cls":
            if not self.config.class_token:
                raise ValueError("this model has no class token: pool 'mean', 'prelogits' or 'tokens'")
            return tokens[:, 0]  # (B, D)
        if kind == "prelogits":
            if not final:
                raise ValueError("'prelogits' pools the final layer only; use cls, mean or tokens with --layers")
            return self.forward_head(tokens, pre_logits=True)  # (B, D')
        if kind == "cls_mean":
            cls = self.pool(tokens, "cls", final)
            return torch.cat((cls, tokens[:, self.config.num_prefix_tokens:].mean(dim=1)), dim=-1)  # (B, 2D)
        if kind != "mean":
            raise ValueError(f"unknown pooling {kind!r}: choose {', '.join(POOLS)}")
        mean = tokens[:, self.config.num_prefix_tokens:].mean(dim=1)  # (B, D)
        return self.fc_norm(mean) if final else mean

    def pool_pixels(self, pixels: torch.Tensor, kind: str) -> torch.Tensor:
        """Pixels (B, C, H, W) -> `pool(forward_features(pixels), kind)`."""
        return self.pool(self.forward_features(pixels), kind)

    def forward(self, pixels: torch.Tensor, separate_heads: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Pixels (B, C, H, W) -> logits (B, classes); `separate_heads`: every head's logits (head_logits)."""
        tokens = self.forward_features(pixels)
        return self.head_logits(tokens) if separate_heads else self.forward_head(tokens)
