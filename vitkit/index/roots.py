"""The roots of an index: the folders its files were added from (each folder given to `add`, and the folder of
each file named directly or found by a glob), each with a short name unique in the index ("photos", a second
"photos" becomes "photos~2"). They are kept in roots.json in the DB folder, beside the table, and only grow.

A file's `Place` is the name of the outermost root that holds it and its path below that root ("/"-separated):
what the HTTP service shows instead of the server's absolute path. A file no recorded root holds (an index made
before roots were recorded) is placed in its own folder, by that folder's name.

Try it:  python -c "from vitkit.index.roots import Roots; print(Roots('my.db').folders)"
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from vitkit.checkpoints.io import write_atomic_text

ROOTS_FILE = "roots.json"


class Place(NamedTuple):
    root: str  # the root's name
    path: str  # below the root, "/"-separated


class Roots:
    """The roots.json of one DB folder; re-read whenever another process (`vitkit index add`) changed it."""

    def __init__(self, db_path: str | Path):
        self.file = Path(db_path) / ROOTS_FILE
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of the file last read
        self._folders: dict[str, str] = {}

    @property
    def folders(self) -> dict[str, str]:
        """name -> absolute folder, in the order they were recorded."""
        try:
            stat = self.file.stat()
        except FileNotFoundError:
            return {}
        if self._seen != (stat.st_mtime_ns, stat.st_size):
            self._folders = dict(json.loads(self.file.read_text(encoding="utf-8"))["roots"])
            self._seen = (stat.st_mtime_ns, stat.st_size)
        return self._folders

    def record(self, folders: Iterable[str]) -> None:
        """Add these absolute folders, those not recorded yet, each under a new unique name. The caller holds the
        index's writer lock."""
        known = dict(self.folders)
        new = [f for f in dict.fromkeys(folders) if f not in known.values()]
        if not new:
            return
        for folder in new:
            base = Path(folder).name or "root"
            name, n = base, 1
            while name in known:
                n += 1
                name = f"{base}~{n}"
            known[name] = folder
        write_atomic_text(json.dumps({"roots": list(known.items())}, ensure_ascii=False, indent=1), self.file)

    def place(self, path: str) -> Place:
        """Where the absolute file `path` lies: (the outermost root holding it, its path below that root)."""
        holders = [(folder, name) for name, folder in self.folders.items()
                   if path.startswith(folder.rstrip(os.sep) + os.sep)]
        folder, name = min(holders, key=lambda h: len(h[0]), default=(os.path.dirname(path), None))
        return Place(name or Path(folder).name or "root", Path(os.path.relpath(path, folder)).as_posix())
