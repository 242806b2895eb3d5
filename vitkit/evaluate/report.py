"""An evaluation for a person (a compact summary) and for files: report.json (small: scores, per-class rows,
worst classes, confused pairs, published figure), confusion.npy (the full matrix), confusion.png (the most
confused classes only, readable at 1000 classes) and predictions.jsonl (one row per image).

Try it:  vitkit eval DATA --model M --out report/
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from vitkit.checkpoints.io import write_atomic_bytes, write_atomic_text
from vitkit.evaluate.metrics import wilson
from vitkit.evaluate.plot import plot_confusion
from vitkit.evaluate.run import Evaluation

SHOWN = 10
PLOTTED = 30  # classes on confusion.png


def to_dict(ev: Evaluation, model: str) -> dict:
    s, labels = ev.scores, ev.labels
    out = {"model": model, "layout": ev.evalset.layout, "notes": list(ev.evalset.notes), "count": s.count,
           "unreadable": len(ev.unreadable), "unlabelled": ev.evalset.unlabelled,
           "multi_label": ev.evalset.multi_label, "top1": s.top1, "top1_ci95": wilson(s.top1_hits, s.count),
           "top5": s.top5, "top5_ci95": None if s.top5_hits is None else wilson(s.top5_hits, s.count),
           "preprocess": ev.spec.to_dict(), "worst_classes": s.worst_classes(labels, SHOWN),
           "most_confused": s.most_confused(labels, SHOWN),
           "per_class": {str(i): row for i, row in s.per_class(labels).items()}}
    if ev.published:
        name, figure, same = ev.published
        out["published"] = {"model": name, "top1": figure.top1, "top5": figure.top5, "source": figure.source,
                            "same_weights": same, "protocol": figure.protocol.to_dict(),
                            "protocol_differences": ev.protocol_differences()}
    return out


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def summary(ev: Evaluation) -> str:
    s, labels = ev.scores, ev.labels
    lines = [f"scored {ev.evalset.layout}"] + [f"  note: {note}" for note in ev.evalset.notes]
    if ev.unreadable:
        path, reason = next(iter(ev.unreadable.items()))
        lines.append(f"  note: {len(ev.unreadable)} unreadable images left out (e.g. {path}: {reason})")
    low, high = wilson(s.top1_hits, s.count)
    line = f"{s.count} images: top-1 {_pct(s.top1)} (95% CI {_pct(low)}-{_pct(high)})"
    if s.top5 is not None:
        low, high = wilson(s.top5_hits, s.count)
        line += f", top-5 {_pct(s.top5)} ({_pct(low)}-{_pct(high)})"
    lines.append(line + (" [ReaL: any of an image's labels counts]" if ev.evalset.multi_label else ""))
    if ev.published:
        name, figure, same = ev.published
        top5 = f", top-5 {figure.top5:.2f}%" if figure.top5 is not None else ""
        whose = "" if same else " (these weights are not known to be that checkpoint: the figure is its architecture's)"
        lines.append(f"published for {name}: top-1 {figure.top1:.2f}%{top5} on the 50,000 ImageNet-1k validation "
                     f"images ({figure.source}){whose}")
        differences = ev.protocol_differences()
        lines.append(("  protocol differs: " + "; ".join(differences) + " (--protocol published uses theirs)")
                     if differences else "  same protocol as the published figure")
    worst = s.worst_classes(labels, SHOWN)
    if worst:
        lines.append("worst classes: " + ", ".join(f"{w['label']} [{w['index']}] {w['recall']:.0%} of {w['support']}"
                                                 for w in worst))
    confused = s.most_confused(labels, SHOWN)
    if confused:
        lines.append("most confused: " + ", ".join(f"{c['true_label']} -> {c['predicted_label']} x{c['count']}"
                                                 for c in confused))
    return "\n".join(lines)


def write(ev: Evaluation, model: str, folder: str | Path) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic_text(json.dumps(to_dict(ev, model), indent=1) + "\n", folder / "report.json")
    matrix = io.BytesIO()
    np.save(matrix, ev.scores.confusion)
    write_atomic_bytes(matrix.getvalue(), folder / "confusion.npy")
    write_atomic_text("".join(json.dumps(row) + "\n" for row in ev.predictions), folder / "predictions.jsonl")
    written = [folder / "report.json", folder / "confusion.npy", folder / "predictions.jsonl"]
    if _plot(ev, folder / "confusion.png"):
        written.append(folder / "confusion.png")
    return written


def _plot(ev: Evaluation, png: Path) -> bool:
    """The confusion matrix of the classes with the most errors (all of them when there are few)."""
    matrix = ev.scores.confusion
    present = np.flatnonzero(matrix.sum(0) + matrix.sum(1))
    errors = matrix.sum(0) + matrix.sum(1) - 2 * np.diag(matrix)
    if len(present) > PLOTTED:
        present = np.sort(present[np.argsort(-errors[present], kind="stable")[:PLOTTED]])
    sub = matrix[np.ix_(present, present)].tolist()
    title = "confusion matrix" if len(present) == len(np.flatnonzero(matrix.sum(1))) else \
        f"confusion among the {len(present)} most confused classes"
    return plot_confusion(sub, [ev.labels[i] for i in present], png, title)
