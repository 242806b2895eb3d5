"""Frozen features for the linear probe: the head's input (pre-logits) for every image, computed once and
cached on disk, keyed by the backbone's weights and the data; and the same for a distillation teacher's logits
(outputs="logits": keyed by all its weights, heads included).

View 0 is the checkpoint's eval transform; views 1..K are augmented (the run's train transform, seeded
per (seed, view, image)). Each view is its own cache entry: a crash loses at most the chunk in flight
(chunks are written atomically as they finish, as batch jobs do), and a re-run, or another run on the
same data with another --out or recipe, reads the finished entries back. An image that cannot be read
gets NaN features and is left out by the caller.

Cache folder: $VITKIT_CACHE_DIR/features, default ~/.cache/vitkit/features; delete it to free the space.

Try it:  python -m pytest tests/test_probe.py -q
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sys

import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vitkit.checkpoints.io import write_tensors
from vitkit.data.decode import ImageDecodeError
from vitkit.data.workers import die_with_parent
from vitkit.models.vit import VisionTransformer
from vitkit.batch.job import Job
from vitkit.batch.map import PROGRESS_MIN_INPUTS, Chunk, concat_chunks
from vitkit.cache import cache_dir
from vitkit.data.labelled import Item
from vitkit.train.datasets import LabelledImages

CHUNK = 256
HEAD_KEYS = ("head.", "head_dist.")


def backbone_digest(net: VisionTransformer, heads: bool = False) -> str:
    """A digest of every weight the features depend on (all but the heads, unless `heads`), names and shapes
    included."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(net.state_dict().items()):
        if name.startswith(HEAD_KEYS) and not heads:
            continue
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _files_digest(items: list[Item]) -> str:
    """Paths with their size and modification time: a changed or replaced file is another entry."""
    digest = hashlib.blake2b(digest_size=16)
    for path, _ in items:
        try:
            stat = os.stat(path)
            digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{os.path.abspath(path)}\0missing\n".encode())
    return digest.hexdigest()


class _Views(Dataset):
    """(position, pixels or None, error or None) of one view of the images: errors are rows, not crashes."""

    def __init__(self, images: LabelledImages):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        try:
            return index, self.images[index][0], None
        except (ImageDecodeError, OSError) as err:
            return index, None, str(err)


def _collate(rows):
    return rows


class FeatureExtractor:
    """Pre-logit features (or, outputs="logits", the logits) of `net` (the plain network; an inference copy is
    made for speed) for lists of images under a transform, cached by (weights, files, transform, view, seed).
    `adapt` maps the transform's pixels to the net's own input (a teacher with other preprocessing than the run's
    student); its repr is part of the cache key."""

    def __init__(self, net: VisionTransformer, device: torch.device, batch_size: int = 32, workers: int = 1,
                 progress: bool = True, outputs: str = "pre_logits", adapt=None):
        from vitkit.runtime import prepare

        if outputs not in ("pre_logits", "logits"):
            raise ValueError(f"outputs must be 'pre_logits' or 'logits', not {outputs!r}")
        self.outputs, self.adapt = outputs, adapt
        self.digest = backbone_digest(net, heads=outputs == "logits")
        self.net = prepare(copy.deepcopy(net).eval(), "eager", "fp32", device)
        self.device, self.batch_size, self.workers, self.progress = device, batch_size, workers, progress
        self.width = net.config.num_classes if outputs == "logits" else net.config.embed_dim

    def features(self, items: list[Item], transform, seed: int, view: int, what: str) -> torch.Tensor:
        """(N, D) float32 features of `items`; NaN rows where an image could not be read."""
        key = hashlib.blake2b(json.dumps({
            "backbone": self.digest, "files": _files_digest(items), "transform": repr(transform),
            "seed": seed, "view": view, **({"outputs": self.outputs, "adapt": repr(self.adapt)}
                                           if self.outputs == "logits" else {})},
            sort_keys=True).encode(), digest_size=16).hexdigest()
        target = cache_dir("features") / f"{key}.safetensors"
        if target.is_file():
            return load_file(target)["features"]
        job = Job([path for path, _ in items], target, {"key": key}, CHUNK)
        job.open()
        done = job.done()
        images = LabelledImages([(path, 0) for path, _ in items], transform, seed, on_error="raise")  # pixels only
        images.set_epoch(view)
        plan = [list(job.chunk_range(c)) for c in range(job.num_chunks) if c not in done]
        todo = sum(len(p) for p in plan)
        loader = DataLoader(_Views(images), batch_sampler=[p[i:i + self.batch_size] for p in plan
                                                           for i in range(0, len(p), self.batch_size)],
                            num_workers=self.workers, collate_fn=_collate, worker_init_fn=die_with_parent,
                            generator=torch.Generator())  # its own: a loader draws a seed from the global one
        pending: dict[int, list[Chunk]] = {}
        show = self.progress and todo >= PROGRESS_MIN_INPUTS
        with tqdm(total=todo, unit="img", desc=f"features: {what}", disable=not show, file=sys.stderr,
                  dynamic_ncols=True, leave=False) as bar:
            for rows in loader:  # batches never straddle chunks
                chunk = rows[0][0] // CHUNK
                pending.setdefault(chunk, []).append(self._batch(rows))
                if sum(len(piece.rows) for piece in pending[chunk]) == len(job.chunk_range(chunk)):
                    job.write(chunk, concat_chunks(pending.pop(chunk)))
                bar.update(len(rows))
        features = torch.cat([chunk.arrays["features"] for chunk in job.read()])  # (N, D)
        write_tensors({"features": features}, target)
        job.close()
        return features

    @torch.inference_mode()
    def _batch(self, rows) -> Chunk:
        """Rows (position, pixels or None, error) in position order -> features (n, D), NaN where unread."""
        out = torch.full((len(rows), self.width), float("nan"))  # (n, D)
        good = [k for k, (_, pixels, _) in enumerate(rows) if pixels is not None]
        if good:
            pixels = torch.stack([rows[k][1] for k in good]).to(self.device)  # (b, 3, H, W)
            if self.adapt is not None:
                pixels = self.adapt(pixels)
            tokens = self.net.forward_features(pixels)
            out[good] = (self.net.forward_head(tokens) if self.outputs == "logits" else
                         self.net.forward_head(tokens, pre_logits=True)).float().cpu()
        return Chunk([{"error": error} for _, _, error in rows], {"features": out})
