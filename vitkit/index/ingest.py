"""Add image files to an index incrementally, and remove them.

`add_images` scans files, folders (recursive) and globs, and
  - skips files already indexed with the same size and mtime (nothing is read);
  - hashes the rest (sha256 of the bytes): a content already in the index only gains the file's path;
  - embeds each new content once (identical files share one vector), in batches through vitkit's loader;
  - commits every `chunk_size` files as one atomic LanceDB commit, so a run killed at any point loses at
    most the chunk in flight, and running it again finishes the job without duplicates;
  - reports unreadable files and goes on.
The folders the files were found in are recorded as the index's roots (roots.py) before anything is committed.
Labels: with `class_folders`, an image in FOLDER/<class>/... (at any depth) is labelled <class>, as
`vitkit finetune` reads class folders; files named directly, or lying directly in FOLDER, get no label.
A label, once set, stays until a later add with `class_folders` sets another.

Try it:  vitkit index add my.db photos/ --model vitkit/assets/digits-vit --class-folders
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from stat import S_ISREG

import numpy as np
from tqdm import tqdm

from vitkit.api import Model
from vitkit.data.decode import DEFAULT_MAX_PIXELS, read_error
from vitkit.data.sources import expand_inputs, is_utf8
from vitkit.index.embedding import embed_files
from vitkit.index.search import ANN_THRESHOLD, MIN_ANN_ROWS, build_ann
from vitkit.index.store import FileEntry, FileRef, Row, Store
from vitkit.batch.map import PROGRESS_MIN_INPUTS

HASH_BLOCK = 1 << 20
REINDEX_FRACTION = 0.2  # rows added since the ANN index was built, as a fraction of its rows


@dataclass(frozen=True)
class Candidate:
    """An image file found on disk, to index unless it is unchanged."""

    path: str  # absolute
    size: int
    mtime: float
    label: str | None
    root: str  # the folder it was found in: the FOLDER given, or the file's own folder (see roots.py)


@dataclass
class AddReport:
    files: int = 0  # image files found
    unchanged: int = 0  # already indexed with the same size and mtime: not read
    embedded: int = 0  # new contents embedded now
    linked: int = 0  # files whose content was already indexed: no embedding
    pruned: int = 0  # indexed files removed because they are gone from disk (prune=True)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), not stored
    ann_built: bool = False

    def summary(self) -> str:
        return (f"{self.files} files: {self.embedded} new images embedded, {self.linked} files of images already "
                f"indexed, {self.unchanged} unchanged, {self.pruned} pruned, {len(self.errors)} unreadable"
                + (", ANN index built" if self.ann_built else ""))


def add_images(store: Store, model: Model, inputs: list[str], *, class_folders: bool = False, prune: bool = False,
               batch_size: int = 32, workers: int = 0, chunk_size: int = 256, max_pixels: int = DEFAULT_MAX_PIXELS,
               progress: bool = False, ann_threshold: int = ANN_THRESHOLD) -> AddReport:
    """Index the images of `inputs` (files, folders, globs) with `model`, which must be the index's model."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    report = AddReport()
    candidates = scan(inputs, class_folders, report.errors)
    report.files = len(candidates)
    store.roots.record(c.root for c in candidates)
    known = store.file_index()
    todo, attach = _triage(candidates, known, class_folders, report)
    groups = _by_content(todo, report.errors, progress)
    existing = store.existing(groups)
    for i in existing:
        attach.setdefault(i, []).extend(_ref(c) for c in groups[i])
    for part in _chunks(list(attach), chunk_size):
        store.commit(attach={i: attach[i] for i in part},
                     detach=_detach([c for i in part if i in existing for c in groups[i]], known))
        report.linked += sum(len(attach[i]) for i in part)
    new = {i: files for i, files in groups.items() if i not in existing}
    loader = {"batch_size": batch_size, "workers": workers, "max_pixels": max_pixels, "progress": progress}
    report.embedded = _embed_new(store, model, new, known, report.errors, chunk_size, loader)
    if prune:
        report.pruned = remove_paths(store, [i for i in inputs if Path(i).is_dir()], missing_only=True)
    wrote = bool(report.embedded or report.linked or report.pruned)
    report.ann_built = _update_ann(store, ann_threshold, wrote)
    return report


def remove_paths(store: Store, targets: list[str] | None = None, missing_only: bool = False) -> int:
    """Remove indexed files that are one of `targets` or lie below one of them (None: every file), only those
    gone from disk with `missing_only`; a content left without files is deleted. One commit; returns the
    number of files removed."""
    roots = None if targets is None else [os.path.abspath(t) for t in targets]

    def chosen(path: str) -> bool:
        inside = roots is None or any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)
        return inside and not (missing_only and os.path.exists(path))

    detach: dict[str, set[str]] = {}
    for path, entry in store.file_index().items():
        if chosen(path):
            detach.setdefault(entry.id, set()).add(path)
    store.commit(detach=detach)
    return sum(len(paths) for paths in detach.values())


