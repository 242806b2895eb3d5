"""Command-line inputs -> an ordered list of image paths: files as given, folders recursively (sorted),
globs (sorted, `**` allowed). A named file that does not exist stays in the list, so that it gets its own
error row instead of stopping the batch. Folder scans count what they leave out (other files, image formats
vitkit does not read, unreadable folders, symlink loops) and work at any depth.

Try it:  python -c "from vitkit.data.sources import expand_inputs; print(len(expand_inputs(['../shared/images'])))"
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".dib", ".tif", ".tiff", ".webp",
                  ".ppm", ".pgm", ".pbm", ".pnm", ".avif", ".jp2", ".j2k", ".jpx", ".mpo"}
# image files that a folder scan skips on purpose (vitkit.limits.IMAGE_FORMATS says why); they are counted
UNSUPPORTED_SUFFIXES = {".ico", ".icns", ".cur", ".psd", ".tga", ".pcx", ".eps", ".ps", ".svg", ".heic", ".heif",
                        ".dds", ".xcf", ".raw", ".cr2", ".nef", ".dng"}
GLOB_CHARS = set("*?[")
IGNORED_DIRS = {"__MACOSX"}  # macOS archive litter: resource forks named like the images


@dataclass
class Scan:
    paths: list[str]  # the inputs, in order
    skipped: Counter = field(default_factory=Counter)  # reason -> files or folders left out of folder scans

    def note(self) -> str | None:
        """One line on what folder scans left out, or None when nothing was."""
        if not self.skipped:
            return None
        return "skipped: " + ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))


def is_utf8(path: str) -> bool:
    """False for a file name holding bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def walk_images(folder: str | Path, skipped: Counter | None = None) -> list[str]:
    """Image files below `folder` at any depth, sorted; symlinked folders are followed once (a loop is cut),
    hidden entries are skipped. Without recursion, so any depth works. What is left out is counted in
    `skipped`: unsupported image formats, other files, folders that cannot be read, symlink loops."""
    skipped = Counter() if skipped is None else skipped
    found, stack, seen = [], [str(folder)], set()
    while stack:
        current = stack.pop()
        try:
            info = os.stat(current)
            if (info.st_dev, info.st_ino) in seen:
                skipped["symlink loops"] += 1
                continue
            seen.add((info.st_dev, info.st_ino))
            entries = list(os.scandir(current))
        except OSError:
            skipped["folders that cannot be read"] += 1
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                if entry.name not in IGNORED_DIRS:
                    stack.append(entry.path)
            elif is_image_name(Path(entry.name)):
                found.append(entry.path)
            elif Path(entry.name).suffix.lower() in UNSUPPORTED_SUFFIXES:
                skipped[f"{Path(entry.name).suffix.lower()} files (an image format vitkit does not read)"] += 1
            else:
                skipped["files that are not images"] += 1
    return sorted(found)


def scan_inputs(inputs: list[str]) -> Scan:
    """Files as given (a named file that does not exist keeps its place and gets an error row), folders
    recursively, globs (sorted, `**` allowed)."""
    scan = Scan([])
    for item in inputs:
        if not item.strip():
            raise ValueError("an empty input path: name files, folders or globs")
        path = Path(item)
        if path.is_dir():
            scan.paths += walk_images(path, scan.skipped)
        elif GLOB_CHARS & set(item) and not path.exists():
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no files match {item!r}")
            scan.paths += [m for m in matches if Path(m).is_file()]
        else:
            scan.paths.append(item)
    return scan


def expand_inputs(inputs: list[str]) -> list[str]:
    return scan_inputs(inputs).paths
