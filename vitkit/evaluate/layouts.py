"""Which images an evaluation scores, and which class indices count as right for each: the layouts ImageNet
and its variants ship in, and class folders. A class is its index in the model's head, never a display
name (ImageNet-1k has two "crane" and two "maillot" classes).

    synsets      DATA/n01440764/*.JPEG ...        WordNet ids (ImageNet val, sorted into folders)
    numbered     DATA/0/ ... DATA/999/            class indices (ImageNetV2)
    classes      DATA/cat/, DATA/dog/ ...          the model's own label names (a fine-tuned model)
    labels-file  flat DATA + --labels FILE         LOC_val_solution.csv (ImageId,PredictionString), a CSV
                                                    with a path/file column and one of class_index, wnid or
                                                    label, or a whitespace "file index" .txt (val.txt)
    real         flat DATA + --labels real.json    ImageNet-ReaL: a list with, per validation image, the
                                                    classes that are right (any of them counts; an empty
                                                    list: not scored, counted)
`auto` detects the layout: a val/ (or validation/) folder is scored in place of DATA; a labels file
(labels.csv, LOC_val_solution.csv, val.txt, real.json) beside flat images is used without --labels.

Try it:  vitkit eval ../shared/images/imagenet-sample-100 --arch deit_tiny_patch16_224 \
           --model ../shared/weights/deit-tiny-patch16-224/model.safetensors
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vitkit.data.sources import walk_images
from vitkit.labels import imagenet_1k, imagenet_1k_wnids

LAYOUTS = ("auto", "synsets", "numbered", "classes", "labels-file", "real")
LABEL_FILES = ("labels.csv", "LOC_val_solution.csv", "val.txt", "real.json")
VAL_DIRS = ("val", "validation", "valid")
WNID = re.compile(r"^n\d{8}$")
REAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})$")
PATH_COLUMNS = ("path", "file", "filename", "file_name", "image", "imageid", "image_id")
INDEX_COLUMNS = ("class_index", "index", "label_index", "class_id", "target")
WNID_COLUMNS = ("wnid", "synset", "synset_id")
NAME_COLUMNS = ("label", "class", "class_name", "name")
SHOWN = 8


class LayoutError(ValueError):
    """DATA (and --labels) cannot be read as an evaluation set; the message says what was expected."""


@dataclass(frozen=True)
class EvalSet:
    paths: list[str]
    targets: list[tuple[int, ...]]  # per image, the class indices that count as right (one, or ReaL's set)
    layout: str  # what was read, in words
    notes: tuple[str, ...] = ()  # images left out and why
    unlabelled: int = 0  # ReaL images with no right answer: not scored

    @property
    def multi_label(self) -> bool:
        return any(len(t) != 1 for t in self.targets)


class ClassIndex:
    """The model's classes: by index, by WordNet id, by name (a name that two classes share is refused)."""

    def __init__(self, labels: tuple[str, ...]):
        self.labels = tuple(labels)
        self.imagenet = len(self.labels) == 1000  # a 1000-class head is taken as ImageNet-1k's standard order
        names = {}
        for i, name in enumerate(self.labels):
            names.setdefault(name, []).append(i)
        if self.imagenet:
            for i, name in enumerate(imagenet_1k()):
                if i not in names.get(name, []):
                    names.setdefault(name, []).append(i)
        self._names = names

    def wnid(self, wnid: str) -> int:
        if wnid in self._names and len(self._names[wnid]) == 1:
            return self._names[wnid][0]  # a model fine-tuned on synset folders has the ids as its labels
        if not self.imagenet:
            raise LayoutError(f"WordNet id {wnid}: the model has {len(self.labels)} classes, not ImageNet-1k's 1000")
        try:
            return imagenet_1k_wnids().index(wnid)
        except ValueError:
            raise LayoutError(f"{wnid} is not one of ImageNet-1k's 1000 WordNet ids") from None

    def index(self, text: str) -> int:
        value = int(text)
        if not 0 <= value < len(self.labels):
            raise LayoutError(f"class index {value} is outside the model's 0..{len(self.labels) - 1}")
        return value

    def name(self, name: str) -> int:
        found = self._names.get(name)
        if not found:
            shown = ", ".join(self.labels[:SHOWN])
            raise LayoutError(f"class {name!r} is not one of the model's {len(self.labels)} labels ({shown} ...): "
                              "name class folders after the model's labels, or use synset / numbered folders")
        if len(found) > 1:
            raise LayoutError(f"class name {name!r} belongs to classes {found}: a name cannot tell them apart; "
                              "use synset folders (n01440764/), numbered folders or a labels file with indices")
        return found[0]

    def any(self, text: str) -> int:
        """A label cell that may be an index, a WordNet id or a name."""
        text = text.strip()
        if text.isdigit() and text not in self._names:
            return self.index(text)
        return self.wnid(text) if WNID.match(text) and text not in self._names else self.name(text)


