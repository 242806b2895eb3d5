"""Attention maps and attention rollout of a ViT, read out over the patch grid.

Both start from `VisionTransformer.attention_maps(pixels)`: the attention weights (B, heads, N, N) of every
block, from the readable attention path, asked for per call (the network's fused SDPA path stays on for
normal inference). Tokens are [class token, distillation token (distilled DeiT), patches], N = P + gh*gw.

  attention  one block's weights (default the last), one head or the heads fused (mean, max or min)
  rollout    Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers": per block fuse the heads,
             add the identity for the residual connection, renormalise each row to sum 1, then multiply
             the blocks: R = A_L @ ... @ A_1 (block L included; default the last)

The (N, N) result is read out at the rows of the tokens the classifier reads (`READOUTS`), over the patch
columns, reshaped to the patch grid of the actual input (any size).

Try it:  python -c "import torch, vitkit; from vitkit.explain.maps import patch_map; m = vitkit.load(\
arch='deit_tiny_patch16_224'); print(patch_map(m.net, torch.rand(1, 3, 224, 224)).shape)"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vitkit.config import ViTConfig
from vitkit.explain.options import HEAD_FUSIONS, METHODS, READOUTS



def fuse_heads(weights: torch.Tensor, fusion: str = "mean", head: int | None = None) -> torch.Tensor:
    """(B, heads, N, N) -> (B, N, N): one head (`head`, negative counts from the end) or all fused."""
    if head is not None:
        return weights[:, head]
    if fusion == "mean":
        return weights.mean(dim=1)
    if fusion == "max":
        return weights.amax(dim=1)
    if fusion == "min":
        return weights.amin(dim=1)
    raise ValueError(f"unknown head fusion {fusion!r}: choose {', '.join(HEAD_FUSIONS)}")


def rollout(attentions: Sequence[torch.Tensor], fusion: str = "mean") -> torch.Tensor:
    """Attention rollout of the given blocks, first to last: [(B, heads, N, N)] * L -> (B, N, N); row i says
    how much of token i's representation after the last block flows from each input token."""
    result = None
    for weights in attentions:
        fused = fuse_heads(weights.float(), fusion)  # (B, N, N)
        fused = fused + torch.eye(fused.shape[-1], dtype=fused.dtype, device=fused.device)  # residual
        fused = fused / fused.sum(dim=-1, keepdim=True)  # rows sum to 1
        result = fused if result is None else fused @ result
    if result is None:
        raise ValueError("rollout needs at least one block")
    return result


def resolve_readout(config: ViTConfig, readout: str = "auto") -> str:
    """READOUTS name -> the rows used: "cls", "cls+dist", "dist" or "patches"; refuses a missing token."""
    if readout == "auto":
        if config.pool == "mean" or not config.class_token:
            return "patches"
        return "cls+dist" if config.dist_token and config.dist_head else "cls"
    if readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}: choose {', '.join(READOUTS)}")
    if readout == "cls" and not config.class_token:
        raise ValueError("readout 'cls': this model has no class token")
    if readout == "dist" and not config.dist_token:
        raise ValueError("readout 'dist': this model has no distillation token")
    return readout


ROW_NAMES = {"cls": "class token row", "cls+dist": "class + distillation token rows", "dist": "distillation token row",
             "patches": "patch rows mean"}


def readout_rows(matrix: torch.Tensor, config: ViTConfig, readout: str = "auto") -> torch.Tensor:
    """(B, N, N) -> (B, N): the row (or mean of rows) of the tokens the classifier reads."""
    rows = resolve_readout(config, readout)
    if rows == "patches":
        return matrix[:, config.num_prefix_tokens:].mean(dim=1)
    chosen = {"cls": [0], "cls+dist": [0, 1], "dist": [1]}[rows]
    return matrix[:, chosen].mean(dim=1)


