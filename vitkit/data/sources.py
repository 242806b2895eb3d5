"""Command-line inputs -> an ordered list of image paths: files as given, folders recursively (sorted),
globs (sorted, `**` allowed). A named file that does not exist stays in the list, so that it gets its own
error row instead of stopping the batch.

Try it:  python -c "from vitkit.data.sources import expand_inputs; print(len(expand_inputs(['../shared/images'])))"
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jfif"}
GLOB_CHARS = set("*?[")
IGNORED_DIRS = {"__MACOSX"}  # macOS archive litter: resource forks named like the images


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def images_under(folder: str | Path) -> list[str]:
    """Image files below `folder` at any depth (symlinks followed, hidden entries skipped), sorted."""
    found = []
    for current, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in IGNORED_DIRS)
        found += [os.path.join(current, f) for f in files if is_image_name(Path(f))]
    return sorted(found)


def expand_inputs(inputs: list[str]) -> list[str]:
    paths: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += sorted(str(p) for p in path.rglob("*") if p.is_file() and is_image_name(p))
        elif GLOB_CHARS & set(item) and not path.exists():
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no files match {item!r}")
            paths += [m for m in matches if Path(m).is_file()]
        else:
            paths.append(item)
    return paths
