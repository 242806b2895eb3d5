"""PNG pictures of a run: loss/accuracy curves from log.jsonl, and a confusion matrix. Needs matplotlib
(pip install "vitkit[train]"); without it the pictures are skipped with a note, the numbers are not.

Try it:  python -c "from vitkit.train.plots import plot_curves; plot_curves('OUT/log.jsonl', 'curves.png')"
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('note: no PNG written (matplotlib missing: pip install "vitkit[train]")', file=sys.stderr)
        return None
    return plt


def plot_curves(log: str | Path, png: str | Path) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    rows = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, label="train (step)")
    if epochs and "val_loss" in epochs[0]:
        left.plot([r["step"] for r in epochs], [r["val_loss"] for r in epochs], "o-", label="validation")
    left.set(xlabel="optimizer step", ylabel="loss", title="loss")
    left.legend()
    if epochs and "val_top1" in epochs[0]:
        right.plot([r["epoch"] + 1 for r in epochs], [r["val_top1"] for r in epochs], "o-", label="top-1")
        right.plot([r["epoch"] + 1 for r in epochs], [r["val_top5"] for r in epochs], "s--", label="top-5")
        right.legend()
    right.set(xlabel="epoch", ylabel="validation accuracy", title="accuracy", ylim=(0, 1.02))
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def plot_confusion(confusion: list[list[int]], labels: list[str], png: str | Path) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    import numpy as np

    matrix = np.array(confusion)
    side = min(2 + 0.35 * len(labels), 24)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    if len(labels) <= 30:
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                        color="white" if value > matrix.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True
