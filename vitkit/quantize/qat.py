"""Quantization-aware fine-tuning for `vitkit quantize --qat DATA`: when post-training INT8 loses too much, tune the
float network through the INT8 graph's own rounding (vitkit.int8.fake_quant), with the fp32 network as its teacher,
so that it learns weights that survive the rounding.

    student    a copy of the network with the recipe's SmoothQuant scales folded in (from the calibration pixels, as
               the post-training graph gets them), rounded at exactly the recipe's integer layers: the same bit
               widths, per-channel / per-tensor scales, 7-bit weights where the graph gets them, float islands;
               straight-through gradients
    ranges     dynamic recipes (the default): each image's own range at every call, as the graph computes them, so
               there is nothing to calibrate or learn; static: calibrated on the float student before tuning and
               kept fixed while tuning (the graph is calibrated again on the tuned weights when it is built)
    loss       KL(teacher || student) on the logits (temperature 1) + (1 - cosine) between the two networks'
               embeddings (the head's input), + ce_weight (0.1) x cross-entropy with the labels when DATA has them
               (labels.csv or class sub-folders, read as --eval reads them). Measured on the real DeiT-Tiny, 60 steps
               of 8 on 50 photos, 50 others held out (one image = 2 points): post-training 98% agreement, embedding
               cosine 0.998; labels at weight 1 pulled the embeddings away from fp32 (cosine 0.991-0.992, agreement
               96-98%), at 0.1 the cosine stayed 0.998 (agreement 96%); without labels agreement 100%, cosine 0.998;
               accuracy 78% in every case
    data       DATA's images (evaluation images left out): one random crop (30-100% of the area, half mirrored) per
               image and step, preprocessed as the model's; the order and crops follow the seed
    optimiser  AdamW without weight decay (the fp32 weights are the target), warm-up over 10% of the steps then
               cosine to zero, gradient norm clipped at 1; eval mode throughout (no dropout, no drop path)

`tune` returns the tuned network (SmoothQuant folded in already: build its graph with smooth_alpha=None) and the
record of what was done (steps, lr, batch size, seed, a digest of the data, the losses), which the recipe keeps.

Try it:  python -m pytest tests/test_qat.py -q
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vitkit.data.decode import decode_image
from vitkit.data.transforms import preprocess_batch
from vitkit.int8.build import smoothed
from vitkit.int8.fake_quant import calibrated_ranges, fake_quantized
from vitkit.int8.recipe import Recipe
from vitkit.quantize.data import eval_set, random_view

WARMUP = 0.1  # of the steps
CLIP_NORM = 1.0


@dataclass(frozen=True)
class QATOptions:
    """What `vitkit quantize --qat DATA` tunes with (the flags --qat-steps, --qat-lr, --qat-batch-size, --seed)."""

    data: str
    steps: int = 300
    lr: float = 1e-5
    batch_size: int = 16
    seed: int = 0
    ce_weight: float = 0.1  # of the cross-entropy with DATA's labels, beside the distillation terms (weight 1 each)
    device: str = "cpu"
    log_every: int = 25


@dataclass
class _Data:
    paths: list[str]
    targets: list[int] | None
    labels_from: str
    left_out: int


def _training_images(options: QATOptions, labels, exclude) -> _Data:
    found = eval_set(options.data, labels)
    gone = {str(Path(p).resolve()) for p in exclude}
    keep = [i for i, p in enumerate(found.paths) if str(Path(p).resolve()) not in gone]
    if not keep:
        raise ValueError(f"no images to tune on in {options.data}" + (" (all are evaluation images)" if gone else ""))
    targets = None if found.targets is None else [found.targets[i] for i in keep]
    return _Data([found.paths[i] for i in keep], targets, found.labels_from, len(found.paths) - len(keep))


def data_digest(paths: list[str], targets: list[int] | None) -> str:
    """sha256 over the images' bytes (in path order) and their labels: which data tuned the model."""
    digest = hashlib.sha256()
    for i in sorted(range(len(paths)), key=lambda i: paths[i]):
        digest.update(hashlib.sha256(Path(paths[i]).read_bytes()).digest())
        digest.update(b"-" if targets is None else str(targets[i]).encode())
    return digest.hexdigest()


def _order(count: int, rng: random.Random):
    """Image indices forever: a fresh seeded permutation per pass over the data."""
    while True:
        indices = list(range(count))
        rng.shuffle(indices)
        yield from indices


