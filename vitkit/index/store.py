"""The index on disk: one LanceDB table ("images") in the DB folder, one row per unique image content.

A row:
  id      string                      sha256 of the file's bytes (hex): the content hash, unique
  vector  fixed_size_list<float32>[D] the L2-normalised embedding
  size    int64                       bytes
  files   list<struct<path, mtime, label>>   every file with this content (absolute paths, sorted);
                                      files[0] is the path a search hit names
Identical files therefore share one vector. The table schema's metadata ("vitkit") records how the vectors
were made (`IndexMeta`): model, pooling, preprocessing, dimension, a probe embedding and, for an image-text model,
the fingerprint of the text tower (weights and tokenizer) whose text queries live in the same space.

Every change is one `commit`: a single LanceDB merge_insert that inserts, updates and deletes rows together,
so a writer killed at any moment leaves the table at its previous commit (LanceDB versions are atomic).
Beside the table, roots.json names the folders the files were added from (`Store.roots`, see roots.py).
One writer at a time: `Store.writing()` holds `write.lock` in the DB folder (released by the OS if the writer dies).

Try it:  python -c "from vitkit.index.store import Store; s = Store.open('my.db'); print(s.count(), s.meta)"
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa
from filelock import FileLock, Timeout

from vitkit.index.roots import Roots

READ_CONSISTENCY = timedelta(seconds=2)

TABLE = "images"
WRITE_LOCK = "write.lock"
META_KEY = b"vitkit"
FORMAT = 1
SELECT_IDS = 1024  # ids per query
ID_PATTERN = re.compile(r"[0-9a-f]{64}")
FILE_TYPE = pa.struct([("path", pa.string()), ("mtime", pa.float64()), ("label", pa.string())])


@dataclass(frozen=True)
class IndexMeta:
    """How the vectors of an index were made; vectors from anything else are not comparable."""

    model: str  # the model's source: registry name, hub id or absolute path
    arch: str | None  # for a weights file without config
    pool: str
    dim: int
    preprocess: dict  # PreprocessSpec.to_dict()
    probe: tuple[float, ...]  # the model's vector for a fixed synthetic image (see image_index.probe_vector)
    format: int = FORMAT
    text: str | None = None  # image-text models: the fingerprint of the text tower whose queries are comparable
    provenance: dict | None = None  # the hub commit and weights sha256 of the model that made the vectors


@dataclass(frozen=True)
class FileRef:
    path: str
    mtime: float
    label: str | None = None


@dataclass
class Row:
    id: str
    vector: np.ndarray  # (D,) float32
    size: int
    files: list[FileRef] = field(default_factory=list)


@dataclass(frozen=True)
class FileEntry:
    """What the index knows about one path: its content row and the file's size and mtime then."""

    id: str
    size: int
    mtime: float
    label: str | None


def table_schema(meta: IndexMeta) -> pa.Schema:
    return pa.schema([("id", pa.string()), ("vector", pa.list_(pa.float32(), meta.dim)), ("size", pa.int64()),
                      ("files", pa.list_(FILE_TYPE))],
                     metadata={META_KEY: json.dumps(asdict(meta)).encode()})


def sql_ids(ids) -> str:
    """A SQL `IN (...)` list of content ids; anything that is not a content id is refused (no injection)."""
    ids = list(ids)
    bad = [i for i in ids if not ID_PATTERN.fullmatch(i)]
    if bad:
        raise ValueError(f"not a content id (64 hex digits): {bad[0]!r}")
    return "(" + ", ".join(f"'{i}'" for i in ids) + ")"


