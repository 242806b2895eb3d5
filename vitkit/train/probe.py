"""The linear probe: multinomial logistic regression on frozen features, solved, not trained.

Features are standardised (mean 0, std 1 per dimension, from the training rows); for each L2 strength of a
grid, full-batch L-BFGS minimises  mean cross-entropy + l2 / 2 * ||W||^2  (scikit-learn's
LogisticRegression with C = 1 / (l2 * n)), warm-started from the next-stronger strength. The strength is
chosen by validation top-1 (ties: the stronger L2, the less over-confident head), or by k-fold
cross-validation when there is no validation split, and the chosen head is refitted with the
standardisation folded into it, so it applies to raw features: logits = x @ weight.T + bias.

With `label_smoothing`, the cross-entropy is the fine-tuning loss's (smoothed targets): the head that starts
a fine-tuning run (LP-FT) is then at that loss's optimum on the frozen features, not an over-confident head
whose logits the smoothing would first have to shrink by rewriting the features.

Multi-label (`targets` multi-hot (N, C)): one logistic regression per class (scikit-learn's one-vs-rest), the
loss the sum over classes of the mean binary cross-entropy, the strength chosen by validation mAP.

Try it:  python -m pytest tests/test_probe.py -q
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vitkit.multilabel import mean_ap, per_class_ap

L2_GRID = tuple(10.0 ** (k / 2) for k in range(-12, 3))  # 1e-6 ... 10, half a decade apart
FOLDS = 5


@dataclass(frozen=True)
class GridPoint:
    l2: float
    score: float  # top-1 (mAP for multi-label) on the validation split, or the mean over folds
    loss: float  # mean cross-entropy there, without the penalty


@dataclass(frozen=True)
class Objective:
    """What the probe minimises (without its penalty) and how a head is scored: single- or multi-label."""

    metric: str  # "top-1" or "mAP"
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits (N, C), targets) -> scalar
    score: Callable[[torch.Tensor, torch.Tensor], float]
    multi_label: bool


def single_label(label_smoothing: float = 0.0) -> Objective:
    return Objective("top-1", lambda z, y: F.cross_entropy(z, y.long(), label_smoothing=label_smoothing),
                     lambda z, y: (z.argmax(dim=-1) == y).double().mean().item(), False)


def _summed_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="sum") / len(logits)


MULTI_LABEL = Objective("mAP", _summed_bce,
                        lambda z, y: mean_ap(per_class_ap(z.numpy(), y.numpy())), True)


@dataclass(frozen=True)
class Probe:
    weight: torch.Tensor  # (C, D), for raw (unstandardised) features
    bias: torch.Tensor  # (C,)
    l2: float
    grid: tuple[GridPoint, ...]
    selection: str  # "validation" or "5-fold cross-validation"

    metric: str = "top-1"  # what `score` is: "top-1", or "mAP" for a multi-label head

    @property
    def chosen(self) -> GridPoint:
        return next(point for point in self.grid if point.l2 == self.l2)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.float() @ self.weight.T + self.bias  # (N, C)

    def describe(self) -> str:
        values = ", ".join(f"{p.l2:.0e}: {p.score:.1%}" for p in self.grid)
        return (f"linear probe: L2 strength by {self.selection} {self.metric} over [{values}]; chosen "
                f"{self.l2:.0e} ({self.metric} {self.chosen.score:.1%})")


class Standardizer:
    """Per-dimension mean and std of the training features (std floored: constant dimensions stay 0)."""

    def __init__(self, features: torch.Tensor):
        features = features.double()
        self.mean = features.mean(dim=0)  # (D,)
        self.std = features.std(dim=0, unbiased=False).clamp_min(1e-6)  # (D,)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return (features.double() - self.mean) / self.std

    def fold(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head on standardised features as a head on raw ones: W' = W / std, b' = b - W' @ mean."""
        raw = weight / self.std
        return raw, bias - raw @ self.mean


