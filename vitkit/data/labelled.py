"""Labelled image sets on disk: `discover(DATA)` finds the images and their classes.

DATA may be
  a folder with one subfolder per class                 DATA/cat/1.jpg, DATA/dog/2.png ...
  a folder with train/ and val/ (and test/) splits      DATA/train/cat/1.jpg, DATA/val/cat/9.jpg ...
  a CSV manifest with a header: path,label[,split]      relative paths are read from the manifest's folder
  a JSONL manifest: {"path": ..., "label": ...[, "split": ...]} per line
Class names are sorted (numerically when every name is a whole number), and a label's index is its
position in that order. Without an explicit validation split, `val_split` takes that fraction of each
class (at least one image), chosen by a hash of (seed, relative path): the same files whatever the
listing order of the file system, and adding images to a class moves few others.

Used by fine-tuning, retrieval evaluation and `vitkit eval` (a fine-tuned model's own split).

Try it:  python -c "from vitkit.data.labelled import discover; s = discover('DATA', 0.1, 0); \
print(len(s.train), len(s.val), s.labels)"
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vitkit.data.sources import IGNORED_DIRS, is_image_name, walk_images

Item = tuple[str, int]  # (path, label index)

SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MANIFEST_COLUMNS = ("path", "label", "split")  # split is optional
SHOWN = 5  # paths named in an error message before "... and N more"


class DatasetError(ValueError):
    """DATA cannot be read as a labelled image set; the message says what is wrong and where."""


@dataclass(frozen=True)
class Splits:
    train: list[Item]
    val: list[Item]  # empty: no validation
    labels: list[str]  # index -> class name
    test: list[Item] = field(default_factory=list)  # only from a test/ folder or split=test rows
    layout: str = ""  # "classes", "splits", "csv" or "jsonl": how DATA was read


def discover(data: str | Path, val_split: float | None = None, seed: int = 0) -> Splits:
    """Find the labelled images of DATA (see the module docstring for the layouts).

    An explicit validation split (a val/ folder, split=val rows) wins over `val_split`; otherwise
    `val_split` (a fraction in [0, 1); None or 0: no validation) is taken from each class of the training
    images, deterministically by `seed`.
    """
    if val_split is not None and not 0 <= val_split < 1:
        raise ValueError(f"val_split must be a fraction in [0, 1), got {val_split}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"the seed must be a non-negative integer, got {seed!r}")
    root = Path(data)
    if not root.exists():
        raise FileNotFoundError(f"no such file or folder: {root}")
    if root.is_file():
        suffix = root.suffix.lower()
        if suffix == ".csv":
            rows, layout = _read_csv(root), "csv"
        elif suffix in (".jsonl", ".ndjson"):
            rows, layout = _read_jsonl(root), "jsonl"
        else:
            raise DatasetError(f"{root}: a manifest must be a .csv or .jsonl file (or DATA a folder of images)")
        return _from_manifest(root, rows, layout, val_split, seed)
    split_dirs = _split_dirs(root)
    if split_dirs:
        return _from_split_folders(root, split_dirs, val_split, seed)
    by_class = _classes_in(root)
    labels = sort_labels(list(by_class))
    return _finish({name: by_class[name] for name in labels}, {}, {}, root, "classes", val_split, seed)


def sort_labels(names: list[str]) -> list[str]:
    """Class names in index order: numerically if all are whole numbers ("2" before "10"), else by text."""
    if names and all(name.isdigit() for name in names):
        return sorted(names, key=lambda name: (int(name), name))
    return sorted(names)


def class_folders(folder: str | Path) -> list[str]:
    """The names of `folder`'s class sub-folders in index order (hidden and tool folders left out); [] for none."""
    folder = Path(folder)
    return sort_labels([p.name for p in _visible_dirs(folder)]) if folder.is_dir() else []


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name not in IGNORED_DIRS)


def _split_dirs(root: Path) -> dict[str, Path]:
    """{split: folder} when `root` is laid out as train/ [val/] [test/], each holding class folders."""
    train = root / "train"
    if not (train.is_dir() and _visible_dirs(train)):
        return {}
    found, others = {}, []
    for child in _visible_dirs(root):
        split = next((s for s, names in SPLIT_DIRS.items() if child.name in names), None)
        if split is None:
            others.append(child.name)
        elif split in found:
            raise DatasetError(f"{root}: both {found[split].name}/ and {child.name}/ are validation splits; keep one")
        else:
            found[split] = child
    if others:
        raise DatasetError(
            f"{root} has a train/ split folder beside other folders ({', '.join(others)}): put class folders "
            "inside train/ and val/ (or test/), or use one subfolder per class and no train/ folder")
    return found


