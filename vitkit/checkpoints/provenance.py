"""Where a model's weights came from, exactly: the hub commit they were read at (`org/name@REV` or revision= pins
it; otherwise the commit the cache resolved) and the sha256 of every weights file. Jobs put the digests in their
fingerprint (a job is never resumed on changed weights), ONNX exports carry them in their metadata, fine-tune
outputs record their base's, and `vitkit info` prints them.

A file's sha256 is cached by (path, size, mtime) in $VITKIT_CACHE_DIR/sha256/, so a 350 MB checkpoint is hashed
once, not on every load.

Try it:  python -c "from vitkit.checkpoints.provenance import provenance; \
print(provenance('vitkit/assets/digits-vit/model.safetensors', None))"
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from vitkit.cache import cache_dir
from vitkit.checkpoints.io import write_atomic_text

COMMIT = re.compile(r"^[0-9a-f]{40}$")  # a hub snapshot folder's name


def split_revision(model: str) -> tuple[str, str | None]:
    """"org/name@REV" -> ("org/name", "REV"); anything else -> (model, None). Only a hub id may carry @REV (a local
    path with an @ in a folder name is left alone)."""
    head, at, rev = model.rpartition("@")
    if at and head.count("/") == 1 and not head.startswith((".", "/", "~")) and rev and "/" not in rev \
            and not os.path.exists(model):
        return head, rev
    return model, None


def sha256_file(path: Path) -> str:
    """The file's sha256, from the cache when the file is unchanged since it was hashed."""
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:32]
    cached = cache_dir("sha256") / f"{key}.txt"
    if cached.is_file():
        text = cached.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{64}", text):
            return text
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    value = digest.hexdigest()
    try:
        os.makedirs(cached.parent, exist_ok=True)
        write_atomic_text(value + "\n", cached)
    except OSError:
        pass  # a read-only cache only costs the next load a re-hash
    return value


def weight_files(where: Path) -> list[Path]:
    """The file the weights were read from, with every shard a *.index.json names."""
    if where.name.endswith(".index.json"):
        shards = sorted(set(json.loads(where.read_text()).get("weight_map", {}).values()))
        return [where, *(where.parent / name for name in shards)]
    return [where]


def provenance(where: str | Path, revision: str | None, resolved: str | None = None) -> dict:
    """{"revision": the asked-for revision or None, "commit": the hub commit read (None for local files),
    "sha256": {file name: digest}} of the weights file `where` (and its shards)."""
    where = Path(where)
    folder = where.parent
    commit = resolved or (folder.name if COMMIT.match(folder.name) and folder.parent.name == "snapshots" else None)
    return {"revision": revision, "commit": commit,
            "sha256": {p.name: sha256_file(p) for p in weight_files(where)}}


def weights_digest(found: dict) -> str | None:
    """One short digest of all the weights files (what a job's fingerprint holds); None when nothing is known."""
    files = found.get("sha256") or {}
    if not files:
        return None
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