def read_eval_set(data: str | Path, labels: tuple[str, ...], labels_file: str | Path | None = None,
                  layout: str = "auto") -> EvalSet:
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}: choose {', '.join(LAYOUTS)}")
    classes, root = ClassIndex(labels), Path(data)
    if not root.exists():
        raise FileNotFoundError(f"no such file or folder: {root}")
    if root.is_file():  # a labels file whose paths are relative to its own folder
        labels_file, root = root, root.parent
    prefix = ""
    split = next((root / name for name in VAL_DIRS if (root / name).is_dir()), None)
    if split is not None and labels_file is None:
        root, prefix = split, f"{split.name}/ of "
    elif (root / "train").is_dir() and labels_file is None:
        raise LayoutError(f"{root} has a train/ folder but no val/: scoring it whole would score the training "
                          f"images; give the folder to score ({root}/test, or {root}/train on purpose)")
    if labels_file is None and layout in ("auto", "labels-file", "real"):
        labels_file = next((root / name for name in LABEL_FILES if (root / name).is_file()), None)
    if labels_file is not None and layout in ("auto", "labels-file", "real"):
        found = _from_labels_file(root, Path(labels_file), classes, layout)
    else:
        found = _from_folders(root, classes, layout)
    return EvalSet(found.paths, found.targets, prefix + found.layout, found.notes, found.unlabelled)


# -- class folders -----------------------------------------------------------------------------------------
def _from_folders(root: Path, classes: ClassIndex, layout: str) -> EvalSet:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise LayoutError(f"{root}: no class folders and no labels file ({', '.join(LABEL_FILES)}): "
                          "sort the images into class folders or give --labels FILE")
    names = [f.name for f in folders]
    if layout == "auto":
        known = set(classes.labels)
        if all(n in known for n in names):
            layout = "classes"
        elif all(WNID.match(n) for n in names):
            layout = "synsets"
        elif all(n.isdigit() for n in names):
            layout = "numbered"
        else:
            layout = "classes"
    to_index = {"synsets": classes.wnid, "numbered": classes.index, "classes": classes.name}.get(layout)
    if to_index is None:
        raise LayoutError(f"--layout {layout} needs a labels file (--labels FILE)")
    paths, targets = [], []
    for folder in folders:
        index = to_index(folder.name)
        images = walk_images(folder)
        paths += images
        targets += [(index,)] * len(images)
    if not paths:
        raise LayoutError(f"{root}: no images in its class folders")
    words = {"synsets": "ImageNet synset folders (n01440764/ ...)", "numbered": "numbered class folders (0/ ...)",
             "classes": "class folders named after the model's labels"}[layout]
    return EvalSet(paths, targets, f"{root}: {words}, {len(folders)} classes")


# -- labels files ------------------------------------------------------------------------------------------
def _from_labels_file(root: Path, labels_file: Path, classes: ClassIndex, layout: str) -> EvalSet:
    if not labels_file.is_file():
        raise FileNotFoundError(f"no such labels file: {labels_file}")
    images = walk_images(root)
    if not images:
        raise LayoutError(f"{root}: no images to score")
    if labels_file.suffix.lower() == ".json" or layout == "real":
        return _from_real(root, labels_file, images, classes)
    if labels_file.suffix.lower() == ".txt":
        rows, kind = _read_txt(labels_file, classes), "file index lines"
    else:
        rows, kind = _read_csv(labels_file, classes)
    lookup = _lookup(root, images)
    paths, targets, missing, unknown = [], [], [], []
    listed = set()
    for key, index in rows:
        path = lookup.get(key) or lookup.get(Path(key).name) or lookup.get(Path(key).stem)
        if path is None:
            missing.append(key)
        elif path == "":
            unknown.append(key)
        else:
            paths.append(path)
            targets.append((index,))
            listed.add(path)
    if unknown:
        raise LayoutError(f"{labels_file}: {len(unknown)} names match several images in {root} "
                          f"({', '.join(unknown[:SHOWN])}): list them by relative path")
    if not paths:
        raise LayoutError(f"none of the {len(rows)} images listed in {labels_file} is in {root}")
    notes = []
    if missing:
        notes.append(f"{len(missing)} images listed in {labels_file.name} are not in {root} "
                     f"(e.g. {missing[0]}); scoring the {len(paths)} that are")
    unlisted = len(images) - len(listed)
    if unlisted:
        notes.append(f"{unlisted} images in {root} have no row in {labels_file.name} and are not scored")
    order = sorted(range(len(paths)), key=lambda k: paths[k])
    return EvalSet([paths[k] for k in order], [targets[k] for k in order],
                   f"{root}: flat folder with {labels_file.name} ({kind})", tuple(notes))


