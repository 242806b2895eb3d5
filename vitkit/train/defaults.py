"""Settings left unset (None / "auto") resolve from the recipe and the data, and are said in one line.

    batch size     32, or the training set's size when it is smaller
    lr             a per-recipe base rate for batch 256, scaled linearly with the batch size
    layer decay    0.75 for `full` (the blocks nearest the input move least), else 1 (no decay)
    epochs         10, or more when 10 epochs would be fewer than MIN_STEPS optimizer steps (small folders),
                   capped at MAX_EPOCHS
    warm-up        10% of the optimizer steps
    augment        light (random crops of 70-100% of the eval view, flips) below AUGMENT_LIGHT_BELOW training
                   images, TrivialAugment (and crops down to 8%) above; `none` keeps the eval view
Whatever the user sets wins. A schedule that is too short to learn anything gets a warning.

Try it:  python -c "from vitkit.train.config import TrainConfig; from vitkit.train.defaults import resolve; \
print(resolve(TrainConfig(data='d', out='o'), train_images=400).line)"
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from vitkit.train.config import TrainConfig

BASE_LR = {"full": 5e-4, "freeze": 1e-3, "linear-probe": 0.0}  # AdamW, batch 256; the probe is solved
LAYER_DECAY = {"full": 0.75}
EPOCHS = 10
MIN_STEPS = 100
MAX_EPOCHS = 100
WARMUP_FRACTION = 0.1
SHORT_SCHEDULE = 30  # fewer optimizer steps than this rarely move a pretrained network anywhere useful
AUGMENT_LIGHT_BELOW = 5000
CROP_SCALE = {"none": 1.0, "light": 0.7, "trivial": 0.08, "rand": 0.08}


@dataclass(frozen=True)
class Resolved:
    cfg: TrainConfig  # every setting a number or a name
    line: str  # what was chosen, for the user
    warnings: tuple[str, ...]


def resolve(cfg: TrainConfig, train_images: int, world: int = 1) -> Resolved:
    """`cfg` with every None / "auto" setting filled from the recipe and the number of training images."""
    chosen, notes, warnings = {}, [], []
    probe_only = cfg.recipe == "linear-probe"
    if cfg.model is None and cfg.head_init == "probe" and not probe_only:
        chosen["head_init"] = "random"  # from scratch: random features are not worth a probe
    batch = cfg.batch_size
    if batch is None:
        step = world * cfg.grad_accum
        batch = max(step, min(32, train_images) // step * step)
        chosen["batch_size"] = batch
    if probe_only:
        chosen.update(epochs=0, lr=0.0, warmup_steps=0, layer_decay=1.0)
        if cfg.epochs:
            warnings.append("--epochs is not used by --recipe linear-probe: the head is solved, not trained")
    steps_per_epoch = max(1, train_images // batch)
    epochs = cfg.epochs
    if epochs is None and not probe_only:
        epochs = min(MAX_EPOCHS, max(EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch)))
        chosen["epochs"] = epochs
    if cfg.lr is None and not probe_only:
        chosen["lr"] = BASE_LR[cfg.recipe] * batch / 256
    if cfg.layer_decay is None and not probe_only:
        chosen["layer_decay"] = LAYER_DECAY.get(cfg.recipe, 1.0)
    total = steps_per_epoch * (epochs or 0)
    if cfg.warmup_steps is None and not probe_only:
        chosen["warmup_steps"] = math.ceil(WARMUP_FRACTION * total)
    augment = cfg.augment
    if augment == "auto":
        augment = "light" if train_images < AUGMENT_LIGHT_BELOW else "trivial"
        chosen["augment"] = augment
    if cfg.crop_scale is None:
        chosen["crop_scale"] = CROP_SCALE[augment]
    out = dataclasses.replace(cfg, **chosen)
    if not probe_only and total < SHORT_SCHEDULE:
        warnings.append(f"{total} optimizer steps ({out.epochs} epochs of {steps_per_epoch}) is too short to "
                        f"learn much; leave --epochs unset for at least {MIN_STEPS}")
    if probe_only:
        notes.append(f"linear probe (solved by L-BFGS), batch {out.batch_size} for the feature pass")
    else:
        notes.append(f"lr {out.lr:.3g} (batch {out.batch_size})")
        notes.append(f"layer decay {out.layer_decay:g}" if out.layer_decay != 1 else "no layer decay")
        notes.append(f"warmup {out.warmup_steps} steps, {out.epochs} epochs = {total} steps")
        notes.append(f"augment {out.augment}, crop scale {out.crop_scale:g}, flip {out.hflip:g}")
        notes.append("head from a linear probe" if out.head_init == "probe" else "random head")
    return Resolved(out, ", ".join(notes), tuple(warnings))