def _classes_in(folder: Path) -> dict[str, list[str]]:
    """{class name: sorted image paths} of a folder with one subfolder per class."""
    classes = _visible_dirs(folder)
    if not classes:
        loose = [p for p in folder.iterdir() if p.is_file() and is_image_name(p)]
        hint = (f" ({len(loose)} images lie directly in it: move them into one subfolder per class)"
                if loose else "")
        raise DatasetError(f"{folder}: no class subfolders{hint}")
    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and is_image_name(p))
    if loose:
        raise DatasetError(f"{folder}: {len(loose)} image(s) lie beside the class folders ({_list(loose)}): "
                           "move each into its class folder, or remove them")
    by_class = {c.name: walk_images(c) for c in classes}
    empty = [name for name, paths in by_class.items() if not paths]
    if empty:
        raise DatasetError(f"{folder}: no images in class folder(s) {_list(empty)} "
                           f"(image suffixes: .jpg .jpeg .png .webp .bmp .gif .tif ...); remove or fill them")
    return by_class


def _from_split_folders(root: Path, dirs: dict[str, Path], val_split: float | None, seed: int) -> Splits:
    train = _classes_in(dirs["train"])
    labels = sort_labels(list(train))
    extra = {}
    for split in ("val", "test"):
        if split in dirs:
            classes = _classes_in(dirs[split])
            unknown = sorted(set(classes) - set(train))
            if unknown:
                raise DatasetError(f"{dirs[split]}: class folder(s) {_list(unknown)} are not in "
                                   f"{dirs['train']} (its classes: {_list(labels)})")
            extra[split] = classes
    return _finish({name: train[name] for name in labels}, extra.get("val", {}), extra.get("test", {}),
                   dirs["train"], "splits", val_split, seed)


def _finish(train: dict[str, list[str]], val: dict[str, list[str]], test: dict[str, list[str]],
            key_root: Path, layout: str, val_split: float | None, seed: int) -> Splits:
    """Class-name -> paths dicts (train's keys in label order) -> Splits, splitting train when no val."""
    labels = list(train)
    index = {name: i for i, name in enumerate(labels)}

    def items(by_class: dict[str, list[str]]) -> list[Item]:
        return [(path, index[name]) for name in labels for path in by_class.get(name, [])]

    if not val and val_split:
        train, val = _stratified_split(train, val_split, seed, key_root)
    return Splits(items(train), items(val), labels, items(test), layout)


def _stratified_split(by_class: dict[str, list[str]], fraction: float, seed: int,
                      key_root: Path) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    too_small = [name for name, paths in by_class.items() if len(paths) < 2]
    if too_small:
        raise DatasetError(
            f"a validation split of {fraction:g} needs at least 2 images in every class; "
            f"{_list(too_small)} {'has' if len(too_small) == 1 else 'have'} one: add images, give an explicit "
            "val/ folder, or train without validation (val_split None)")
    train, val = {}, {}
    for name, paths in by_class.items():
        n_val = min(len(paths) - 1, max(1, math.floor(fraction * len(paths) + 0.5)))
        ranked = sorted(paths, key=lambda p: _split_key(seed, p, key_root))
        val[name], train[name] = sorted(ranked[:n_val]), sorted(ranked[n_val:])
    return train, val


def _split_key(seed: int, path: str, key_root: Path) -> bytes:
    relative = Path(os.path.relpath(path, key_root)).as_posix()
    return hashlib.blake2b(f"{seed}\0{relative}".encode(), digest_size=8).digest()


# -- manifests ---------------------------------------------------------------------------------------------
@dataclass
class _Row:
    where: str  # "FILE:LINE" for messages
    path: str
    label: str
    split: str


def _read_csv(manifest: Path) -> list[_Row]:
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{manifest}: empty manifest (expected a header line: path,label)")
        columns = [c.strip().lower() for c in header]
        _check_columns(columns, manifest)
        rows = []
        for values in reader:
            where = f"{manifest}:{reader.line_num}"
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(columns):
                raise DatasetError(f"{where}: {len(values)} values for {len(columns)} columns ({','.join(columns)})")
            rows.append(_row(dict(zip(columns, values)), where))
    return rows


