"""Decode + preprocess in worker processes while the model runs, in input order, one bad file never
stopping the rest: each batch carries the pixels of the good inputs and the error of each bad one.

Try it:  python -m pytest tests/test_classify.py -q
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from vitkit.config import PreprocessSpec
from vitkit.data.decode import DEFAULT_MAX_PIXELS, decode_image, read_error
from vitkit.data.transforms import preprocess
from vitkit.data.workers import die_with_parent, worker_context


@dataclass
class Batch:
    indices: list[int]  # positions in the input list of the decoded images, in order
    pixels: torch.Tensor  # (len(indices), 3, H, W)
    errors: dict[int, str]  # position -> reason, for inputs that could not be decoded


class ImageFiles(Dataset):
    def __init__(self, paths: list[str], spec: PreprocessSpec, max_pixels: int, draft: bool):
        self.paths, self.spec, self.max_pixels, self.draft = paths, spec, max_pixels, draft

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            draft_size = self.spec.resize if self.draft else None
            image = decode_image(self.paths[index], max_pixels=self.max_pixels, draft_size=draft_size)
            return index, preprocess(image, self.spec), None
        except Exception as err:  # noqa: BLE001 - one file's failure, whatever it is, is that file's row
            return index, None, read_error(err)


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> Batch:
    good = [(i, pixels) for i, pixels, _ in items if pixels is not None]
    pixels = torch.stack([p for _, p in good]) if good else torch.empty(0)
    return Batch([i for i, _ in good], pixels, {i: err for i, _, err in items if err is not None})


def iter_batches(paths: list[str], spec: PreprocessSpec, batch_size: int = 16, workers: int = 0,
                 max_pixels: int = DEFAULT_MAX_PIXELS, draft: bool = False, pin_memory: bool = False,
                 plan: list[list[int]] | None = None, start_method: str | None = None) -> Iterator[Batch]:
    """Batches over `paths` in order, or over an explicit `plan` (lists of positions in `paths`, e.g. the
    unfinished chunks of a resumed job). Workers decode ahead while the caller runs the model; memory stays
    bounded by `workers * prefetch` batches whatever the number of inputs. `start_method` ("forkserver",
    "spawn") starts workers without forking the caller, for callers whose libraries must not be forked."""
    if plan is None:
        plan = [list(range(i, min(i + batch_size, len(paths)))) for i in range(0, len(paths), batch_size)]
    dataset = ImageFiles(paths, spec, max_pixels, draft)
    loader = DataLoader(dataset, batch_sampler=plan, num_workers=workers, collate_fn=_collate,
                        worker_init_fn=die_with_parent, pin_memory=pin_memory,
                        generator=torch.Generator(),  # its own: a DataLoader draws a seed from the global one

                        prefetch_factor=4 if workers else None,
                        multiprocessing_context=worker_context(start_method) if workers else None)
    yield from loader
