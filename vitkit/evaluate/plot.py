"""confusion.png: a confusion matrix with class names on both axes, counts written in when it is small.

Try it:  vitkit eval DATA --model M --out report/
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vitkit.plotting import pyplot


def plot_confusion(confusion: list[list[int]], labels: list[str], png: str | Path, title: str) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    matrix = np.array(confusion)
    side = min(2 + 0.35 * len(labels), 24)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues")
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if len(labels) <= 30:
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                        color="white" if value > matrix.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True