def to_grid(rows: torch.Tensor, config: ViTConfig, grid: tuple[int, int]) -> torch.Tensor:
    """(B, N) over all tokens -> (B, gh, gw) over the patch tokens."""
    patches = rows[:, config.num_prefix_tokens:]  # (B, gh*gw)
    if patches.shape[1] != grid[0] * grid[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not fill a {grid[0]}x{grid[1]} grid")
    return patches.reshape(-1, *grid)  # (B, gh, gw)


@dataclass(frozen=True)
class MapSpec:
    """Which map: `method` "attention" (block `layer`, default the last; head `head` or the heads fused by
    `fusion`) or "rollout" (blocks 0..`layer`, default all; heads fused by `fusion`: `head` is refused,
    heads are not aligned across blocks), read out at the `readout` rows (see READOUTS)."""

    method: str = "rollout"
    layer: int | None = None  # counts from 0; negative from the end
    head: int | None = None
    fusion: str = "mean"
    readout: str = "auto"

    def __post_init__(self):
        for value, allowed, what in ((self.method, METHODS, "method"), (self.fusion, HEAD_FUSIONS, "head fusion"),
                                     (self.readout, READOUTS, "readout")):  # fail before any model runs
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}: choose {', '.join(allowed)}")
        if self.method == "rollout" and self.head is not None:
            raise ValueError("rollout fuses all heads of each block (fusion mean|max|min); to see one head, "
                             "use method 'attention' with a head")

    def check(self, config: ViTConfig) -> int:
        """Validate layer, head and readout against a model (before any image is read) -> the index
        (0-based) of the last block used."""
        layer = -1 if self.layer is None else self.layer
        if not -config.depth <= layer < config.depth:
            raise ValueError(f"layer {layer} out of range: this model has {config.depth} blocks "
                             f"(0..{config.depth - 1})")
        if self.head is not None and not -config.heads <= self.head < config.heads:
            raise ValueError(f"head {self.head} out of range: this model has {config.heads} heads "
                             f"(0..{config.heads - 1})")
        resolve_readout(config, self.readout)
        return layer % config.depth

    def describe(self, config: ViTConfig) -> str:
        """One line for a picture's caption, e.g. 'rollout, blocks 0-11, heads mean, class token row'."""
        last = self.check(config)
        heads = f"head {self.head}" if self.head is not None else f"heads {self.fusion}"
        blocks = f"blocks 0-{last}" if self.method == "rollout" else f"block {last}"
        return f"{self.method}, {blocks}, {heads}, {ROW_NAMES[resolve_readout(config, self.readout)]}"


def require_attention_maps(net) -> None:
    if not hasattr(net, "attention_maps"):
        raise ValueError("attention maps need the PyTorch network, and this one is an ONNX graph without a "
                         "readable attention path: load the checkpoint without --backend onnx")


def patch_map(net, pixels: torch.Tensor, spec: MapSpec = MapSpec()) -> torch.Tensor:
    """Pixels (B, 3, H, W) on the network's device -> relevance of each patch (B, gh, gw), float32 on
    the CPU, gh = H // patch."""
    config = net.config
    last = spec.check(config)
    require_attention_maps(net)
    with torch.inference_mode():
        maps = net.attention_maps(pixels)  # [(B, heads, N, N)] per block
        if spec.method == "rollout":
            matrix = rollout(maps[: last + 1], spec.fusion)  # (B, N, N)
        else:
            matrix = fuse_heads(maps[last].float(), spec.fusion, spec.head)  # (B, N, N)
        rows = readout_rows(matrix, config, spec.readout)  # (B, N)
    p = config.patch_size
    grid = (pixels.shape[-2] // p, pixels.shape[-1] // p)
    return to_grid(rows, config, grid).float().cpu()


def upsample(grid_map: torch.Tensor, patch: int, size: tuple[int, int]) -> torch.Tensor:
    """(B, gh, gw) -> (B, H, W) over the model's input: bilinear, patch centres on patch centres. Pixels
    past the last whole patch (which the model does not see) get 0."""
    B, gh, gw = grid_map.shape
    up = F.interpolate(grid_map[:, None], size=(gh * patch, gw * patch), mode="bilinear",
                       align_corners=False)[:, 0]  # (B, gh*p, gw*p)
    return F.pad(up, (0, size[1] - gw * patch, 0, size[0] - gh * patch))  # (B, H, W)