def jsonl_objects(manifest: Path) -> Iterator[tuple[str, object]]:
    """("FILE:LINE", the parsed value) of every non-blank line of a JSONL manifest; DatasetError for bad JSON."""
    with open(manifest, encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{manifest}:{number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{where}: not valid JSON ({err.msg})") from None


def _read_jsonl(manifest: Path) -> list[_Row]:
    rows = []
    for where, record in jsonl_objects(manifest):
        if not isinstance(record, dict):
            raise DatasetError(f'{where}: expected an object like {{"path": "a.jpg", "label": "cat"}}')
        _check_columns(list(record), manifest, where)
        for key, value in record.items():
            if key in ("path", "split") and not isinstance(value, str) or \
                    key == "label" and (isinstance(value, bool) or not isinstance(value, (str, int))):
                raise DatasetError(f"{where}: {key!r} must be a {'string' if key != 'label' else 'string or integer'}"
                                   f", not {json.dumps(value)}")
        rows.append(_row({k: str(v) for k, v in record.items()}, where))
    return rows  # no rows at all: `_from_manifest` says so, for both manifest kinds


def _check_columns(columns: list[str], manifest: Path, where: str | None = None) -> None:
    unknown = [c for c in columns if c not in MANIFEST_COLUMNS]
    missing = [c for c in ("path", "label") if c not in columns]
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if unknown or missing or duplicated:
        problems = ([f"unknown column(s) {_list(unknown)}"] if unknown else []) + \
                   ([f"missing column(s) {_list(missing)}"] if missing else []) + \
                   ([f"repeated column(s) {_list(duplicated)}"] if duplicated else [])
        raise DatasetError(f"{where or manifest}: {'; '.join(problems)}; a manifest has the columns path, label "
                           "and optionally split (train, val or test)")


def _row(record: dict[str, str], where: str) -> _Row:
    path, label = record["path"].strip(), record["label"].strip()
    if not path or not label:
        raise DatasetError(f"{where}: empty {'path' if not path else 'label'}")
    split = record.get("split", "train").strip().lower()
    if split not in SPLIT_VALUES:
        raise DatasetError(f"{where}: split {record.get('split')!r} is not one of train, val, test")
    return _Row(where, path, label, SPLIT_VALUES[split])


def _from_manifest(manifest: Path, rows: list[_Row], layout: str, val_split: float | None, seed: int) -> Splits:
    if not rows:
        raise DatasetError(f"{manifest}: no rows")
    base = manifest.parent
    seen: dict[str, str] = {}
    missing = []
    by_split: dict[str, dict[str, list[str]]] = {"train": {}, "val": {}, "test": {}}
    for row in rows:
        path = os.path.normpath(os.path.join(base, os.path.expanduser(row.path)))
        if path in seen:
            raise DatasetError(f"{row.where}: {row.path} is listed twice (also at {seen[path]})")
        seen[path] = row.where
        if not os.path.isfile(path):
            missing.append(f"{row.path} ({row.where})")
        by_split[row.split].setdefault(row.label, []).append(path)
    if missing:
        raise DatasetError(f"{len(missing)} file(s) listed in {manifest} do not exist: {_list(missing)} "
                           f"(relative paths are read from {base})")
    if not by_split["train"]:
        raise DatasetError(f"{manifest}: no training rows (every row has split val or test)")
    labels = sort_labels(list(by_split["train"]))
    for split in ("val", "test"):
        unknown = sorted(set(by_split[split]) - set(labels))
        if unknown:
            raise DatasetError(f"{manifest}: {split} label(s) {_list(unknown)} have no training rows "
                               f"(training labels: {_list(labels)})")
    train = {name: sorted(by_split["train"][name]) for name in labels}
    val = {name: sorted(paths) for name, paths in by_split["val"].items()}
    test = {name: sorted(paths) for name, paths in by_split["test"].items()}
    return _finish(train, val, test, base, layout, val_split, seed)


def _list(names: Sequence[str]) -> str:
    shown = ", ".join(str(n) for n in names[:SHOWN])
    return shown + (f" ... and {len(names) - SHOWN} more" if len(names) > SHOWN else "")
