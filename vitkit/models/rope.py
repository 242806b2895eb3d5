"""Rotary position embeddings over the patch grid (2-D RoPE), applied to queries and keys of the patch tokens
only (class and register tokens keep no position).

  dinov3   DINOv3: patch centres normalised to [-1, 1] per axis, angles 2 pi * coord * theta^(-4i/hd) for
           i < hd/4, the y angles then the x angles, repeated for the two halves that rotate_half pairs
  eva      EVA-02 (timm's RotaryEmbeddingCat): patch indices rescaled to the pre-training grid (`ref`), angles
           index * theta^(-4i/hd), each angle repeated for the interleaved pairs (x0, x1), (x2, x3), ...

Like the absolute positions, the tables depend on the input grid only and are cached per grid by the model.

Try it:  python -m pytest tests/test_parity_families.py -q -k dinov3
"""

from __future__ import annotations

import math

import torch

Grid = tuple[int, int]


def dinov3_rope(grid: Grid, head_dim: int, theta: float) -> torch.Tensor:
    """(2, gh*gw, hd): cos and sin of DINOv3's rotation angles for each patch."""
    gh, gw = grid
    inv_freq = 1.0 / theta ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32)  # (hd/4,)
    ys = (torch.arange(0.5, gh, dtype=torch.float32) / gh) * 2 - 1  # (gh,) patch centres in [-1, 1]
    xs = (torch.arange(0.5, gw, dtype=torch.float32) / gw) * 2 - 1  # (gw,)
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1)  # (gh*gw, 2)
    angles = 2 * math.pi * coords[:, :, None] * inv_freq[None, None, :]  # (gh*gw, 2, hd/4)
    angles = angles.flatten(1, 2).tile(2)  # (gh*gw, hd): [y, x] angles for each of the two halves
    return torch.stack((angles.cos(), angles.sin()))


def eva_rope(grid: Grid, head_dim: int, theta: float, ref: Grid) -> torch.Tensor:
    """(2, gh*gw, hd): cos and sin of EVA-02's rotation angles for each patch (interleaved layout)."""
    gh, gw = grid
    n = head_dim // 4
    bands = 1.0 / theta ** (torch.arange(n, dtype=torch.float32) / n)  # (hd/4,)
    ys = torch.arange(gh, dtype=torch.float32) / gh * ref[0]  # (gh,) indices on the pre-training grid
    xs = torch.arange(gw, dtype=torch.float32) / gw * ref[1]  # (gw,)
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)  # (gh, gw, 2)
    angles = (coords[..., None] * bands).flatten(-2).flatten(0, 1)  # (gh*gw, hd/2): y bands then x bands
    angles = torch.stack((angles, angles), dim=-1).flatten(-2)  # (gh*gw, hd): one angle per interleaved pair
    return torch.stack((angles.cos(), angles.sin()))


def rope_tables(kind: str, grid: Grid, head_dim: int, theta: float, ref: Grid) -> torch.Tensor:
    if kind == "dinov3":
        return dinov3_rope(grid, head_dim, theta)
    return eva_rope(grid, head_dim, theta, ref)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    *lead, hd = x.shape
    pairs = x.reshape(*lead, hd // 2, 2)  # (..., hd/2, 2): (x0, x1), (x2, x3), ...
    even, odd = pairs.unbind(-1)  # each (..., hd/2)
    return torch.stack((-odd, even), dim=-1).reshape(*lead, hd)


def rotate_patches(q: torch.Tensor, k: torch.Tensor, rope: torch.Tensor, interleaved: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k (B, heads, N, hd) with the patches last; rope (2, P, hd) -> q, k with the P patch tokens rotated:
    by halves (DINOv3) or by interleaved pairs (EVA-02)."""
    cos, sin = rope.to(q.dtype).unbind(0)  # each (P, hd)
    patches = cos.shape[0]
    turn = _rotate_pairs if interleaved else _rotate_half

    def rotate(t: torch.Tensor) -> torch.Tensor:
        prefix, grid = t.split((t.shape[-2] - patches, patches), dim=-2)
        return torch.cat((prefix, grid * cos + turn(grid) * sin), dim=-2)

    return rotate(q), rotate(k)