def fit_logistic(features: torch.Tensor, targets: torch.Tensor, num_classes: int, l2: float,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None, objective: Objective | None = None,
                 max_iter: int = 1000, tolerance: float = 1e-7) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (C, D), bias (C,)) minimising the objective's loss (default: mean CE) + l2 / 2 * ||weight||^2 (the
    bias is not penalised), by full-batch L-BFGS with a strong-Wolfe line search. float64 on the CPU: tiny
    problems, exact answers."""
    objective = objective or single_label()
    x = features.double()  # (N, D)
    y = targets.double() if objective.multi_label else targets.long()
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
    bias = torch.zeros(num_classes, dtype=torch.float64)
    if init is not None:
        weight.copy_(init[0])
        bias.copy_(init[1])
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    solver = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                               tolerance_grad=tolerance, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def penalised() -> torch.Tensor:
        solver.zero_grad()
        loss = objective.loss(x @ weight.T + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    solver.step(penalised)
    return weight.detach(), bias.detach()


def _score(weight, bias, features, targets, objective: Objective) -> tuple[float, float]:
    logits = features.double() @ weight.T + bias  # (N, C)
    plain = MULTI_LABEL if objective.multi_label else single_label()  # the loss reported: unsmoothed
    return objective.score(logits, targets), plain.loss(logits, targets).item()


def _sweep(train_x, train_y, val_x, val_y, num_classes, grid, objective) -> list[tuple[float, float]]:
    """(score, loss) on the validation rows for each L2 strength, strongest first, warm-started."""
    scores, init = {}, None
    for l2 in sorted(grid, reverse=True):
        init = fit_logistic(train_x, train_y, num_classes, l2, init, objective)
        scores[l2] = _score(*init, val_x, val_y, objective)
    return [scores[l2] for l2 in grid]


def _folds(targets: torch.Tensor, folds: int) -> list[torch.Tensor]:
    """Fold membership: stratified for class indices (each class's rows dealt round-robin in their given order),
    round-robin over the rows for multi-hot targets."""
    if targets.dim() == 2:
        fold_of = torch.arange(len(targets)) % folds
        return [fold_of == k for k in range(folds)]
    fold_of = torch.empty(len(targets), dtype=torch.long)
    for label in targets.unique():
        rows = (targets == label).nonzero().flatten()
        fold_of[rows] = torch.arange(len(rows)) % folds
    return [fold_of == k for k in range(folds)]


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int,
              val_x: torch.Tensor | None = None, val_y: torch.Tensor | None = None,
              grid: tuple[float, ...] = L2_GRID, folds: int = FOLDS, label_smoothing: float = 0.0) -> Probe:
    """The probe on (N, D) training features: L2 strength chosen on the validation rows when given, else by
    `folds`-fold cross-validation on the training rows; the head is fitted on the training rows. `train_y`:
    class indices (N,), or multi-hot (N, C) for a multi-label head (then `label_smoothing` is not used)."""
    multi_label = train_y.dim() == 2
    objective = MULTI_LABEL if multi_label else single_label(label_smoothing)
    if not multi_label and len(train_y.unique()) < 2:
        raise ValueError("a linear probe needs training images of at least two classes")
    scale = Standardizer(train_x)
    x = scale(train_x)
    if val_x is not None and len(val_x):
        results = _sweep(x, train_y, scale(val_x), val_y, num_classes, grid, objective)
        selection = "validation"
    else:
        smallest = len(train_y) if multi_label else int(torch.bincount(train_y).min())
        k = max(2, min(folds, smallest))
        if smallest < 2:
            raise ValueError("choosing the L2 strength without a validation split needs 2+ images per class")
        per_fold = []
        for held in _folds(train_y, k):
            fold_scale = Standardizer(train_x[~held])
            per_fold.append(_sweep(fold_scale(train_x[~held]), train_y[~held], fold_scale(train_x[held]),
                                   train_y[held], num_classes, grid, objective))
        results = [(sum(f[i][0] for f in per_fold) / k, sum(f[i][1] for f in per_fold) / k)
                   for i in range(len(grid))]
        selection = f"{k}-fold cross-validation"
    points = tuple(GridPoint(l2, score, loss) for l2, (score, loss) in zip(grid, results))
    best = max(points, key=lambda p: (round(p.score, 9), p.l2))
    weight, bias = fit_logistic(x, train_y, num_classes, best.l2, objective=objective)
    weight, bias = scale.fold(weight, bias)
    return Probe(weight.float(), bias.float(), best.l2, points, selection, objective.metric)
