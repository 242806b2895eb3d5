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
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout
from safetensors import safe_open
from safetensors.torch import save_file

from vitkit.batch import distributed
from vitkit.batch.map import Chunk, Step, concat_chunks, map_images, positions
from vitkit.checkpoints.io import atomic_path, publish
from vitkit.checkpoints.provenance import weights_digest
from vitkit.data.decode import DEFAULT_MAX_PIXELS
from vitkit.output import json_text

LOCK = "job.lock"


@dataclass(frozen=True)
class Loader:
    """How a run decodes its inputs."""

    batch_size: int = 16
    workers: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS
    fast_decode: bool = False
    progress: bool = True


@dataclass
class Stats:
    total: int
    already_done: int  # inputs finished by an earlier run of the same job
    processed: int  # inputs run now (all ranks together)
    errors: int  # of those, inputs that could not be read


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
        try:
            if self._resumes():
                return
        except RuntimeError:
            self.release()  # refused: the lock goes too, so this process can run another job on this output
            raise
        tmp = atomic_path(self.parts / "job.json")
        tmp.write_text(json.dumps(self.fingerprint, sort_keys=True))
        publish(tmp, self.parts / "job.json")

    def _resumes(self) -> bool:
        """True when the parts folder holds this same job (resume it); False when it holds none; RuntimeError when
        it holds another job's parts."""
        manifest = self.parts / "job.json"
        if not manifest.is_file() and self.done():
            raise RuntimeError(f"{self.parts} holds parts without a job.json, so whose they are is unknown: "
                               "delete that folder to start over, or choose another --output")
        if not manifest.is_file():
            return False
        found = json.loads(manifest.read_text())
        if found != self.fingerprint:
            changed = sorted(k for k in set(found) | set(self.fingerprint) if found.get(k) != self.fingerprint.get(k))
            raise RuntimeError(f"{self.parts} holds an unfinished job with other {', '.join(changed)}: "
                               "delete that folder to start over, or choose another --output")
        return True

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


def run(job: Job, spec, process: Step, batch_size: int, workers: int, max_pixels: int, fast_decode: bool,
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


def _run_chunks(job: Job, rank: int, world: int, spec, step: Step, batch_size: int, workers: int,
                max_pixels: int, fast_decode: bool, pin_memory: bool, progress: bool) -> Stats:
    done = job.done()
    mine = [c for c in range(job.num_chunks) if c % world == rank and c not in done]
    already = sum(len(job.chunk_range(c)) for c in done)
    if already and rank == 0:
        print(f"resuming: {already} of {len(job.paths)} inputs already done", file=sys.stderr)
    plan = []  # batches never straddle chunks, so a chunk is complete when its last batch is
    for chunk in mine:
        covered = job.chunk_range(chunk)
        plan += [list(covered[i:i + batch_size]) for i in range(0, len(covered), batch_size)]
    pending: dict[int, list[Chunk]] = {}
    processed = errors = 0
    for batch, result in map_images(job.paths, spec, step, batch_size=batch_size, workers=workers,
                                    max_pixels=max_pixels, fast_decode=fast_decode, pin_memory=pin_memory,
                                    progress=progress and rank == 0, plan=plan):
        chunk = positions(batch)[0] // job.chunk_size
        pending.setdefault(chunk, []).append(result)
        processed, errors = processed + len(result.rows), errors + len(batch.errors)
        if sum(len(p.rows) for p in pending[chunk]) == len(job.chunk_range(chunk)):
            job.write(chunk, concat_chunks(pending.pop(chunk)))
    processed, errors = distributed.sum_over_ranks([processed, errors])
    return Stats(len(job.paths), already, processed, errors)


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


def check_output(output: str | Path | None, chunk_size: int, batch_size: int) -> None:
    """What a run can know is wrong before any work: under torchrun an output file is needed (each rank writes
    its parts, rank 0 merges), chunks hold whole batches, and the output must be a file that can be written."""
    if distributed.rank_and_world()[1] > 1 and not output:
        raise ValueError("under torchrun, give --output: each rank writes its part and rank 0 merges them")
    if chunk_size % batch_size:
        raise ValueError(f"--chunk-size {chunk_size} must be a multiple of --batch-size {batch_size}")
    if output is None:
        return
    target = Path(output)
    if target.is_dir():
        raise ValueError(f"--output {output} is a folder: give a file name")
    if target.parent.exists() and not target.parent.is_dir():
        raise ValueError(f"--output {output}: {target.parent} is not a folder")


def run_to_file(model, paths: list[str], output: str | Path, settings: dict, step: Step,
                merge: Callable[[Iterator[Chunk], Path], None], chunk_size: int = 256,
                loader: Loader = Loader()) -> Stats:
    """`step` over `paths` with `model` as a resumable job whose parts `merge` writes into `output` (atomically,
    on rank 0, when all are done). `settings` (what the rows depend on) join the model and its input size in
    the job's fingerprint: a re-run with other settings is refused rather than mixed in."""
    check_output(output, chunk_size, loader.batch_size)
    weights = weights_digest(getattr(model, "provenance", {}) or {})  # changed weights: never resumed
    job = Job(paths, output, {"model": model.source_id, "input_size": model.spec.input_size,
                              **({"weights": weights} if weights else {}), **settings}, chunk_size)
    stats = run(job, model.spec, step, loader.batch_size, loader.workers, loader.max_pixels, loader.fast_decode,
                pin_memory=model.device.type == "cuda", progress=loader.progress)
    if finish(job, merge):
        print(f"wrote {output}: {stats.total} rows ({stats.already_done} from an earlier run, {stats.processed} "
              f"now, {stats.errors} unreadable)", file=sys.stderr)
    return stats