class Store:
    """The LanceDB table of an index and its metadata."""

    def __init__(self, path: Path, table):
        self.path = path
        self.table = table
        self.roots = Roots(path)
        found = json.loads(table.schema.metadata[META_KEY])
        self.meta = IndexMeta(**{**found, "probe": tuple(found["probe"])})

    @classmethod
    def create(cls, path: str | Path, meta: IndexMeta) -> Store:
        """A new, empty index; two processes creating the same one at once: the second gets a clear error."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with _writer_lock(path):
            if (path / f"{TABLE}.lance").is_dir():
                raise FileExistsError(f"{path} already holds an index: open it, or choose another folder")
            connection = lancedb.connect(path, read_consistency_interval=READ_CONSISTENCY)
            return cls(path, connection.create_table(TABLE, schema=table_schema(meta)))

    @classmethod
    def open(cls, path: str | Path) -> Store:
        path = Path(path)
        if not (path / f"{TABLE}.lance").is_dir():
            raise FileNotFoundError(f"no image index at {path} (create one with `vitkit index add {path} ...`)")
        # a server holding the index open sees what a later `index add` commits, within this interval
        return cls(path, lancedb.connect(path, read_consistency_interval=READ_CONSISTENCY).open_table(TABLE))

    def writing(self):
        """Hold the DB's writer lock for the block; another writer gets a clear error at once instead of waiting."""
        return _writer_lock(self.path)

    def count(self) -> int:
        return self.table.count_rows()

    def scan(self, columns: list[str], batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
        """Every row's `columns`, streamed in batches (memory bounded whatever the table's size)."""
        yield from self.table.search().select(columns).limit(None).to_batches(batch_size)

    def file_index(self) -> dict[str, FileEntry]:
        """path -> what the index knows of it, for every indexed file."""
        known = {}
        for batch in self.scan(["id", "size", "files"]):
            for row_id, size, files in zip(*(batch.column(c).to_pylist() for c in ("id", "size", "files"))):
                for f in files:
                    known[f["path"]] = FileEntry(row_id, size, f["mtime"], f["label"])
        return known

    def rows(self, ids) -> dict[str, Row]:
        """The rows with these content ids (those that exist)."""
        return {r.id: r for part in self.select(ids, ["id", "vector", "size", "files"])
                for r in rows_from_arrow(part, self.meta.dim)}

    def existing(self, ids) -> set[str]:
        """Those of `ids` that are in the index."""
        return {i for part in self.select(ids, ["id"]) for i in part.column("id").to_pylist()}

    def select(self, ids, columns: list[str]) -> Iterator[pa.Table]:
        ids = sorted(set(ids))
        for start in range(0, len(ids), SELECT_IDS):  # bounded SQL `IN` lists
            where = f"id IN {sql_ids(ids[start:start + SELECT_IDS])}"
            yield self.table.search().where(where).select(columns).limit(None).to_arrow()

    def commit(self, inserts: list[Row] = (), attach: dict[str, list[FileRef]] | None = None,
               detach: dict[str, set[str]] | None = None) -> None:
        """One atomic change: insert new rows, attach files to existing rows, detach paths from rows (a row
        left without any file is deleted). A file attached to a row replaces that row's entry for its path."""
        attach, detach = attach or {}, detach or {}
        current = self.rows(set(attach) | set(detach))
        upserts, deletes = list(inserts), []
        for row_id, row in current.items():
            gone = detach.get(row_id, set()) | {f.path for f in attach.get(row_id, [])}
            row.files = sorted([f for f in row.files if f.path not in gone] + attach.get(row_id, []),
                               key=lambda f: f.path)
            if row.files:
                upserts.append(row)
            else:
                deletes.append(row_id)
        if not upserts and not deletes:
            return
        if not upserts:
            self.table.delete(f"id IN {sql_ids(deletes)}")
            return
        merge = self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
        if deletes:
            merge = merge.when_not_matched_by_source_delete(f"id IN {sql_ids(deletes)}")
        merge.execute(rows_to_arrow(upserts, self.table.schema))

    def integrity(self) -> dict:
        """What a sound table satisfies: no id twice, no path in two rows, no row without a file, unit vectors."""
        ids = paths = empty = 0
        seen_ids: set[str] = set()
        seen_paths: set[str] = set()
        worst = 0.0
        for batch in self.scan(["id", "files", "vector"]):
            batch_ids = batch.column("id").to_pylist()
            ids += len(batch_ids)
            seen_ids.update(batch_ids)
            for files in batch.column("files").to_pylist():
                empty += not files
                paths += len(files)
                seen_paths.update(f["path"] for f in files)
            norms = np.linalg.norm(vectors_from_arrow(batch.column("vector"), self.meta.dim), axis=1)  # (n,)
            worst = max(worst, float(np.abs(norms - 1).max(initial=0.0)))
        return {"repeated_ids": ids - len(seen_ids), "repeated_paths": paths - len(seen_paths),
                "rows_without_files": empty, "max_norm_error": worst}

    def vector_index(self):
        """The ANN index on the vectors (LanceDB's IndexConfig), or None."""
        return next((ix for ix in self.table.list_indices() if ix.columns == ["vector"]), None)


def rows_to_arrow(rows: list[Row], schema: pa.Schema) -> pa.Table:
    dim = schema.field("vector").type.list_size
    vectors = np.stack([r.vector for r in rows]).astype(np.float32, copy=False)  # (n, D)
    return pa.table({
        "id": pa.array([r.id for r in rows], pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),  # (n*D,) -> n lists of D
        "size": pa.array([r.size for r in rows], pa.int64()),
        "files": pa.array([[asdict(f) for f in r.files] for r in rows], pa.list_(FILE_TYPE)),
    }, schema=schema)


def rows_from_arrow(table: pa.Table | pa.RecordBatch, dim: int) -> list[Row]:
    vectors = vectors_from_arrow(table.column("vector"), dim)  # (n, D)
    return [Row(i, v, s, [FileRef(**f) for f in files]) for i, v, s, files in
            zip(table.column("id").to_pylist(), vectors, table.column("size").to_pylist(),
                table.column("files").to_pylist())]


def vectors_from_arrow(column, dim: int) -> np.ndarray:
    """A fixed-size-list column of n vectors -> (n, D) float32."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)  # (n * D,) -> (n, D)


@contextmanager
def _writer_lock(path: Path) -> Iterator[None]:
    lock = FileLock(path / WRITE_LOCK, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RuntimeError(f"another process is writing to the index {path} (`vitkit index add` or `remove`); "
                           "wait for it to finish, then run this again") from None
    try:
        yield
    finally:
        lock.release()
