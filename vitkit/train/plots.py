"""The PNG picture of a run: loss/accuracy curves from log.jsonl. Needs matplotlib (pip install
"vitkit[train]"); without it the picture is skipped with a note, the numbers are not.

Try it:  python -c "from vitkit.train.plots import plot_curves; plot_curves('OUT/log.jsonl', 'curves.png')"
"""

from __future__ import annotations

import json
from pathlib import Path

from vitkit.plotting import pyplot


def plot_curves(log: str | Path, png: str | Path, metric: str = "top-1") -> bool:
    plt = pyplot()
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
    if epochs and "val_score" in epochs[0]:
        right.plot([r["epoch"] + 1 for r in epochs], [r["val_score"] for r in epochs], "o-", label=metric)
        if "val_top5" in epochs[0]:
            right.plot([r["epoch"] + 1 for r in epochs], [r["val_top5"] for r in epochs], "s--", label="top-5")
        right.legend()
    right.set(xlabel="epoch", ylabel=f"validation {metric}", title=metric, ylim=(0, 1.02))
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True
