"""`vitkit eval`: score a classifier on a labelled folder in any ImageNet layout (see layouts.py), with the
checkpoint's own preprocessing (or the published protocol's), beside the checkpoint's published accuracy.

Unreadable images are reported and left out of the scores, never substituted. A model fine-tuned by vitkit
that is evaluated on the folder it was trained on is scored on that run's own validation split.

Try it:  vitkit eval ../shared/images/imagenet-sample-100 --arch deit_tiny_patch16_224 \
           --model ../shared/weights/deit-tiny-patch16-224/model.safetensors
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitkit.api import Model
from vitkit.config import PreprocessSpec
from vitkit.data.labelled import discover
from vitkit.data.loader import iter_batches
from vitkit.evaluate.layouts import EvalSet, read_eval_set
from vitkit.evaluate.metrics import Scores, score
from vitkit.models.registry import Published, published_for
from vitkit.progress import bar

PROTOCOL_FIELDS = ("input_size", "crop_pct", "resize_mode", "interpolation")


@dataclass
class Evaluation:
    evalset: EvalSet
    scores: Scores
    spec: PreprocessSpec  # what the images went through
    labels: tuple[str, ...]
    predictions: list[dict]  # one row per image: path, targets, top5 (index, score) or error
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> reason
    published: tuple[str, Published, bool] | None = None  # (registry name, figure, same weights)

    def protocol_differences(self) -> list[str]:
        if self.published is None:
            return []
        theirs = self.published[1].protocol
        return [f"{name} {getattr(self.spec, name)} here, {getattr(theirs, name)} published"
                for name in PROTOCOL_FIELDS if getattr(self.spec, name) != getattr(theirs, name)]


def published_protocol(spec: PreprocessSpec, model: str | None, arch: str | None) -> PreprocessSpec:
    """`spec` with the geometry and interpolation of the model's published figure (its own mean/std kept)."""
    found = published_for(model, arch)
    if found is None:
        raise ValueError("no published figure is known for this model, so there is no published protocol")
    protocol = found[1].protocol
    return dataclasses.replace(spec, **{name: getattr(protocol, name) for name in PROTOCOL_FIELDS})


def evaluate_folder(model: Model, data: str, labels_file: str | None = None, layout: str = "auto",
                    batch_size: int = 32, workers: int = 1, progress: bool = True, model_arg: str | None = None,
                    arch: str | None = None) -> Evaluation:
    if not model.config.num_classes:
        raise ValueError(f"{model.source} has no classifier head: there is nothing to score")
    evalset = _training_split(model, data) if labels_file is None and layout == "auto" else None
    evalset = evalset or read_eval_set(data, model.labels, labels_file, layout)
    k = min(5, model.config.num_classes)
    rows: dict[int, dict] = {}
    unreadable = {}
    with bar(len(evalset.paths), "eval", show=progress, leave=False) as done:
        for batch in iter_batches(evalset.paths, model.spec, batch_size, workers,
                                  pin_memory=model.device.type == "cuda"):
            if batch.indices:
                probs = model(batch.pixels).softmax(dim=-1)
                scores, indices = probs.topk(k, dim=-1)  # (B, k)
                for i, top, p in zip(batch.indices, indices.tolist(), scores.tolist()):
                    rows[i] = {"top5": [[c, round(s, 6)] for c, s in zip(top, p)]}
            for i, reason in batch.errors.items():
                rows[i] = {"error": reason}
                unreadable[evalset.paths[i]] = reason
            done.update(len(batch.indices) + len(batch.errors))
    predictions = [{"path": path, "targets": list(targets), **rows[i]}
                   for i, (path, targets) in enumerate(zip(evalset.paths, evalset.targets))]
    scored = [row for row in predictions if "top5" in row]
    top5 = np.array([[c for c, _ in row["top5"]] for row in scored], dtype=np.int64).reshape(len(scored), k)
    result = score(top5, [tuple(row["targets"]) for row in scored], model.config.num_classes)
    return Evaluation(evalset, result, model.spec, model.labels, predictions, unreadable,
                      published_for(model_arg, arch))


def _training_split(model: Model, data: str) -> EvalSet | None:
    """The validation split of the vitkit fine-tuning run that made `model`, when DATA is that run's data."""
    record = Path(model.source) / "train_config.json"
    if not record.is_file():
        return None
    trained = json.loads(record.read_text())
    if Path(trained["data"]).resolve() != Path(data).resolve() or not trained.get("val_split"):
        return None
    splits = discover(data, trained["val_split"], trained["seed"])
    if splits.labels != list(model.labels):
        return None
    if splits.layout == "splits" and (Path(data) / "val").is_dir():
        return None  # an explicit val/ folder: the layouts read it as they would for any model
    paths = [path for path, _ in splits.val]
    return EvalSet(paths, [(label,) for _, label in splits.val],
                   f"{data}: the validation split ({trained['val_split']:g}, seed {trained['seed']}) of the run "
                   f"that fine-tuned {model.source}, {len(paths)} images")
