"""Read and write flat tensor dicts: safetensors (memory-mapped), PyTorch pickles (weights only), JAX .npz.

This module knows no model. Pickles are code: `.bin`/`.pth` files load with `torch.load(weights_only=True)`
or not at all.

Try it:  python -c "from vitkit.checkpoints.io import read_tensors; \
print(len(read_tensors('../shared/weights/deit-tiny-patch16-224/model.safetensors')))"
"""

from __future__ import annotations

import json
import math
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vitkit.limits import MAX_ARRAY_BYTES, MAX_INFLATION

PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import: the process's umask, restored at once
WRAPPER_KEYS = ("state_dict", "model", "module", "model_ema", "params")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from one weights file or a sharded `*.index.json`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}")
    name = path.name
    if name.endswith(".index.json"):
        return _read_sharded(path)
    if name.endswith(".safetensors"):
        try:
            return load_file(path)  # memory-mapped: tensors are read from the page cache, not copied up front
        except SafetensorError as err:
            raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from None
    if name.endswith(PICKLE_SUFFIXES):
        return _unwrap(_read_pickle(path), path)
    if name.endswith(".npz"):
        _check_npz(path)
        with np.load(path, allow_pickle=False) as npz:
            return {key: torch.from_numpy(np.array(npz[key])) for key in npz.files}
    raise CheckpointError(
        f"unsupported weights file {path.name}: expected .safetensors, .bin/.pth/.pt (PyTorch), .npz (JAX) "
        "or a sharded *.index.json"
    )


def _check_npz(path: Path) -> None:
    """Every member's header (dtype, shape) and sizes, read before any array: a member that inflates far
    beyond its stored size (a zip bomb), an object array or an oversized tensor is refused."""
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.compress_type != zipfile.ZIP_STORED and member.file_size > 2**26 and \
                        member.file_size > MAX_INFLATION * max(member.compress_size, 1):
                    raise CheckpointError(f"{path}: {member.filename} inflates from {member.compress_size} to "
                                          f"{member.file_size} bytes, more than {MAX_INFLATION}x: refused (zip bomb?)")
                with archive.open(member) as stream:
                    version = np.lib.format.read_magic(stream)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(stream)
                if dtype.hasobject or dtype.kind not in "biuf":
                    raise CheckpointError(f"{path}: {member.filename} holds {dtype} values, not numbers")
                if math.prod(shape) * dtype.itemsize > MAX_ARRAY_BYTES:
                    raise CheckpointError(f"{path}: {member.filename} is {shape} {dtype}, larger than "
                                          f"{MAX_ARRAY_BYTES / 2**30:.0f} GiB")
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path} is not a readable .npz archive: {err}") from None


def _read_pickle(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):  # legacy (non-zip) pickles cannot be memory-mapped; retry plainly
            raise CheckpointError(f"cannot read {path}: {err}") from err
    except pickle.UnpicklingError as err:
        raise _refused(path, err) from err
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _refused(path, err) from err
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise CheckpointError(f"cannot read {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") \
            from None


def _refused(path: Path, err: Exception) -> CheckpointError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return CheckpointError(
        f"refused to load {path}: it is a pickle that needs more than tensors to unpickle, and loading it "
        f"could run code from the file ({reason}). vitkit loads pickles only with torch.load(weights_only=True). "
        "If you trust the file, convert it to safetensors in an isolated environment and load that."
    )


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    """Training checkpoints nest the weights ({'model': {...}, 'optimizer': ...}); take the tensor dict."""
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise CheckpointError(f"{path} holds no tensors (top-level keys: {sorted(obj)[:10]})")
        obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a state dict (found {type(obj).__name__})")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return {k.removeprefix("module."): v for k, v in tensors.items()}


def _read_sharded(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{index} is not a sharded checkpoint index (a JSON object with a 'weight_map' "
                              f"of tensor -> file): {type(err).__name__} {err}") from None
    tensors = {}
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise CheckpointError(f"{index} names shard {shard!r}: shards must be files beside the index")
        tensors.update(read_tensors(index.parent / shard))
    return tensors


def publish(tmp: Path, target: Path) -> None:
    """Move a finished temporary file onto `target` with the usual permissions (writers such as safetensors'
    replace the temporary file with an owner-only one)."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, target)


def atomic_path(target: Path):
    """A temporary path beside `target`; call `publish(tmp, target)` when the write succeeded."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; outputs get the usual permissions
    return Path(tmp)


def write_atomic_bytes(data: bytes, target: str | Path) -> None:
    """Write `data` to `target` so that it appears whole or not at all."""
    target = Path(target)
    tmp = atomic_path(target)
    try:
        tmp.write_bytes(data)
        publish(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic_text(text: str, target: str | Path) -> None:
    write_atomic_bytes(text.encode(), target)


def write_tensors(tensors: dict[str, torch.Tensor], target: str | Path, metadata: dict[str, str] | None = None):
    """Write .safetensors, .npz or .bin/.pth atomically (a crash never leaves a half-written file)."""
    target = Path(target)
    tmp = atomic_path(target)
    contiguous = {k: v.detach().contiguous().clone() for k, v in tensors.items()}  # no shared storage
    try:
        if target.name.endswith(".safetensors"):
            save_file(contiguous, tmp, metadata=metadata)
        elif target.name.endswith(".npz"):
            with open(tmp, "wb") as fh:
                np.savez(fh, **{k: v.float().numpy() for k, v in contiguous.items()})
        elif target.name.endswith(PICKLE_SUFFIXES):
            torch.save(contiguous, tmp)
        else:
            raise CheckpointError(f"cannot write {target.name}: use .safetensors, .npz, .bin or .pth")
        publish(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
