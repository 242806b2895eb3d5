"""Labelled images for fine-tuning, served (`LabelledImages`); finding them is vitkit.data.labelled.discover.

Randomness: `LabelledImages` seeds a fresh `torch.Generator` for each (seed, epoch, index), so a sample's
augmentation does not depend on the worker, the process, the rank or an interruption.

Try it:  python -m pytest tests/test_train_data.py -q
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from vitkit.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, read_error
from vitkit.data.labelled import Item

Transform = Callable[[Image.Image, torch.Generator], torch.Tensor]

class BadImageWarning(UserWarning):
    """A training image could not be read and another one took its place."""


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
    Multi-label items (path, (label, ...)) with `num_classes` -> (pixels, multi-hot float32 (num_classes,)).

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
                 on_error: str = "substitute", max_consecutive_failures: int = 16, num_classes: int | None = None):
        if on_error not in ("substitute", "raise"):
            raise ValueError(f"on_error must be 'substitute' or 'raise', not {on_error!r}")
        sample_seed(seed)  # validates
        self.items = [(str(path), tuple(int(i) for i in label) if isinstance(label, tuple) else int(label))
                      for path, label in items]
        if num_classes is None and any(isinstance(label, tuple) for _, label in self.items):
            raise ValueError("multi-label items need num_classes")
        self.num_classes = num_classes
        self.transform, self.seed, self.epoch = transform, int(seed), 0
        self.max_pixels, self.draft_size = max_pixels, draft_size
        self.on_error, self.max_consecutive_failures = on_error, max_consecutive_failures
        self.failures: dict[str, str] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list:
        """Each item's label index (single-label) or tuple of indices (multi-label)."""
        return [label for _, label in self.items]

    def target(self, label: int | tuple[int, ...]) -> int | torch.Tensor:
        """What a batch holds for `label`: the index, or a multi-hot float32 (num_classes,) for a label set."""
        if not isinstance(label, tuple):
            return label
        hot = torch.zeros(self.num_classes)
        hot[list(label)] = 1.0
        return hot

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
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
            return self.transform(image, generator), self.target(label)
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