def scan(inputs: list[str], class_folders: bool, errors: list[tuple[str, str]]) -> list[Candidate]:
    """Image files of `inputs` (absolute paths, each once), with size, mtime and class-folder label."""
    found: dict[str, Candidate] = {}
    for item in inputs:
        root = os.path.abspath(item) if Path(item).is_dir() else None
        for path in map(os.path.abspath, expand_inputs([item])):
            if path in found:
                continue
            try:
                stat = os.stat(path)
            except OSError as err:
                errors.append((path, read_error(err)))
                continue
            if not S_ISREG(stat.st_mode):  # a FIFO would block the content hash forever
                errors.append((path, "not a regular file"))
                continue
            if not is_utf8(path):  # the index's tables hold UTF-8 text
                errors.append((os.fsencode(path).decode("utf-8", "backslashreplace"),
                               "the file name is not UTF-8, which the index stores: rename the file"))
                continue
            parts = Path(os.path.relpath(path, root)).parts if root else ()
            label = parts[0] if class_folders and len(parts) > 1 else None
            found[path] = Candidate(path, stat.st_size, stat.st_mtime, label, root or os.path.dirname(path))
    return list(found.values())


def file_hash(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _triage(candidates: list[Candidate], known: dict[str, FileEntry], class_folders: bool,
            report: AddReport) -> tuple[list[Candidate], dict[str, list[FileRef]]]:
    """(files to hash: new or changed, {content id: files whose label alone changed}); counts the unchanged."""
    todo, relabel = [], {}
    for c in candidates:
        entry = known.get(c.path)
        label = c.label if class_folders else (entry.label if entry else None)
        if entry and (entry.size, entry.mtime, entry.label) == (c.size, c.mtime, label):
            report.unchanged += 1
        elif entry and (entry.size, entry.mtime) == (c.size, c.mtime):
            relabel.setdefault(entry.id, []).append(FileRef(c.path, c.mtime, label))
        else:
            todo.append(replace(c, label=label))
    return todo, relabel


def _by_content(files: list[Candidate], errors: list[tuple[str, str]], progress: bool) -> dict[str, list[Candidate]]:
    """content id -> its files, in scan order; files that cannot be read go to `errors`."""
    def hashed(c: Candidate) -> tuple[Candidate, str | None, str | None]:
        try:
            return c, file_hash(c.path), None
        except OSError as err:
            return c, None, read_error(err)

    groups: dict[str, list[Candidate]] = {}
    show = progress and len(files) >= PROGRESS_MIN_INPUTS
    with ThreadPoolExecutor(max_workers=4) as pool:  # hashlib releases the GIL on large reads
        for c, content, error in tqdm(pool.map(hashed, files), total=len(files), desc="hashing", unit="file",
                                      disable=not show, file=sys.stderr, dynamic_ncols=True):
            if error:
                errors.append((c.path, error))
            else:
                groups.setdefault(content, []).append(c)
    return groups


def _embed_new(store: Store, model: Model, new: dict[str, list[Candidate]], known: dict[str, FileEntry],
               errors: list[tuple[str, str]], chunk_size: int, loader: dict) -> int:
    """Embed one file of each new content; commit every `chunk_size` contents. Returns the number embedded."""
    ids = list(new)
    inserts: list[Row] = []
    handled: list[str] = []  # content ids of this chunk, embedded or failed
    embedded = 0

    def commit() -> None:
        store.commit(inserts=inserts, detach=_detach([c for i in handled for c in new[i]], known))
        inserts.clear()
        handled.clear()

    for positions, vectors, failed in embed_files(model, [new[i][0].path for i in ids], store.meta.pool, **loader):
        for position, vector in zip(positions, vectors):
            files = new[ids[position]]
            inserts.append(Row(ids[position], vector.astype(np.float32), files[0].size, [_ref(c) for c in files]))
        for position, reason in failed.items():
            errors.extend((c.path, reason) for c in new[ids[position]])
        handled.extend(ids[p] for p in sorted([*positions, *failed]))
        embedded += len(positions)
        if len(handled) >= chunk_size:
            commit()
    if handled:
        commit()
    return embedded


def _update_ann(store: Store, threshold: int, wrote: bool) -> bool:
    """Build the ANN index once the index reaches `threshold` rows, and rebuild it once the rows added since
    exceed REINDEX_FRACTION of it (until then LanceDB searches them exactly beside the index). Without an
    ANN index, compact the many small commits (LanceDB's optimize). Returns True when it was (re)built now.

    Rebuilt rather than updated in place: LanceDB's incremental index update (optimize) lowered recall@10
    from 1.0 to ~0.7 on a 562-row test index, while new rows left unindexed keep exact results."""
    ann = store.vector_index()
    if ann is None:
        if wrote:
            store.table.optimize()
        due = store.count() >= max(threshold, MIN_ANN_ROWS)
    else:
        due = ann.num_unindexed_rows > REINDEX_FRACTION * ann.num_indexed_rows
        if due:
            store.table.optimize()
    if due:
        build_ann(store)
    return due


def _ref(c: Candidate) -> FileRef:
    return FileRef(c.path, c.mtime, c.label)


def _detach(files: list[Candidate], known: dict[str, FileEntry]) -> dict[str, set[str]]:
    """Rows that held these paths before (the file changed, or is being re-linked) -> the paths to take off."""
    detach: dict[str, set[str]] = {}
    for c in files:
        if c.path in known:
            detach.setdefault(known[c.path].id, set()).add(c.path)
    return detach


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
