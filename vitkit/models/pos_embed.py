"""Position information at any input size: absolute embeddings (ViT, DeiT) and relative bias (BEiT).

Both resamplers are pure functions, used when weights are loaded at another size and, per input grid,
by the model itself (cached by `SizeCache` while the parameters do not change).

Try it:  python -m pytest tests/test_pos_embed.py -q
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Grid = tuple[int, int]


def resample_abs_pos_embed(
    pos_embed: torch.Tensor, new_grid: Grid, num_prefix_tokens: int, antialias: bool = True
) -> torch.Tensor:
    """(1, P + h*w, D) -> (1, P + H*W, D) by bicubic interpolation of the patch positions.

    antialias=True matches timm's `resample_abs_pos_embed`, False transformers' `interpolate_pos_encoding`.
    They differ even when the grid grows (torch's antialiased bicubic uses another cubic kernel), so the
    loader picks the one of the checkpoint's home library. Source grids are assumed square.
    """
    prefix, patches = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    side = int(round(patches.shape[1] ** 0.5))
    if (side, side) == tuple(new_grid):
        return pos_embed
    dim = patches.shape[-1]
    grid = patches.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)  # (1, D, h, w)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=antialias)
    patches = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)  # (1, H*W, D)
    return torch.cat((prefix, patches), dim=1)


def relative_position_index(grid: Grid) -> torch.Tensor:
    """(N+1, N+1) indices into a BEiT table of (2h-1)(2w-1) + 3 rows; the last 3 rows are cls->token,
    token->cls and cls->cls."""
    h, w = grid
    coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")).flatten(1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 2), dy and dx in [-(h-1), h-1]
    rel[..., 0] += h - 1
    rel[..., 1] += w - 1
    rel[..., 0] *= 2 * w - 1
    num_rel = (2 * h - 1) * (2 * w - 1)
    index = torch.zeros((h * w + 1,) * 2, dtype=torch.long)
    index[1:, 1:] = rel.sum(-1)
    index[0, :] = num_rel  # cls to token
    index[:, 0] = num_rel + 1  # token to cls
    index[0, 0] = num_rel + 2  # cls to cls
    return index


def _geometric_offsets(src: int, dst: int) -> torch.Tensor:
    """Source sample positions of the BEiT authors' resize: spacing grows geometrically from the centre
    so that `src` samples span the `dst` offsets (ratio found by bisection, as in unilm's beit code)."""
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** (src // 2)) / (1.0 - q) > dst // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(src // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    return torch.tensor([-d for d in reversed(dis)] + [0.0] + dis)


def _linear_weights(points: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(len(targets), len(points)) weights of 1-D linear interpolation on sorted, uneven `points`;
    targets outside the range take the edge value."""
    right = torch.bucketize(targets, points).clamp(max=len(points) - 1)
    left = (right - 1).clamp(min=0)
    d_left = (targets - points[left]).clamp(min=0)
    d_right = (points[right] - targets).clamp(min=0)
    both_zero = (d_left == 0) & (d_right == 0)
    d_left[both_zero] = d_right[both_zero] = 1.0
    weights = torch.zeros(len(targets), len(points))
    rows = torch.arange(len(targets))
    weights.index_put_((rows, left), d_right / (d_left + d_right), accumulate=True)
    weights.index_put_((rows, right), d_left / (d_left + d_right), accumulate=True)
    return weights


def resample_rel_pos_table(
    table: torch.Tensor, old_grid: Grid, new_grid: Grid, method: str = "geometric"
) -> torch.Tensor:
    """((2h-1)(2w-1) + 3, heads) -> ((2H-1)(2W-1) + 3, heads); the 3 cls rows are kept.

    "geometric": the BEiT authors' method (samples at geometrically spaced offsets), with linear
    interpolation between them as timm does (the original used scipy's interp2d, removed from SciPy).
    "bilinear": plain bilinear resize of the table, as transformers' BEiT does for other input sizes.
    """
    if tuple(old_grid) == tuple(new_grid):
        return table
    src = (2 * old_grid[0] - 1, 2 * old_grid[1] - 1)
    dst = (2 * new_grid[0] - 1, 2 * new_grid[1] - 1)
    rel, extra = table[:-3].float(), table[-3:]
    heads = table.shape[-1]
    grid = rel.reshape(src[0], src[1], heads).permute(2, 0, 1)  # (heads, 2h-1, 2w-1)
    if method == "bilinear":
        grid = F.interpolate(grid[None], size=dst, mode="bilinear", align_corners=False)[0]
    elif method == "geometric":
        wy = _linear_weights(_geometric_offsets(src[0], dst[0]), torch.arange(-(dst[0] // 2), dst[0] // 2 + 1.0))
        wx = _linear_weights(_geometric_offsets(src[1], dst[1]), torch.arange(-(dst[1] // 2), dst[1] // 2 + 1.0))
        grid = wy @ grid @ wx.T  # (heads, 2H-1, 2W-1)
    else:
        raise ValueError(f"unknown relative-position resize method {method!r}: use 'geometric' or 'bilinear'")
    rel = grid.permute(1, 2, 0).reshape(-1, heads).to(table.dtype)  # ((2H-1)(2W-1), heads)
    return torch.cat((rel, extra), dim=0)


class SizeCache:
    """Values derived from a parameter per input grid, recomputed when the parameter changes or when
    gradients must flow through them."""

    def __init__(self):
        self._store: dict[Grid, tuple[int, torch.Tensor]] = {}

    def get(self, param: torch.Tensor, grid: Grid, compute) -> torch.Tensor:
        if torch.is_grad_enabled() and param.requires_grad:
            return compute()
        hit = self._store.get(grid)
        key = (param._version, param.data_ptr(), param.device, param.dtype)
        if hit is None or hit[0] != key:
            hit = (key, compute().detach())
            self._store[grid] = hit
        return hit[1]


class RelativePositionBias(nn.Module):
    """BEiT's learned bias per head and relative offset; `forward(grid)` -> (heads, N+1, N+1)."""

    def __init__(self, grid: Grid, heads: int, resize_method: str = "geometric"):
        super().__init__()
        self.grid = tuple(grid)
        self.table = nn.Parameter(torch.zeros((2 * grid[0] - 1) * (2 * grid[1] - 1) + 3, heads))
        self.resize_method = resize_method
        self._cache = SizeCache()

    def forward(self, grid: Grid) -> torch.Tensor:
        return self._cache.get(self.table, tuple(grid), lambda: self._compute(tuple(grid)))

    def _compute(self, grid: Grid) -> torch.Tensor:
        table = resample_rel_pos_table(self.table, self.grid, grid, self.resize_method)
        index = relative_position_index(grid).to(table.device)
        n = index.shape[0]
        return table[index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()  # (heads, N+1, N+1)
