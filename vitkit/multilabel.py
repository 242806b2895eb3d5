"""Scores of a multi-label classifier (independent sigmoid scores, several true labels per image): average
precision per class and its mean (mAP), the F1-optimal threshold of each class, and micro / macro F1 at given
thresholds. Used by fine-tuning (model selection, the thresholds stored in the model) and by `vitkit eval`.

Average precision is scikit-learn's `average_precision_score`: the precision at each distinct score, weighted by
the recall it adds (no interpolation). A class without a positive image has no AP (None) and is left out of mAP.

Try it:  python -c "import numpy as np; from vitkit.multilabel import average_precision; \
print(average_precision(np.array([0.9, 0.8, 0.3]), np.array([1, 0, 1])))"
"""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLD = 0.5


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """AP of one class: `scores` (N,), `truth` (N,) 0/1; None without positives."""
    truth = np.asarray(truth, bool)
    if not truth.any():
        return None
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    ranked, hits = np.asarray(scores, np.float64)[order], truth[order]
    last_of_each_score = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # ties count as one threshold
    true_pos = np.cumsum(hits)[last_of_each_score]
    precision = true_pos / (last_of_each_score + 1)
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_class_ap(scores: np.ndarray, truth: np.ndarray) -> list[float | None]:
    """AP of every class of `scores` (N, C) against `truth` (N, C) 0/1."""
    return [average_precision(scores[:, c], truth[:, c]) for c in range(scores.shape[1])]


def mean_ap(aps: list[float | None]) -> float:
    """The mean over classes that have an AP (0.0 when none has)."""
    known = [ap for ap in aps if ap is not None]
    return float(np.mean(known)) if known else 0.0


def f1_optimal_thresholds(probs: np.ndarray, truth: np.ndarray) -> list[float]:
    """Per class, the threshold in [0, 1] whose decisions (prob >= threshold) give the best F1 on these images:
    halfway between the lowest score kept and the next one below (robust to new images' small shifts). A class
    without positives here keeps DEFAULT_THRESHOLD."""
    thresholds = []
    for c in range(probs.shape[1]):
        column, hits = probs[:, c].astype(np.float64), truth[:, c].astype(bool)
        if not hits.any():
            thresholds.append(DEFAULT_THRESHOLD)
            continue
        order = np.argsort(-column, kind="stable")
        ranked, ranked_hits = column[order], hits[order]
        cut = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # keep ranked[:cut + 1]
        true_pos = np.cumsum(ranked_hits)[cut]
        f1 = 2 * true_pos / (cut + 1 + hits.sum())
        best = cut[int(np.argmax(f1))]
        below = ranked[best + 1] if best + 1 < len(ranked) else 0.0
        thresholds.append(float((ranked[best] + below) / 2))
    return thresholds


def f1_scores(probs: np.ndarray, truth: np.ndarray, thresholds: list[float] | tuple[float, ...]) -> dict:
    """{"micro_f1", "macro_f1", "per_class_f1"} of the decisions prob >= threshold (per class)."""
    predicted = probs >= np.asarray(thresholds, np.float64)[None, :]  # (N, C)
    truth = truth.astype(bool)
    true_pos = (predicted & truth).sum(axis=0)
    denominator = predicted.sum(axis=0) + truth.sum(axis=0)  # 2TP + FP + FN
    per_class = [float(2 * tp / d) if d else 1.0 for tp, d in zip(true_pos, denominator)]
    total = denominator.sum()
    return {"micro_f1": float(2 * true_pos.sum() / total) if total else 1.0,
            "macro_f1": float(np.mean(per_class)) if per_class else 0.0, "per_class_f1": per_class}


def label_frequency_map(truth: np.ndarray, train_truth: np.ndarray) -> float:
    """The mAP of a baseline that scores every image by its label's frequency in the training set: constant per
    class, so each class's AP is its positive rate; what a model must beat to have learnt anything from pixels."""
    frequency = np.broadcast_to(train_truth.mean(axis=0), truth.shape)
    return mean_ap(per_class_ap(frequency, truth))
