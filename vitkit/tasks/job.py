"""Resumable, shardable batch jobs over a list of inputs.

The inputs are cut into chunks of `chunk_size`. Each finished chunk is written atomically as one part file
in `<output>.parts/`; a re-run with the same inputs and settings finds the parts and runs only the missing
chunks (a job killed with SIGKILL loses at most the chunk in flight). When every chunk is done the parts are
merged in input order into the output, written atomically, and the parts folder is removed.

Past one machine: under `torchrun`, rank r takes chunks r, r + W, r + 2W, ...; every rank writes its own
parts into the shared parts folder and rank 0 merges them once all ranks are done.

Try it:  python -m pytest tests/test_job.py -q
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from vitkit.checkpoints.io import atomic_path, publish
from vitkit.data.loader import Batch, iter_batches
from vitkit.output import json_text
from vitkit.tasks import distributed

PROGRESS_MIN_INPUTS = 32  # short runs finish before a bar would help
LOCK = "job.lock"


@dataclass
class Chunk:
    """Results for a run of consecutive inputs: one row per input (path, error, task fields) and, for
    tasks that produce arrays, one array row per input (NaN where the input failed)."""

    rows: list[dict]
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Stats:
    total: int
    already_done: int  # inputs finished by an earlier run of the same job
    processed: int  # inputs run now (all ranks together)
    errors: int  # of those, inputs that could not be read


# A task turns one decoded batch into rows (and array rows) for its inputs, errors included.
BatchFn = Callable[[Batch, list[str]], Chunk]


class Job:
    def __init__(self, paths: list[str], output: str | Path, settings: dict, chunk_size: int):
        self.paths = paths
        self.output = Path(output)
        self.chunk_size = chunk_size
        self.parts = self.output.with_name(self.output.name + ".parts")
        digest = hashlib.sha256("\0".join(paths).encode("utf-8", "surrogateescape")).hexdigest()
        self.fingerprint = {"inputs": digest, "count": len(paths), "chunk_size": chunk_size, **settings}

    @property
    def num_chunks(self) -> int:
        return -(-len(self.paths) // self.chunk_size)

    def chunk_range(self, chunk: int) -> range:
        return range(chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, len(self.paths)))

    def _part(self, chunk: int) -> Path:
        return self.parts / f"part-{chunk:07d}.safetensors"

    def open(self) -> None:
        """Create the parts folder and lock it for this job (a second job on the same output is refused at
        once; the lock dies with a killed process), or check that the one there belongs to this same job."""
        self.parts.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(self.parts / LOCK, timeout=0)
        try:
            self._lock.acquire()
        except Timeout:
            raise RuntimeError(f"another job is writing {self.output} now (its parts folder {self.parts} is "
                               "locked): wait for it to finish, or choose another --output") from None
        manifest = self.parts / "job.json"
        if not manifest.is_file() and self.done():
            raise RuntimeError(f"{self.parts} holds parts without a job.json, so whose they are is unknown: "
                               "delete that folder to start over, or choose another --output")
        if manifest.is_file():
            found = json.loads(manifest.read_text())
            if found != self.fingerprint:
                changed = sorted(k for k in set(found) | set(self.fingerprint) if found.get(k) != self.fingerprint.get(k))
                raise RuntimeError(f"{self.parts} holds an unfinished job with other {', '.join(changed)}: "
                                   "delete that folder to start over, or choose another --output")
            return
        tmp = atomic_path(manifest)
        tmp.write_text(json.dumps(self.fingerprint, sort_keys=True))
        publish(tmp, manifest)

    def done(self) -> set[int]:
        return {int(p.stem.split("-")[1]) for p in self.parts.glob("part-*.safetensors")}

    def write(self, chunk: int, result: Chunk) -> None:
        tmp = atomic_path(self._part(chunk))
        try:
            tensors = {k: v.contiguous() for k, v in result.arrays.items()}
            save_file(tensors, tmp, metadata={"rows": json_text(result.rows)})
            publish(tmp, self._part(chunk))
        finally:
            tmp.unlink(missing_ok=True)

    def read(self) -> Iterator[Chunk]:
        """Every chunk, in input order (all must be done)."""
        for chunk in range(self.num_chunks):
            with safe_open(self._part(chunk), framework="pt") as fh:
                arrays = {k: fh.get_tensor(k) for k in fh.keys()}
                yield Chunk(json.loads(fh.metadata()["rows"]), arrays)

    def close(self) -> None:
        shutil.rmtree(self.parts, ignore_errors=True)
        self.release()

    def release(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None and lock.is_locked:
            lock.release()


def run(job: Job, spec, process: BatchFn, batch_size: int, workers: int, max_pixels: int, fast_decode: bool,
        pin_memory: bool, progress: bool = True) -> Stats:
    """Runs this rank's unfinished chunks of `job`, writing each as it completes."""
    rank, world = distributed.rank_and_world()
    failure = None
    if rank == 0:
        try:
            job.open()
        except RuntimeError as err:
            failure = err
    if distributed.sum_over_ranks([int(failure is not None)])[0]:  # every rank learns that rank 0 failed
        raise failure or RuntimeError(f"rank 0 could not open the job {job.output} (its error says why)")
    try:
        return _run_chunks(job, rank, world, spec, process, batch_size, workers, max_pixels, fast_decode,
                           pin_memory, progress)
    except BaseException:
        job.release()  # an interrupted job: the next run (in this process too) may resume it
        raise


