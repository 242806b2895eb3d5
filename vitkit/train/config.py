"""Every setting of a fine-tuning run in one frozen dataclass, saved beside the run and compared on resume.
Each field carries its command-line flag (type, range, help): `vitkit finetune`'s flags are made from them
(`add_arguments`, `from_arguments`), so the two cannot drift apart.

Try it:  python -c "from vitkit.train.config import TrainConfig; print(TrainConfig(data='d', out='o'))"
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Literal

from vitkit import arguments as A

AUTO = " (default: chosen from the recipe and the data, and printed)"
FROM_MODEL_ARGS = ("data", "out", "model", "arch", "image_size", "device")  # flags the CLI defines itself


def option(default, help: str, type=None, choices: tuple | None = None, zero_off: bool = False):
    """A field with its flag: `type` parses and range-checks the value, `zero_off` maps 0 on the command line
    to None (off)."""
    return dataclasses.field(default=default, metadata={"help": help, "type": type, "choices": choices,
                                                        "zero_off": zero_off})


@dataclass(frozen=True)
class TrainConfig:
    data: str
    out: str
    model: str | None = None  # anything vitkit.load accepts; with arch alone: from scratch
    arch: str | None = None
    image_size: int | None = None
    recipe: Literal["linear-probe", "freeze", "full"] = option(
        "full", "linear-probe: solve a new head on frozen features; freeze / full: start from that head, then "
        "fine-tune (the last blocks / all of them)", choices=("linear-probe", "freeze", "full"))
    freeze_blocks: int = option(0, "with --recipe freeze: blocks kept fixed", A.NON_NEGATIVE)
    head_init: Literal["probe", "random"] = option(
        "probe", "freeze/full: start from the linear probe's head or a random one", choices=("probe", "random"))
    views: int = option(0, "linear probe: augmented views of each training image besides the plain one",
                        A.int_in(0, 64))
    # None / "auto": resolved from the recipe and the data (vitkit.train.defaults), said at the start
    epochs: int | None = option(None, "epochs" + AUTO, A.int_in(0, 100_000))
    batch_size: int | None = option(None, "global batch (all ranks, all accumulation)" + AUTO, A.BATCH)
    grad_accum: int = option(1, "micro-batches per optimizer step", A.int_in(1, 1024))
    lr: float | None = option(None, "peak learning rate of the head; earlier layers get lr * layer_decay ** "
                              "distance" + AUTO, A.float_in(0.0, 10.0))
    min_lr: float = option(1e-6, "learning rate at the end of the cosine", A.float_in(0.0, 10.0))
    warmup_steps: int | None = option(None, "linear warm-up" + AUTO, A.NON_NEGATIVE)
    weight_decay: float = option(0.05, "AdamW weight decay (none on biases, norms, tokens, positions)",
                                 A.float_in(0.0, 10.0))
    layer_decay: float | None = option(None, "layer-wise LR decay, e.g. 0.65" + AUTO,
                                       A.float_in(0.0, 1.0, low_open=True))
    multi_label: bool = option(False, "several labels per image (DATA a manifest: path,labels with a|b, or one 0/1 "
                               "column per class): sigmoid outputs, per-class thresholds tuned F1-optimal on val")
    multi_label_loss: Literal["bce", "asl"] = option(
        "bce", "with --multi-label: binary cross-entropy, or the asymmetric loss (ASL: down-weights easy negatives, "
        "for many labels per image and rare positives)", choices=("bce", "asl"))
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy (single-label)", A.float_in(0.0, 0.99))
    drop_path: float = option(0.0, "stochastic depth rate of the last block", A.float_in(0.0, 0.99))
    clip_grad: float | None = option(1.0, "max gradient norm (0: off)", A.float_in(0.0, 1e6), zero_off=True)
    amp: Literal["bf16", "fp16", "none"] = option("none", "mixed precision (fp16: GPU only)",
                                                  choices=("bf16", "fp16", "none"))
    grad_checkpointing: bool = option(False, "recompute activations in the backward pass: less memory")
    ema: float | None = option(None, "keep an exponential moving average, e.g. 0.9998",
                               A.float_in(0.0, 1.0, low_open=True))
    augment: Literal["auto", "light", "trivial", "rand", "none"] = option(
        "auto", "light: random crops (of 70-100%% of the eval view) and flips; trivial/rand: TrivialAugment/"
        "RandAugment ops, crops down to 8%%; none: no ops, no crops unless --crop-scale" + AUTO,
        choices=("auto", "light", "trivial", "rand", "none"))
    hflip: float = option(0.5, "horizontal flip probability (0 for digits, text)", A.FRACTION)
    crop_scale: float | None = option(None, "smallest area fraction of the random crop of the eval view "
                                      "(1: no crop)" + AUTO, A.float_in(0.0, 1.0, low_open=True))
    mixup: float = option(0.0, "mixup alpha (0: off)", A.float_in(0.0, 100.0))
    cutmix: float = option(0.0, "cutmix alpha (0: off)", A.float_in(0.0, 100.0))
    val_split: float | None = option(0.1, "fraction of each class held out when DATA has no val/ (0: none)",
                                     A.float_in(0.0, 0.9), zero_off=True)
    patience: int | None = option(None, "stop after this many epochs without a better val top-1", A.COUNT)
    checkpoint_every: int = option(0, "also checkpoint every N optimizer steps (0: at epoch ends only)",
                                   A.NON_NEGATIVE)
    seed: int = option(0, "seed of the sample order, the augmentation and the new head", A.NON_NEGATIVE)
    workers: int = option(1, "decode processes beside the model", A.WORKERS)
    device: str = "auto"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # settings that may differ on resume: where and how fast, not what is computed (DATA is compared as a
    # resolved path, and the classes must match)
    RESUMABLE_CHANGES = ("out", "workers", "device", "patience", "checkpoint_every")


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """`vitkit distill`: a fine-tuning run whose targets come from a teacher (vitkit.train.distill)."""

    teacher: str | None = option(None, "the teacher: anything vitkit.load accepts (required)")
    teacher_arch: str | None = option(None, "the teacher's architecture, when its weights file does not say")
    temperature: float = option(1.0, "softmax temperature of the KL term (1: the teacher's own probabilities)",
                                A.float_in(0.05, 100.0))
    hard_weight: float | None = option(None, "weight of the cross-entropy with DATA's own labels, beside 1 - it "
                                       "for the teacher's (default: 0.5 with labels, 0 without)", A.FRACTION)
    teacher_views: int = option(4, "augmented views per training image whose teacher logits are computed once "
                                "and cached; epoch e trains on view 1 + e mod N", A.int_in(1, 64))


def add_arguments(parser: argparse.ArgumentParser, config: type = TrainConfig) -> None:
    """One flag per field of `config` (but those the CLI gives every model command), from the field's `option`."""
    for f in dataclasses.fields(config):
        if f.name in FROM_MODEL_ARGS:
            continue
        meta, flag = f.metadata, "--" + f.name.replace("_", "-")
        if f.default is False:
            parser.add_argument(flag, action="store_true", help=meta["help"])
        else:
            parser.add_argument(flag, type=meta["type"], choices=meta["choices"], default=f.default,
                                help=meta["help"])


def from_arguments(args: argparse.Namespace, config: type = TrainConfig) -> TrainConfig:
    values = {}
    for f in dataclasses.fields(config):
        value = getattr(args, f.name)
        values[f.name] = None if f.metadata.get("zero_off") and value == 0 else value
    return config(**values)