def _lr_factor(step: int, steps: int) -> float:
    warm = max(1, round(WARMUP * steps))
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def _outputs(net, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, C), embedding (B, D')) from one pass through the blocks."""
    tokens = net.forward_features(pixels)  # (B, T, D)
    return net.forward_head(tokens), net.forward_head(tokens, pre_logits=True)


def _loss(student: tuple[torch.Tensor, torch.Tensor], teacher: tuple[torch.Tensor, torch.Tensor],
          targets: torch.Tensor | None, ce_weight: float) -> dict[str, torch.Tensor]:
    """The weighted terms, summed by the caller."""
    (logits, embedding), (wanted_logits, wanted_embedding) = student, teacher
    parts = {"kl": F.kl_div(F.log_softmax(logits, -1), F.log_softmax(wanted_logits, -1), log_target=True,
                            reduction="batchmean"),
             "cos": (1 - F.cosine_similarity(embedding, wanted_embedding, dim=-1)).mean()}
    if targets is not None:
        parts["ce"] = ce_weight * F.cross_entropy(logits, targets)
    return parts


def tune(net, spec, recipe: Recipe, calibration: torch.Tensor | None, options: QATOptions, labels,
         exclude: Sequence[str] = (), log=None):
    """-> (the tuned network on the CPU, SmoothQuant folded in; the record for the recipe). `net` is untouched;
    `exclude`: images never to tune on (the evaluation images)."""
    say = log or (lambda msg: None)
    if not net.config.num_classes:
        raise ValueError("--qat distils the classifier's logits: this model has no classification head")
    if getattr(net.config, "multi_label", False):
        raise ValueError("--qat distils softmax classifiers; this model's head gives independent sigmoid scores")
    data = _training_images(options, labels, exclude)
    device = torch.device(options.device)
    work = smoothed(net, recipe, calibration)
    student = (copy.deepcopy(net) if work is net else work).to(device).eval().requires_grad_(True)
    teacher = copy.deepcopy(net).to(device).eval().requires_grad_(False)
    ranges = None
    if recipe.method == "static":
        ranges = calibrated_ranges(student, recipe, [calibration[i:i + 32].to(device)
                                                     for i in range(0, len(calibration), 32)])
    optimizer = torch.optim.AdamW(student.parameters(), lr=options.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, options.steps))
    rng = random.Random(options.seed)
    order = _order(len(data.paths), rng)
    say(f"qat: {options.steps} steps of {options.batch_size} on {len(data.paths)} images of {options.data} "
        f"(labels: {data.labels_from}), lr {options.lr:g}, on {device}")
    losses, started = [], time.perf_counter()
    with fake_quantized(student, recipe, ranges):
        for step in range(options.steps):
            batch = [next(order) for _ in range(options.batch_size)]
            pixels = preprocess_batch([random_view(decode_image(data.paths[i]), rng) for i in batch], spec).to(device)
            targets = None if data.targets is None else torch.tensor([data.targets[i] for i in batch], device=device)
            with torch.no_grad():
                wanted = _outputs(teacher, pixels)
            parts = _loss(_outputs(student, pixels), wanted, targets, options.ce_weight)
            loss = sum(parts.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), CLIP_NORM)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if (step + 1) % options.log_every == 0 or step + 1 == options.steps:
                spent = time.perf_counter() - started
                say(f"qat: step {step + 1}/{options.steps} loss {losses[-1]:.4f} ("
                    + ", ".join(f"{k} {float(v.detach()):.4f}" for k, v in parts.items())
                    + f"), {spent / (step + 1):.2f} s/step")
    record = _record(options, recipe, data, losses, device, time.perf_counter() - started)
    return student.cpu().eval().requires_grad_(False), record


def _record(options: QATOptions, recipe: Recipe, data: _Data, losses: list[float], device, seconds: float) -> dict:
    """What the recipe keeps of the tuning (the INT8 file's metadata, the report)."""
    tail = max(1, len(losses) // 10)
    return {"steps": options.steps, "lr": options.lr, "batch_size": options.batch_size, "seed": options.seed,
            "optimizer": "AdamW, no weight decay, 10% warm-up then cosine",
            "loss": "KL(fp32 || QAT) on logits + (1 - cosine) of the embeddings"
                    + ("" if data.targets is None else f" + {options.ce_weight:g} x cross-entropy with the labels"),
            "activation_ranges": ("each image's own, at run time (dynamic INT8): nothing to learn"
                                  if recipe.method == "dynamic" else
                                  "calibrated on the calibration images before tuning, fixed while tuning"),
            "smoothquant": "folded in before tuning" if recipe.smooth_alpha is not None else None,
            "data": {"source": str(options.data), "images": len(data.paths), "labels_from": data.labels_from,
                     "evaluation_images_left_out": data.left_out, "sha256": data_digest(data.paths, data.targets)},
            "loss_first": round(sum(losses[:tail]) / tail, 5), "loss_last": round(sum(losses[-tail:]) / tail, 5),
            "device": str(device), "seconds": round(seconds, 1)}