def _run_chunks(job: Job, rank: int, world: int, spec, process: BatchFn, batch_size: int, workers: int,
                max_pixels: int, fast_decode: bool, pin_memory: bool, progress: bool) -> Stats:
    done = job.done()
    mine = [c for c in range(job.num_chunks) if c % world == rank and c not in done]
    already = sum(len(job.chunk_range(c)) for c in done)
    if already and rank == 0:
        print(f"resuming: {already} of {len(job.paths)} inputs already done", file=sys.stderr)
    plan = []  # batches never straddle chunks, so a chunk is complete when its last batch is
    for chunk in mine:
        positions = job.chunk_range(chunk)
        plan += [list(positions[i:i + batch_size]) for i in range(0, len(positions), batch_size)]
    todo = sum(len(b) for b in plan)
    show = progress and rank == 0 and todo >= PROGRESS_MIN_INPUTS
    pending: dict[int, list[Chunk]] = {}
    processed = errors = 0
    with tqdm(total=todo, unit="img", disable=not show, file=sys.stderr, dynamic_ncols=True) as bar:
        for batch in iter_batches(job.paths, spec, batch_size, workers, max_pixels, fast_decode, pin_memory, plan):
            first = min(batch.indices + list(batch.errors))
            chunk = first // job.chunk_size
            pending.setdefault(chunk, []).append(process(batch, job.paths))
            size = len(batch.indices) + len(batch.errors)
            processed, errors = processed + size, errors + len(batch.errors)
            if sum(len(p.rows) for p in pending[chunk]) == len(job.chunk_range(chunk)):
                job.write(chunk, concat_chunks(pending.pop(chunk)))
            bar.update(size)
    processed, errors = distributed.sum_over_ranks([processed, errors])
    return Stats(len(job.paths), already, processed, errors)


def concat_chunks(pieces: list[Chunk]) -> Chunk:
    """Consecutive pieces of one chunk as one Chunk."""
    rows = [row for piece in pieces for row in piece.rows]
    arrays = {k: torch.cat([piece.arrays[k] for piece in pieces]) for k in pieces[0].arrays}
    return Chunk(rows, arrays)


def finish(job: Job, merge: Callable[[Iterator[Chunk], Path], None]) -> bool:
    """Rank 0 merges all parts into the output (atomically) and removes them; True where this rank did."""
    distributed.barrier()
    if distributed.rank_and_world()[0] != 0:
        return False
    missing = set(range(job.num_chunks)) - job.done()
    if missing:
        raise RuntimeError(f"{len(missing)} chunks of {job.output} are unfinished; run the job again to finish them")
    tmp = atomic_path(job.output)
    try:
        merge(job.read(), tmp)
        publish(tmp, job.output)
    finally:
        tmp.unlink(missing_ok=True)
    job.close()
    return True
