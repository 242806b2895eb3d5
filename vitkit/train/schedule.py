"""Learning rate per optimizer step: linear warmup from 0, then cosine down to `min_lr`. A pure function of
the step, so a resumed run only needs the step count.

Try it:  python -c "from vitkit.train.schedule import lr_at; print([round(lr_at(s, 1e-3, 10, 100), 6) for s in (0, 5, 10, 55, 100)])"
"""

from __future__ import annotations

import math

import torch


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """`step` counts optimizer steps from 0; the rate used for the step about to be taken."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Applies `lr` to every group, scaled by the group's layer-wise `lr_scale`."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
