"""Validation during fine-tuning: loss, top-1/top-5, per-class precision and recall, confusion matrix of a
network on labelled images (the checkpoint's eval transform); for a multi-label head, loss, mAP, per-class AP and
the F1-optimal thresholds with the F1 they reach. `vitkit eval` is vitkit.evaluate.

Try it:  python -m pytest tests/test_finetune.py -q
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vitkit.data.workers import die_with_parent
from vitkit.models.vit import VisionTransformer
from vitkit.multilabel import f1_optimal_thresholds, f1_scores, mean_ap, per_class_ap
from vitkit.train.datasets import LabelledImages


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device_type: str, amp: str = "none"):
    """The autocast context of an `--amp` setting: "bf16", "fp16", or anything else (e.g. "none"): plain."""
    dtype = AMP_DTYPES.get(amp)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)


@torch.no_grad()
def evaluate(net: VisionTransformer, dataset: LabelledImages, labels: list[str], batch_size: int,
             device: torch.device, workers: int = 0, amp: str = "none") -> dict:
    was_training = net.training
    net.eval()
    num_classes = len(labels)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # (true, predicted)
    loss_sum, top5_hits, count = 0.0, 0, 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        worker_init_fn=die_with_parent)
    for pixels, targets in loader:
        with autocast(device.type, amp):
            logits = net(pixels.to(device)).float().cpu()
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.topk(min(5, num_classes), dim=-1).indices  # (B, k)
        top5_hits += (top == targets[:, None]).any(dim=-1).sum().item()
        confusion.index_put_((targets, top[:, 0]), torch.ones(len(targets), dtype=torch.int64), accumulate=True)
        count += len(targets)
    net.train(was_training)
    correct = confusion.diag()
    predicted, actual = confusion.sum(dim=0), confusion.sum(dim=1)
    per_class = {name: {"precision": (correct[i] / predicted[i]).item() if predicted[i] else 0.0,
                        "recall": (correct[i] / actual[i]).item() if actual[i] else 0.0,
                        "support": int(actual[i])} for i, name in enumerate(labels)}
    return {"count": count, "loss": loss_sum / max(count, 1), "top1": correct.sum().item() / max(count, 1),
            "top5": top5_hits / max(count, 1), "per_class": per_class, "confusion": confusion.tolist(),
            "labels": list(labels)}


@torch.no_grad()
def evaluate_multi_label(net: VisionTransformer, dataset: LabelledImages, labels: list[str], batch_size: int,
                         device: torch.device, workers: int = 0, amp: str = "none") -> dict:
    """Loss (mean BCE), mAP, per-class AP, and per class the F1-optimal threshold on these images with the
    micro / macro F1 it reaches (optimistic: chosen and scored on the same images)."""
    was_training = net.training
    net.eval()
    probs, truth = [], []
    loss_sum = 0.0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        worker_init_fn=die_with_parent)
    for pixels, targets in loader:  # targets: multi-hot (B, C)
        with autocast(device.type, amp):
            logits = net(pixels.to(device)).float().cpu()
        loss_sum += F.binary_cross_entropy_with_logits(logits, targets, reduction="sum").item()
        probs.append(logits.sigmoid())
        truth.append(targets)
    net.train(was_training)
    scores, hits = torch.cat(probs).numpy(), torch.cat(truth).numpy()  # (N, C) each
    aps = per_class_ap(scores, hits)
    thresholds = f1_optimal_thresholds(scores, hits)
    f1 = f1_scores(scores, hits, thresholds)
    return {"count": len(scores), "loss": loss_sum / max(scores.size, 1), "map": mean_ap(aps),
            "per_class_ap": dict(zip(labels, aps)), "thresholds": thresholds, "micro_f1": f1["micro_f1"],
            "macro_f1": f1["macro_f1"], "labels": list(labels)}
