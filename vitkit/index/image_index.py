"""`ImageIndex`: the Python API of the image index (a LanceDB folder of image embeddings with their files).

    import vitkit
    from vitkit.index import ImageIndex
    model = vitkit.load("vitkit/assets/digits-vit")
    idx = ImageIndex.create("digits.db", model)                 # records model, pool, preprocessing, dim
    idx.add(["digits/"], model, class_folders=True)             # incremental; identical files stored once
    hits = idx.search_images(model, ["query.png"], k=5)[0]      # [Hit(id, path, score, label), ...]
    clip = vitkit.load("openai/clip-vit-base-patch32"); text = vitkit.load_text("openai/clip-vit-base-patch32")
    photos = ImageIndex.create("photos.db", clip, text=text)     # records the text tower too
    photos.search_text(text, ["a dog on a beach"], k=5)         # by a sentence
    idx.get(hits[0].id)                                         # the stored row: path, hash, size, mtime, label
    idx.place(hits[0].path)                                     # Place(root="digits", path="7/0001.png")

An index accepts vectors from one model only: the model's identity is its pooling, dimension, preprocessing
and a probe (its vector for a fixed synthetic image, equal up to 0.99 cosine across backends and dtypes);
`check_model` refuses anything else with `IndexMismatch`, and warns (`WeightsChanged`) when a weights file of the
model has another sha256 than the one recorded at creation although its vectors still match. Text queries are
accepted from the text tower recorded at creation only (`check_text`: same weights and tokenizer), and only where
the vectors are the projected image-text embeddings. `place` names a hit's file by its root (roots.py).

Try it:  python -m pytest tests/test_index.py -q
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from vitkit.api import ImageInput, Model
from vitkit.image_text import TextEncoder
from vitkit.index.dups import DupPair, near_duplicates
from vitkit.index.embedding import check_pool
from vitkit.index.ingest import AddReport, add_images, remove_paths
from vitkit.index.roots import Place
from vitkit.index.search import Hit, ann_recall, build_ann, search
from vitkit.index.store import ID_PATTERN, IndexMeta, Store

PROBE_SIDE = 96
PROBE_MIN_COSINE = 0.99


class IndexMismatch(ValueError):
    """The model (or pooling) is not the one the index was built with: their vectors are not comparable."""


class WeightsChanged(UserWarning):
    """A weights file of the model differs from the one the index was built with, but its vectors still match."""


def changed_weights(recorded: dict | None, current: dict | None) -> list[str]:
    """The weights files present in both provenances (checkpoints.provenance) whose sha256 differs, each as
    "NAME (sha256 RECORDED then, CURRENT now)" with 12-digit digests. Files of other names (another format of the
    same weights: an ONNX export) cannot be compared and are left out."""
    then, now = (recorded or {}).get("sha256") or {}, (current or {}).get("sha256") or {}
    return [f"{name} (sha256 {then[name][:12]} then, {now[name][:12]} now)" for name in sorted(set(then) & set(now))
            if then[name] != now[name]]


def probe_image(side: int = PROBE_SIDE) -> Image.Image:
    """A fixed synthetic RGB image: red and green ramps and a blue checkerboard."""
    y, x = np.mgrid[0:side, 0:side]  # (H, W) each
    checker = ((x // 8 + y // 8) % 2) * 255
    rgb = np.stack([x * 255 // (side - 1), y * 255 // (side - 1), checker], axis=-1)  # (H, W, 3)
    return Image.fromarray(rgb.astype(np.uint8))


def probe_vector(model: Model, pool: str) -> np.ndarray:
    return model.embed([probe_image()], pool=pool)[0].numpy()  # (D,)


def stored_spec(model: Model) -> dict:
    """The model's preprocessing as the index's metadata holds it (a JSON round trip: tuples become lists)."""
    return json.loads(json.dumps(model.spec.to_dict()))


class ImageIndex:
    def __init__(self, store: Store):
        self.store = store

    @classmethod
    def create(cls, db_path: str | Path, model: Model, pool: str | None = None,
               arch: str | None = None, text: TextEncoder | None = None) -> ImageIndex:
        """A new index in the folder `db_path` for `model` with `pool` (default: the model's own pooling);
        `arch` is recorded so that the model can be reloaded from a weights file without config; `text`, the
        image-text model's text tower, makes the index searchable by text (with the projected embedding)."""
        pool = check_pool(pool or model.default_pool)
        probe = probe_vector(model, pool)
        if text is not None and (pool != "prelogits" or text.dim != len(probe)):
            raise IndexMismatch(f"text search needs the image-text embedding (pool prelogits, {text.dim}-d), not "
                                f"pool {pool} ({len(probe)}-d)")
        meta = IndexMeta(model.source_id, arch, pool, len(probe), stored_spec(model), tuple(float(v) for v in probe),
                         text=text.fingerprint if text is not None else None,
                         provenance=getattr(model, "provenance", None) or None)
        return cls(Store.create(db_path, meta))

    @classmethod
    def open(cls, db_path: str | Path) -> ImageIndex:
        return cls(Store.open(db_path))

    @property
    def meta(self) -> IndexMeta:
        return self.store.meta

    @property
    def info(self) -> dict:
        m, ann = self.meta, self.store.vector_index()
        return {"path": str(self.store.path), "count": self.store.count(), "model": m.model, "arch": m.arch,
                "pool": m.pool, "dim": m.dim, "preprocess": m.preprocess, "text_search": m.text is not None,
                "ann": None if ann is None else {"type": ann.index_type, "indexed_rows": ann.num_indexed_rows,
                                                 "unindexed_rows": ann.num_unindexed_rows}}

    def check_model(self, model: Model, pool: str | None = None) -> None:
        """Raise IndexMismatch, naming both models, unless `model` (and `pool`) give this index's vectors."""
        m = self.meta
        reasons = []
        if pool and pool != m.pool:
            reasons.append(f"pool {pool} instead of {m.pool}")
        theirs = stored_spec(model)
        changed = [f"{key} {theirs.get(key)} instead of {m.preprocess.get(key)}"
                   for key in sorted(set(theirs) | set(m.preprocess)) if theirs.get(key) != m.preprocess.get(key)]
        if changed:
            reasons.append("preprocessing " + ", ".join(changed))
        changed = changed_weights(m.provenance, getattr(model, "provenance", None))
        probe = probe_vector(model, m.pool)
        if len(probe) != m.dim:
            reasons.append(f"{len(probe)}-d vectors instead of {m.dim}-d")
        elif float(probe @ np.asarray(m.probe, np.float32)) < PROBE_MIN_COSINE:
            reasons.append("other weights (its vector for a fixed probe image differs"
                           + "".join(f"; {c}" for c in changed) + ")")
        if reasons:
            raise IndexMismatch(f"{self.store.path} was built with model {m.model} (pool {m.pool}, {m.dim}-d); "
                                f"model {model.source_id} gives incomparable vectors: {'; '.join(reasons)}. "
                                "Use the index's model, or another index folder")
        if changed:
            warnings.warn(f"{self.store.path}: the model's weights changed since the index was built: "
                          f"{', '.join(changed)}; its vectors still match the index's, so it is used",
                          WeightsChanged, stacklevel=2)

    def check_text(self, text: TextEncoder) -> None:
        """Raise IndexMismatch unless `text` is the text tower recorded when this index was created."""
        m = self.meta
        if m.text is None:
            raise IndexMismatch(f"{self.store.path} was built without a text tower (model {m.model}, pool {m.pool}): "
                                "text search needs an index created with an image-text model (CLIP, SigLIP) and "
                                "its projected embedding (pool prelogits)")
        if text.fingerprint != m.text:
            raise IndexMismatch(f"{self.store.path} takes text queries from the text tower of {m.model} only; "
                                f"the one of {text.source} has other weights or another tokenizer")

    def add(self, paths: list[str], model: Model, pool: str | None = None, **options) -> AddReport:
        """Index the images of `paths` (files, folders, globs) with the index's model (and pool): see
        `vitkit.index.ingest.add_images` for the options."""
        self.check_model(model, pool)
        with self.store.writing():
            return add_images(self.store, model, paths, **options)

    def remove(self, paths: list[str] | None = None, missing_only: bool = False) -> int:
        """Remove these files (folders: every indexed file below them; None: all), or only those gone from
        disk with `missing_only`. Returns the number of files removed."""
        with self.store.writing():
            return remove_paths(self.store, paths, missing_only)

    def search_vectors(self, vectors: np.ndarray, k: int = 10, exact: bool = False) -> list[list[Hit]]:
        """(Q, D) query vectors (normalised here) -> per query the k most similar images, best first."""
        return search(self.store, vectors, k, exact)

    def search_images(self, model: Model, images: list[ImageInput], k: int = 10,
                      exact: bool = False) -> list[list[Hit]]:
        """Embed `images` (paths, bytes or PIL images) with the index's pooling, then `search_vectors`."""
        images = images if isinstance(images, (list, tuple)) else [images]
        return self.search_vectors(model.embed(images, pool=self.meta.pool).numpy(), k, exact)

    def search_text(self, text: TextEncoder, queries: list[str], k: int = 10, exact: bool = False) -> list[list[Hit]]:
        """Per text query the k indexed images closest to it in the image-text space, best first."""
        self.check_text(text)
        return self.search_vectors(text.embed(queries).numpy(), k, exact)

    def get(self, hit_id: str) -> dict | None:
        """The stored row of a content id: path (its first file), hash, size, mtime, label and every file.
        Anything that is not a stored id (including any string that is not 64 hex digits) gives None."""
        if not isinstance(hit_id, str) or not ID_PATTERN.fullmatch(hit_id):
            return None
        row = self.store.rows([hit_id]).get(hit_id)
        if row is None:
            return None
        first = row.files[0]
        return {"id": row.id, "hash": row.id, "path": first.path, "size": row.size, "mtime": first.mtime,
                "label": first.label, "files": [asdict(f) for f in row.files]}

    def place(self, path: str) -> Place:
        """Where an indexed file (a hit's path) lies: its root's name and its path below it, no absolute path."""
        return self.store.roots.place(path)

    def build_ann(self) -> None:
        with self.store.writing():
            build_ann(self.store)

    def duplicates(self, threshold: float = 0.95) -> list[DupPair]:
        return near_duplicates(self.store, threshold)

    def stats(self, check: bool = False, samples: int = 100) -> dict:
        """`info` plus the number of files, labels and bytes on disk; with `check`, the table's integrity
        (`Store.integrity`) and the ANN index's recall@10 against exact search over `samples` queries."""
        files, labels = 0, set()
        for batch in self.store.scan(["files"]):
            for row_files in batch.column("files").to_pylist():
                files += len(row_files)
                labels.update(f["label"] for f in row_files if f["label"] is not None)
        size = sum(p.stat().st_size for p in self.store.path.rglob("*") if p.is_file())
        out = self.info | {"files": files, "labels": len(labels), "bytes": size}
        if check:
            queries = min(samples, out["count"]) if out["ann"] else 0
            recall = ann_recall(self.store, 10, samples) if queries else None
            out["check"] = self.store.integrity() | {"ann_recall@10": recall, "ann_recall_queries": queries}
        return out
