"""Scores of a classifier on an evaluation set: top-1 / top-5 with 95% Wilson intervals, per-class recall and
precision, the worst classes and the most confused pairs, and the confusion matrix. A prediction is right
when it is one of the image's accepted classes (one for single-label sets, several for ImageNet-ReaL).

Try it:  python -m pytest tests/test_eval_layouts.py -q
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


def wilson(hits: int, count: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default): sound at 0%, 100% and small counts."""
    if not count:
        return 0.0, 1.0
    p = hits / count
    centre = (p + z * z / (2 * count)) / (1 + z * z / count)
    half = z * math.sqrt(p * (1 - p) / count + z * z / (4 * count * count)) / (1 + z * z / count)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Scores:
    count: int
    top1_hits: int
    top5_hits: int | None  # None: 5 classes or fewer (top-5 means nothing)
    confusion: np.ndarray  # (C, C) int64, [true, predicted]; for multi-label sets, the first accepted class
    num_classes: int

    @property
    def top1(self) -> float:
        return self.top1_hits / max(self.count, 1)

    @property
    def top5(self) -> float | None:
        return None if self.top5_hits is None else self.top5_hits / max(self.count, 1)

    def per_class(self, labels: tuple[str, ...]) -> dict[int, dict]:
        """Classes with images: recall (the class's accuracy), precision, support."""
        correct, actual, predicted = np.diag(self.confusion), self.confusion.sum(1), self.confusion.sum(0)
        return {int(i): {"label": labels[i], "support": int(actual[i]), "recall": float(correct[i] / actual[i]),
                         "precision": float(correct[i] / predicted[i]) if predicted[i] else 0.0}
                for i in np.flatnonzero(actual)}

    def worst_classes(self, labels: tuple[str, ...], k: int = 10) -> list[dict]:
        rows = self.per_class(labels)
        order = sorted(rows, key=lambda i: (rows[i]["recall"], -rows[i]["support"], i))
        return [{"index": i, **rows[i]} for i in order[:k] if rows[i]["recall"] < 1.0]

    def most_confused(self, labels: tuple[str, ...], k: int = 10) -> list[dict]:
        off = self.confusion.copy()
        np.fill_diagonal(off, 0)
        flat = np.argsort(-off, axis=None, kind="stable")[:k]
        pairs = [np.unravel_index(i, off.shape) for i in flat]
        return [{"true": int(t), "true_label": labels[t], "predicted": int(p), "predicted_label": labels[p],
                 "count": int(off[t, p])} for t, p in pairs if off[t, p]]


def score(top5: np.ndarray, targets: list[tuple[int, ...]], num_classes: int) -> Scores:
    """top5: (N, k) predicted class indices, best first (k = min(5, C)); targets: accepted classes per image."""
    if len(top5) != len(targets):
        raise ValueError(f"{len(top5)} predictions for {len(targets)} images")
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    top1_hits = top5_hits = 0
    for predicted, right in zip(top5, targets):
        accepted = set(right)
        top1_hits += int(predicted[0]) in accepted
        top5_hits += bool(accepted.intersection(int(p) for p in predicted))
        truth = int(predicted[0]) if int(predicted[0]) in accepted else right[0]
        confusion[truth, int(predicted[0])] += 1
    return Scores(len(targets), top1_hits, top5_hits if num_classes > 5 else None, confusion, num_classes)
