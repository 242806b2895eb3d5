"""`vitkit eval` of a multi-label model (finetune --multi-label) on a multi-label manifest (vitkit.data.tagged):
mAP and per-class AP of the sigmoid scores, micro / macro and per-class F1 of the decisions at the model's stored
thresholds, beside the mAP of a label-frequency baseline. Scored on the manifest's test rows, else its val rows,
else all its rows (said in `split`). Unreadable images are reported and left out, never substituted.

Try it:  vitkit eval tags.csv --model runs/tags --json
"""

from __future__ import annotations

import numpy as np

from vitkit.api import Model
from vitkit.data.labelled import DatasetError
from vitkit.data.loader import iter_batches
from vitkit.data.tagged import discover_tagged
from vitkit.multilabel import f1_scores, label_frequency_map, mean_ap, per_class_ap
from vitkit.progress import bar


def evaluate_tagged(model: Model, manifest: str, batch_size: int = 32, workers: int = 1,
                    progress: bool = True) -> dict:
    """The scores (see the module docstring) as one JSON-ready dict."""
    splits = discover_tagged(manifest)
    split, items = next((name, rows) for name, rows in (("test", splits.test), ("val", splits.val),
                                                        ("all", splits.train)) if rows)
    if split == "all":
        items = splits.train + splits.val + splits.test
    labels = list(model.labels)
    unknown = sorted(set(splits.labels) - set(labels))
    if unknown:
        raise DatasetError(f"{manifest}: label(s) {', '.join(unknown[:5])} are not among the model's "
                           f"{len(labels)} labels")
    to_model = np.array([labels.index(name) for name in splits.labels])  # the manifest's index -> the model's
    paths = [path for path, _ in items]
    truth = np.zeros((len(items), len(labels)), np.int64)
    for row, (_, found) in enumerate(items):
        truth[row, to_model[list(found)]] = 1
    probs = np.zeros(truth.shape, np.float64)
    unreadable: dict[str, str] = {}
    read = np.zeros(len(items), bool)
    with bar(len(paths), "eval", show=progress, leave=False) as done:
        for batch in iter_batches(paths, model.spec, batch_size, workers, pin_memory=model.device.type == "cuda"):
            if batch.indices:
                probs[batch.indices] = model(batch.pixels).sigmoid().double().numpy()  # (B, C)
                read[batch.indices] = True
            unreadable.update({paths[i]: reason for i, reason in batch.errors.items()})
            done.update(len(batch.indices) + len(batch.errors))
    probs, truth = probs[read], truth[read]
    aps = per_class_ap(probs, truth)
    thresholds = model.config.class_thresholds()
    f1 = f1_scores(probs, truth, thresholds)
    train_truth = np.zeros((len(splits.train), len(labels)), np.int64)
    for row, (_, found) in enumerate(splits.train):
        train_truth[row, to_model[list(found)]] = 1
    return {"model": model.source, "data": str(manifest), "split": split, "count": int(read.sum()),
            "map": mean_ap(aps), "per_class_ap": dict(zip(labels, aps)), "micro_f1": f1["micro_f1"],
            "macro_f1": f1["macro_f1"], "per_class_f1": dict(zip(labels, f1["per_class_f1"])),
            "thresholds": dict(zip(labels, thresholds)),
            "label_frequency_map": label_frequency_map(truth, train_truth) if split != "all" else None,
            "unreadable": unreadable}


def summary(result: dict) -> str:
    """A few lines for people: the figures, the worst classes by AP, and what could not be read."""
    lines = [f"{result['count']} images ({result['split']} rows of {result['data']}): mAP {result['map']:.1%}, "
             f"micro F1 {result['micro_f1']:.1%}, macro F1 {result['macro_f1']:.1%} at the stored thresholds"]
    if result["label_frequency_map"] is not None:
        lines.append(f"label-frequency baseline mAP {result['label_frequency_map']:.1%}")
    worst = sorted(((ap, name) for name, ap in result["per_class_ap"].items() if ap is not None))[:5]
    lines.append("lowest AP: " + ", ".join(f"{name} {ap:.1%}" for ap, name in worst))
    if result["unreadable"]:
        lines.append(f"{len(result['unreadable'])} unreadable images left out")
    return "\n".join(lines)
