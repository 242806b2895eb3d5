"""Labelled images for fine-tuning: find them (`discover`) and serve them (`LabelledImages`).

DATA may be
  a folder with one subfolder per class                 DATA/cat/1.jpg, DATA/dog/2.png ...
  a folder with train/ and val/ (and test/) splits      DATA/train/cat/1.jpg, DATA/val/cat/9.jpg ...
  a CSV manifest with a header: path,label[,split]      relative paths are read from the manifest's folder
  a JSONL manifest: {"path": ..., "label": ...[, "split": ...]} per line
Class names are sorted (numerically when every name is a whole number), and a label's index is its
position in that order. Without an explicit validation split, `val_split` takes that fraction of each
class (at least one image), chosen by a hash of (seed, relative path): the same files whatever the
listing order of the file system, and adding images to a class moves few others.

Randomness: `LabelledImages` seeds a fresh `torch.Generator` for each (seed, epoch, index), so a sample's
augmentation does not depend on the worker, the process, the rank or an interruption.

Try it:  python -c "from vitkit.train.datasets import discover; s = discover('DATA', 0.1, 0); \
print(len(s.train), len(s.val), s.labels)"
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vitkit.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, read_error
from vitkit.data.sources import IGNORED_DIRS, walk_images, is_image_name

Item = tuple[str, int]  # (path, label index)
Transform = Callable[[Image.Image, torch.Generator], torch.Tensor]

SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MANIFEST_COLUMNS = ("path", "label", "split")  # split is optional
SHOWN = 5  # paths named in an error message before "... and N more"


class DatasetError(ValueError):
    """DATA cannot be read as a labelled image set; the message says what is wrong and where."""


class BadImageWarning(UserWarning):
    """A training image could not be read and another one took its place."""


@dataclass(frozen=True)
class Splits:
    train: list[Item]
    val: list[Item]  # empty: no validation
    labels: list[str]  # index -> class name
    test: list[Item] = field(default_factory=list)  # only from a test/ folder or split=test rows
    layout: str = ""  # "classes", "splits", "csv" or "jsonl": how DATA was read


# -- per-sample randomness ---------------------------------------------------------------------------------
def sample_seed(seed: int, *key: int) -> int:
    """A 64-bit seed that is a pure function of (seed, *key): keys of different lengths never collide."""
    words = [int(seed), len(key), *(int(k) for k in key)]
    if min(words) < 0:
        raise ValueError(f"seeds and keys must be non-negative integers, got {(seed, *key)}")
    low, high = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int(low) | (int(high) << 32)


def sample_generator(seed: int, *key: int) -> torch.Generator:
    """A fresh CPU generator for (seed, *key), e.g. (seed, epoch, index) for one sample's augmentation or
    (seed, step) for one batch's mixup."""
    return torch.Generator().manual_seed(sample_seed(seed, *key))


