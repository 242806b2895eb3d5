"""Every setting of a fine-tuning run in one frozen dataclass, saved beside the run and compared on resume.

Try it:  python -c "from vitkit.train.config import TrainConfig; print(TrainConfig(data='d', out='o'))"
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    model: str | None = None  # anything vitkit.load accepts; with arch alone: from scratch
    arch: str | None = None
    image_size: int | None = None
    recipe: Literal["linear-probe", "freeze", "full"] = "full"
    freeze_blocks: int = 0
    head_init: Literal["probe", "random"] = "probe"  # freeze/full start from the linear probe's head (LP-FT)
    views: int = 0  # linear probe: augmented views per training image besides the eval view
    # None / "auto": resolved from the recipe and the data (vitkit.train.defaults), said at the start
    epochs: int | None = None
    batch_size: int | None = None  # global: split across DDP ranks and accumulation steps
    grad_accum: int = 1
    lr: float | None = None  # for the head; earlier layers get lr * layer_decay ** distance
    min_lr: float = 1e-6
    warmup_steps: int | None = None
    weight_decay: float = 0.05
    layer_decay: float | None = None
    label_smoothing: float = 0.1
    drop_path: float = 0.0
    clip_grad: float | None = 1.0
    amp: Literal["bf16", "fp16", "none"] = "none"
    grad_checkpointing: bool = False
    ema: float | None = None
    augment: Literal["auto", "light", "trivial", "rand", "none"] = "auto"
    hflip: float = 0.5  # probability of a horizontal flip (0 for digits, text, ...)
    crop_scale: float | None = None  # smallest area fraction of the random crop of the eval view (1: none)
    mixup: float = 0.0
    cutmix: float = 0.0
    val_split: float | None = 0.1  # used when DATA has no val/ split
    patience: int | None = None  # early stopping: epochs without a better validation top-1
    checkpoint_every: int = 0  # also checkpoint every N optimizer steps (0: at epoch ends only)
    seed: int = 0
    workers: int = 1
    device: str = "auto"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # settings that may differ on resume: where and how fast, not what is computed (DATA is compared as a
    # resolved path, and the classes must match)
    RESUMABLE_CHANGES = ("out", "workers", "device", "patience", "checkpoint_every")