def _lookup(root: Path, images: list[str]) -> dict[str, str]:
    """Relative path, file name and stem -> image path ("" when a name or stem is shared by several)."""
    table: dict[str, str] = {}
    for path in images:
        relative = Path(os.path.relpath(path, root)).as_posix()
        table[relative] = path
        for key in (Path(path).name, Path(path).stem):
            table[key] = "" if key in table and table[key] != path else path
    return table


def _read_txt(labels_file: Path, classes: ClassIndex) -> list[tuple[str, int]]:
    rows = []
    for number, line in enumerate(labels_file.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise LayoutError(f"{labels_file}:{number}: expected 'file class_index', got {line!r}")
        rows.append((parts[0], classes.any(parts[1])))
    return rows


def _read_csv(labels_file: Path, classes: ClassIndex) -> tuple[list[tuple[str, int]], str]:
    with open(labels_file, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = {c.strip().lower(): c for c in reader.fieldnames or []}
        if "imageid" in columns and "predictionstring" in columns:  # ImageNet's LOC_val_solution.csv
            return [(row[columns["imageid"]].strip(), classes.wnid(row[columns["predictionstring"]].split()[0]))
                    for row in reader], "LOC_val_solution: first WordNet id of each row"
        path_col = next((columns[c] for c in PATH_COLUMNS if c in columns), None)
        for names, parse, kind in ((INDEX_COLUMNS, classes.index, "class index"),
                                   (WNID_COLUMNS, classes.wnid, "WordNet id"), (NAME_COLUMNS, classes.any, "label")):
            label_col = next((columns[c] for c in names if c in columns), None)
            if label_col is not None:
                break
        if path_col is None or label_col is None:
            raise LayoutError(f"{labels_file}: columns {list(columns)}; expected a path column "
                              f"({', '.join(PATH_COLUMNS)}) and a class column ({', '.join(INDEX_COLUMNS)}, "
                              f"{', '.join(WNID_COLUMNS)} or {', '.join(NAME_COLUMNS)}), or ImageNet's "
                              "ImageId,PredictionString")
        rows = []
        for row in reader:
            try:
                rows.append((row[path_col].strip(), parse(row[label_col].strip())))
            except (LayoutError, ValueError) as err:
                raise LayoutError(f"{labels_file}:{reader.line_num}: {err}") from None
    return rows, f"{label_col} column"


def _from_real(root: Path, labels_file: Path, images: list[str], classes: ClassIndex) -> EvalSet:
    """ReaL's real.json: entry i lists the right classes of ILSVRC2012_val_{i+1:08d}; images with other
    names are taken in sorted order and must match the list's length."""
    real = json.loads(labels_file.read_text())
    if not isinstance(real, list) or not all(isinstance(r, list) for r in real):
        raise LayoutError(f"{labels_file}: expected ImageNet-ReaL's list of lists of class indices")
    numbers = [REAL_NAME.match(Path(p).stem) for p in images]
    if all(numbers):
        positions, how = [int(m[1]) - 1 for m in numbers], "by ILSVRC2012_val_ number"
        beyond = [p for p in positions if p >= len(real)]
        if beyond:
            raise LayoutError(f"{labels_file} has {len(real)} entries; image number {max(beyond) + 1} has none")
    elif len(images) == len(real):
        positions, how = list(range(len(images))), "in sorted file-name order"
    else:
        raise LayoutError(f"{labels_file} has {len(real)} entries for {len(images)} images whose names are not "
                          "ILSVRC2012_val_NNNNNNNN: name them so, or give one entry per image in sorted order")
    paths, targets, empty = [], [], 0
    for path, position in zip(images, positions):
        right = tuple(classes.index(str(i)) for i in real[position])
        if right:
            paths.append(path)
            targets.append(right)
        else:
            empty += 1
    notes = (f"{empty} images have no ReaL label and are not scored",) if empty else ()
    return EvalSet(paths, targets, f"{root}: ImageNet-ReaL labels ({labels_file.name}, matched {how}; "
                                   "top-1 right when it is any of an image's labels)", notes, empty)
