"""Multi-label image sets on disk (several labels per image): `discover_tagged(MANIFEST)` finds the images and
their label sets. Single-label sets are vitkit.data.labelled.

MANIFEST is
  a CSV with path,labels[,split]      labels separated by "|" (cat|dog), or a JSON list (["cat", "dog"])
  a CSV with path[,split] and one 0/1 column per class (one-hot): path,cat,dog -> a.jpg,1,1
  a JSONL file: {"path": ..., "labels": [...] or "cat|dog"[, "split": ...]} per line
An image may have no label at all (an empty labels cell, all-zero columns, []): it is a negative for every
class. Relative paths are read from the manifest's folder. Class names are sorted as vitkit.data.labelled sorts
them. Without split=val rows, `val_split` takes that fraction of the training rows (at least one), chosen by a hash
of (seed, relative path), as vitkit.data.labelled does.

Try it:  python -c "from vitkit.data.tagged import discover_tagged; s = discover_tagged('tags.csv', 0.2, 0); \
print(len(s.train), len(s.val), s.labels)"
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from vitkit.data.labelled import SPLIT_VALUES, DatasetError, _list, _split_key, jsonl_objects, sort_labels

Tagged = tuple[str, tuple[int, ...]]  # (path, indices of its labels)
SEPARATOR = "|"


@dataclass(frozen=True)
class TaggedSplits:
    train: list[Tagged]
    val: list[Tagged]  # empty: no validation
    labels: list[str]  # index -> class name
    test: list[Tagged] = field(default_factory=list)
    layout: str = ""  # "csv", "csv-one-hot" or "jsonl"


@dataclass(frozen=True)
class _Row:
    where: str  # "FILE:LINE" for messages
    path: str
    labels: tuple[str, ...]
    split: str


def discover_tagged(manifest: str | Path, val_split: float | None = None, seed: int = 0) -> TaggedSplits:
    """The images and label sets of a multi-label manifest (see the module docstring)."""
    if val_split is not None and not 0 <= val_split < 1:
        raise ValueError(f"val_split must be a fraction in [0, 1), got {val_split}")
    root = Path(manifest)
    if not root.exists():
        raise FileNotFoundError(f"no such file or folder: {root}")
    suffix = root.suffix.lower()
    if root.is_dir() or suffix not in (".csv", ".jsonl", ".ndjson"):
        raise DatasetError(f"{root}: multi-label data is a .csv or .jsonl manifest (path,labels with labels "
                           "separated by '|', or one 0/1 column per class); class folders hold one label per image")
    rows, layout = _read_csv(root) if suffix == ".csv" else (_read_jsonl(root), "jsonl")
    return _splits(root, rows, layout, val_split, seed)


def parse_labels(cell: str | list, where: str) -> tuple[str, ...]:
    """A labels cell: "a|b", a JSON list '["a", "b"]', a list, or "" (no label)."""
    if isinstance(cell, str) and cell.strip().startswith("["):
        try:
            cell = json.loads(cell)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{where}: labels {cell!r} is not a JSON list ({err.msg})") from None
    if isinstance(cell, list):
        if not all(isinstance(name, (str, int)) and not isinstance(name, bool) for name in cell):
            raise DatasetError(f"{where}: labels must be names, got {json.dumps(cell)}")
        names = [str(name).strip() for name in cell]
    elif isinstance(cell, str):
        names = [name.strip() for name in cell.split(SEPARATOR)] if cell.strip() else []
    else:
        raise DatasetError(f"{where}: labels must be a string like 'cat|dog' or a list, not {json.dumps(cell)}")
    if any(not name for name in names):
        raise DatasetError(f"{where}: an empty label name in {cell!r}")
    return tuple(dict.fromkeys(names))  # a label given twice counts once


def _split_of(value: str | None, where: str) -> str:
    split = (value or "train").strip().lower()
    if split not in SPLIT_VALUES:
        raise DatasetError(f"{where}: split {value!r} is not one of train, val, test")
    return SPLIT_VALUES[split]


def _read_csv(manifest: Path) -> tuple[list[_Row], str]:
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [c.strip() for c in next(reader, [])]
        columns = [c.lower() for c in header]
        if "path" not in columns or len(set(columns)) != len(columns):
            raise DatasetError(f"{manifest}: the header needs a path column (and labels, or one 0/1 column per "
                               f"class), each once; found {','.join(header) or 'nothing'}")
        one_hot = "labels" not in columns
        classes = [name for name, low in zip(header, columns) if low not in ("path", "split")]
        if one_hot and not classes:
            raise DatasetError(f"{manifest}: no labels column and no class columns")
        rows = []
        for values in reader:
            where = f"{manifest}:{reader.line_num}"
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(columns):
                raise DatasetError(f"{where}: {len(values)} values for {len(columns)} columns")
            record = dict(zip(columns, values))
            cells = dict(zip(header, values))
            labels = _one_hot(cells, classes, where) if one_hot else parse_labels(record["labels"], where)
            rows.append(_Row(where, record["path"].strip(), labels, _split_of(record.get("split"), where)))
    return rows, "csv-one-hot" if one_hot else "csv"


def _one_hot(cells: dict[str, str], classes: list[str], where: str) -> tuple[str, ...]:
    bad = [name for name in classes if cells[name].strip() not in ("0", "1", "")]
    if bad:
        raise DatasetError(f"{where}: one-hot columns hold 0 or 1; {_list(bad)} {'does' if len(bad) == 1 else 'do'} not")
    return tuple(name for name in classes if cells[name].strip() == "1")


def _read_jsonl(manifest: Path) -> list[_Row]:
    rows = []
    for where, record in jsonl_objects(manifest):
        if not isinstance(record, dict) or not isinstance(record.get("path"), str) or "labels" not in record:
            raise DatasetError(f'{where}: expected an object like {{"path": "a.jpg", "labels": ["cat", "dog"]}}')
        rows.append(_Row(where, record["path"].strip(), parse_labels(record["labels"], where),
                         _split_of(record.get("split"), where)))
    return rows


def _splits(manifest: Path, rows: list[_Row], layout: str, val_split: float | None, seed: int) -> TaggedSplits:
    if not rows:
        raise DatasetError(f"{manifest}: no rows")
    base = manifest.parent
    seen: dict[str, str] = {}
    missing = []
    by_split: dict[str, list[tuple[str, tuple[str, ...]]]] = {"train": [], "val": [], "test": []}
    for row in rows:
        path = os.path.normpath(os.path.join(base, os.path.expanduser(row.path)))
        if not row.path or path in seen:
            raise DatasetError(f"{row.where}: {'an empty path' if not row.path else f'{row.path} is listed twice'}"
                               + (f" (also at {seen[path]})" if row.path else ""))
        seen[path] = row.where
        if not os.path.isfile(path):
            missing.append(f"{row.path} ({row.where})")
        by_split[row.split].append((path, row.labels))
    if missing:
        raise DatasetError(f"{len(missing)} file(s) listed in {manifest} do not exist: {_list(missing)} "
                           f"(relative paths are read from {base})")
    if not by_split["train"]:
        raise DatasetError(f"{manifest}: no training rows (every row has split val or test)")
    labels = sort_labels(sorted({name for _, names in by_split["train"] for name in names}))
    for split in ("val", "test"):
        unknown = sorted({name for _, names in by_split[split] for name in names} - set(labels))
        if unknown:
            raise DatasetError(f"{manifest}: {split} label(s) {_list(unknown)} have no training rows")
    index = {name: i for i, name in enumerate(labels)}

    def items(entries: list[tuple[str, tuple[str, ...]]]) -> list[Tagged]:
        return sorted((path, tuple(sorted(index[name] for name in names))) for path, names in entries)

    train, val = items(by_split["train"]), items(by_split["val"])
    if not val and val_split:
        if len(train) < 2:
            raise DatasetError(f"{manifest}: a validation split needs at least 2 training rows")
        count = min(len(train) - 1, max(1, math.floor(val_split * len(train) + 0.5)))
        ranked = sorted(train, key=lambda item: _split_key(seed, item[0], base))
        val, train = sorted(ranked[:count]), sorted(ranked[count:])
    return TaggedSplits(train, val, labels, items(by_split["test"]), layout)
