"""Building blocks of the ViT family: patch embedding, attention, MLP, layer scale, drop path, block, and
attention pooling (SigLIP's MAP head).

Attention has two paths chosen by one flag: the fused `scaled_dot_product_attention` (default) and a
readable path that also returns the attention weights (used for attention maps).

Try it:  python -m pytest tests/test_model.py -q
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vitkit.config import ViTConfig
from vitkit.models.rope import rotate_patches


def init_linear_layers(module: nn.Module) -> None:
    """Truncated-normal Linear weights (std 0.02) and zero biases, as timm and transformers initialise them."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size,
                              bias=cfg.patch_bias)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(pixels)  # (B, D, gh, gw)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid  # (B, gh*gw, D)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float,
           fused: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q, k, v (B, heads, N, hd) -> output (B, heads, N, hd) and, on the readable path, the attention weights
    (B, heads, N, N). fused: SDPA (no weights); else softmax(q k^T * scale + bias) written out."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias), None
    scores = (q * scale) @ k.transpose(-2, -1)  # (B, heads, N, N)
    if bias is not None:
        scores = scores + bias
    weights = scores.softmax(dim=-1)
    return weights @ v, weights  # (B, heads, N, hd)


class Attention(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.scale = cfg.head_dim**-0.5
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=cfg.qkv_bias == "qkv")
        if cfg.qkv_bias == "qv":  # BEiT: learned q and v biases, k bias fixed at zero
            self.q_bias = nn.Parameter(torch.zeros(cfg.width))
            self.v_bias = nn.Parameter(torch.zeros(cfg.width))
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.fused = True
        self.rope_interleaved = cfg.rope == "eva"

    def _qkv_bias(self) -> torch.Tensor | None:
        if not hasattr(self, "q_bias"):
            return self.qkv.bias
        return torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None = None, need_weights: bool = False,
        rope: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """rope: (2, patches, hd) cos/sin tables that rotate the patch tokens' q and k (DINOv3), or None."""
        B, N, D = x.shape
        qkv = F.linear(x, self.qkv.weight, self._qkv_bias())  # (B, N, 3*D)
        qkv = qkv.reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, heads, N, hd)
        q, k, v = qkv.unbind(0)  # each (B, heads, N, hd)
        if rope is not None:
            q, k = rotate_patches(q, k, rope, self.rope_interleaved)
        out, weights = attend(q, k, v, bias, self.scale, fused=self.fused and not need_weights)
        out = out.transpose(1, 2).reshape(B, N, D)  # (B, N, heads*hd)
        return self.proj(out), weights


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    """'gelu' exact (erf; ViT, DeiT, BEiT, DINOv2), 'gelu_tanh' (SigLIP), 'quick_gelu' (OpenAI CLIP), 'silu'
    (the gate of SwiGLU)."""
    return {"gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "quick_gelu": QuickGELU,
            "silu": nn.SiLU}[name]()


class Mlp(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim)
        self.act = activation(cfg.act)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """Gated MLP: fc2(norm(act(gate) * value)) with [gate | value] = fc1(x), each mlp_dim wide (timm's packed
    GluMlp layout; its SwiGLU's fc1_g / fc1_x and transformers' gate_proj / up_proj are the two halves). `norm`
    is EVA-02's sub-LN (`mlp_norm`), else identity."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, 2 * cfg.mlp_dim)
        self.act = activation(cfg.act)
        self.norm = nn.LayerNorm(cfg.mlp_dim, eps=cfg.norm_eps) if cfg.mlp_norm else nn.Identity()
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)  # each (B, N, mlp_dim)
        return self.fc2(self.norm(self.act(gate) * value))


def make_mlp(cfg: ViTConfig) -> nn.Module:
    return SwiGLU(cfg) if cfg.mlp == "swiglu" else Mlp(cfg)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1)
        return x * mask / keep


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = make_mlp(cfg)
        scale = cfg.layer_scale_init
        self.ls1 = LayerScale(cfg.width, scale) if scale is not None else nn.Identity()
        self.ls2 = LayerScale(cfg.width, scale) if scale is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None = None, need_weights: bool = False,
        rope: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_out, weights = self.attn(self.norm1(x), bias, need_weights, rope)
        x = x + self.drop_path(self.ls1(attn_out))
        x = x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        return x, weights

    def checkpointed(self, x: torch.Tensor, bias: torch.Tensor | None, rope: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """Forward that recomputes activations in backward instead of storing them."""
        return checkpoint(lambda t, b, r: self.forward(t, b, False, r)[0], x, bias, rope, use_reentrant=False)


class AttentionPool(nn.Module):
    """SigLIP's MAP head: one learned query attends over all tokens, then a residual MLP; timm's
    AttentionPoolLatent with the q and kv projections stored as one `qkv` (q rows first)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.heads = cfg.heads
        self.scale = cfg.head_dim**-0.5
        self.latent = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)
        self.fused = True

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens (B, N, D) -> one vector per image (B, D), and on the readable path the query's attention
        weights (B, heads, 1, N)."""
        B, N, D = x.shape
        w_q, w_kv = self.qkv.weight.split((D, 2 * D))
        b_q, b_kv = self.qkv.bias.split((D, 2 * D))
        q = F.linear(self.latent, w_q, b_q).expand(B, -1, -1)  # (B, 1, D)
        q = q.reshape(B, 1, self.heads, D // self.heads).transpose(1, 2)  # (B, heads, 1, hd)
        kv = F.linear(x, w_kv, b_kv).reshape(B, N, 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)  # each (B, heads, N, hd)
        out, weights = attend(q, k, v, None, self.scale, fused=self.fused and not need_weights)
        out = self.proj(out.transpose(1, 2).reshape(B, 1, D))  # (B, 1, D)
        out = out + self.mlp(self.norm(out))
        return out[:, 0], weights