# -- the dataset -------------------------------------------------------------------------------------------
class LabelledImages(Dataset):
    """(path, label) items -> (pixels (3, S, S) float32, label int), the pixels from `transform(image, rng)`.

    `rng` is a torch.Generator seeded from (seed, epoch, index): call `set_epoch` before each epoch (in
    the process that owns the dataset; DataLoader workers get a copy at each epoch's start).

    Unreadable images (undecodable, truncated, larger than `max_pixels`, missing or unreadable files):
      on_error="substitute" (default) the next readable item in the list, (index + 1) % len, ... takes
                  its place, with that item's label, transformed with the generator of `index`: the batch
                  keeps its size and the run stays deterministic (same substitute on every rank, worker
                  count and resume). Each bad file is warned about once per process (`BadImageWarning`) and
                  recorded in `self.failures` {path: reason} (in the process that read it). More than
                  `max_consecutive_failures` unreadable items in a row (a vanished mount, a folder of
                  non-images) raise a RuntimeError instead of training on a handful of substitutes.
      on_error="raise"  an ImageDecodeError naming the file (FileNotFoundError/PermissionError as they are).
    Use `find_bad_images` before training to drop bad files up front and list them.
    """

    def __init__(self, items: Sequence[Item], transform: Transform, seed: int = 0, *,
                 max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None,
                 on_error: str = "substitute", max_consecutive_failures: int = 16):
        if on_error not in ("substitute", "raise"):
            raise ValueError(f"on_error must be 'substitute' or 'raise', not {on_error!r}")
        sample_seed(seed)  # validates
        self.items = [(str(path), int(label)) for path, label in items]
        self.transform, self.seed, self.epoch = transform, int(seed), 0
        self.max_pixels, self.draft_size = max_pixels, draft_size
        self.on_error, self.max_consecutive_failures = on_error, max_consecutive_failures
        self.failures: dict[str, str] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        count = len(self.items)
        if not -count <= index < count:
            raise IndexError(f"index {index} out of range for {count} images")
        index %= count
        generator = sample_generator(self.seed, self.epoch, index)
        for attempt in range(min(count, self.max_consecutive_failures + 1)):
            path, label = self.items[(index + attempt) % count]
            try:
                image = decode_image(path, max_pixels=self.max_pixels, draft_size=self.draft_size)
            except (ImageDecodeError, OSError) as err:
                if self.on_error == "raise":
                    if isinstance(err, ImageDecodeError):
                        raise ImageDecodeError(f"{path}: {err}") from err
                    raise
                self._record(path, read_error(err))
                continue
            return self.transform(image, generator), label
        raise RuntimeError(
            f"{min(count, self.max_consecutive_failures + 1)} images in a row from position {index} could not "
            f"be read (first: {self.items[index][0]}: {self.failures.get(self.items[index][0], '?')}); "
            "check the data, or drop bad files with vitkit.train.datasets.find_bad_images")

    def _record(self, path: str, reason: str) -> None:
        if path not in self.failures:
            self.failures[path] = reason
            warnings.warn(f"cannot read training image {path}: {reason}; another image takes its place",
                          BadImageWarning, stacklevel=3)


def find_bad_images(items: Sequence[Item], *, full_decode: bool = False,
                    max_pixels: int = DEFAULT_MAX_PIXELS, threads: int = 8) -> dict[str, str]:
    """{path: reason} for the items that cannot be used. Header only by default (missing, empty, not an
    image, too large: ~0.1 ms a file); `full_decode=True` decodes every pixel (also finds truncated files,
    at the cost of a full decode each)."""

    def check(path: str) -> str | None:
        try:
            if full_decode:
                decode_image(path, max_pixels=max_pixels)
            else:
                _check_header(path, max_pixels)
        except (ImageDecodeError, OSError) as err:
            return read_error(err)
        return None

    paths = [str(path) for path, _ in items]
    with ThreadPoolExecutor(max(1, threads)) as pool:
        reasons = list(pool.map(check, paths))
    return {path: reason for path, reason in zip(paths, reasons) if reason is not None}


def _check_header(path: str, max_pixels: int) -> None:
    with open(path, "rb") as stream:
        if not stream.read(1):
            raise ImageDecodeError("empty file (0 bytes)")
        stream.seek(0)
        try:
            with Image.open(stream) as image:
                width, height = image.size
        except UnidentifiedImageError as err:
            raise ImageDecodeError("not an image: cannot identify image file") from err
        except (SyntaxError, ValueError) as err:
            raise ImageDecodeError(f"truncated or corrupt image data: {err}") from err
    if width * height > max_pixels:
        raise ImageDecodeError(f"image too large: {width}x{height} exceeds {max_pixels / 1e6:.1f} MP")


# -- discovery ---------------------------------------------------------------------------------------------
def discover(data: str | Path, val_split: float | None = None, seed: int = 0) -> Splits:
    """Find the labelled images of DATA (see the module docstring for the layouts).

    An explicit validation split (a val/ folder, split=val rows) wins over `val_split`; otherwise
    `val_split` (a fraction in [0, 1); None or 0: no validation) is taken from each class of the training
    images, deterministically by `seed`.
    """
    if val_split is not None and not 0 <= val_split < 1:
        raise ValueError(f"val_split must be a fraction in [0, 1), got {val_split}")
    sample_seed(seed)  # validates
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


def _read_jsonl(manifest: Path) -> list[_Row]:
    rows = []
    with open(manifest, encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{manifest}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{where}: not valid JSON ({err.msg})") from None
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
