"""A corpus of hostile inputs for the hardening tests (tests/test_hostile.py, tests/test_service_hostile.py):
files that are small on disk and large, slow, blocking or strange once opened, absurd model folders, and a
helper that runs a vitkit command in a fresh process and measures its peak memory and time.

Each maker writes one case into a folder and returns its path; none needs more than a few MB or seconds.

Run:  .venv/bin/python -m pytest tests/test_hostile.py -q
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# peak RSS from /proc/self/status VmHWM: this process's own (getrusage's ru_maxrss keeps the parent's peak
# across fork + exec on Linux, so a child of a 1 GB pytest would report 1 GB)
MEASURED = """
import json, sys, time
from vitkit.cli import main
start = time.perf_counter()
try:
    code = main(sys.argv[2:])
except SystemExit as exit:
    code = exit.code
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
json.dump({"rc": code, "peak_mb": peak / 1024, "seconds": time.perf_counter() - start}, open(sys.argv[1], "w"))
"""


def run_measured(args: list, tmp: Path, timeout: float = 120) -> dict:
    """`vitkit ARGS` in a new process: {rc, peak_mb, seconds, stdout, stderr} (peak RSS of that process)."""
    result = tmp / f"measure-{os.getpid()}-{len(list(tmp.glob('measure-*')))}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", MEASURED, str(result), *map(os.fsdecode, args)], env=env,
                          capture_output=True, timeout=timeout)
    out = json.loads(result.read_text()) if result.is_file() else {"rc": done.returncode, "peak_mb": None,
                                                                    "seconds": None}
    return out | {"stdout": done.stdout.decode(errors="replace"), "stderr": done.stderr.decode(errors="replace")}


def photo(path: Path, size=(300, 200), seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def strip(path: Path, width: int = 1, height: int = 50_000) -> Path:
    """A few hundred bytes that a shorter-side resize turns into a 224 x 11-million-pixel image."""
    Image.new("RGB", (width, height), (120, 30, 200)).save(path)
    return path


def big_png(side: int) -> bytes:
    """A side x side 8-bit grey PNG of zeros, compressed while it is made (never held whole)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer, row, parts = zlib.compressobj(9), b"\x00" * (side + 1), []
    for _ in range(side):
        parts.append(packer.compress(row))
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def ico_bomb(path: Path, side: int = 20_000) -> Path:
    """A 16x16 ICO directory entry whose image is a side x side PNG (Pillow decodes it inside Image.open)."""
    png = big_png(side)
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 6 + 16)
    path.write_bytes(struct.pack("<HHH", 0, 1, 1) + entry + png)
    return path


def icns_bomb(path: Path, side: int = 20_000) -> Path:
    png = big_png(side)
    element = b"ic10" + struct.pack(">I", 8 + len(png)) + png
    path.write_bytes(b"icns" + struct.pack(">I", 8 + len(element)) + element)
    return path


def corrupt_avif(path: Path) -> Path:
    """A 64x64 AVIF whose bytes after `pitm` are overwritten: Pillow's AVIF reader raises RuntimeError."""
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(out, "AVIF")
    data = bytearray(out.getvalue())
    at = data.find(b"pitm") + 4
    data[at:at + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    return path


def npz_bomb(path: Path, megabytes: int = 512) -> Path:
    """A few hundred KB of .npz holding a `megabytes` MB float64 array of zeros (written in pieces)."""
    count = megabytes * 2**20 // 8
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (count,)})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel.npy", "w", force_zip64=True) as fh:
            fh.write(header.getvalue())
            block = b"\x00" * 2**22
            for _ in range(count * 8 // len(block)):
                fh.write(block)
    return path


HF_VIT = {"model_type": "vit", "architectures": ["ViTForImageClassification"], "hidden_size": 32,
          "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64, "image_size": 32,
          "patch_size": 8, "num_channels": 3, "layer_norm_eps": 1e-12, "hidden_act": "gelu"}
HF_PREPROCESSOR = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
                   "resample": 2, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


def hf_folder(path: Path, config: dict | None = None, preprocessor: dict | None = None) -> Path:
    """A transformers folder with a (tiny, unrelated) weights file and the given config fields."""
    from safetensors.torch import save_file
    import torch

    path.mkdir(parents=True, exist_ok=True)
    save_file({"vit.embeddings.cls_token": torch.zeros(1, 1, 32)}, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(HF_VIT | (config or {})))
    (path / "preprocessor_config.json").write_text(json.dumps(HF_PREPROCESSOR | (preprocessor or {})))
    return path


def malformed_safetensors(path: Path) -> Path:
    path.write_bytes(struct.pack("<Q", 40) + b'{"a": {"dtype": "F32", "shape": [9999999' + b"\x00" * 16)
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def non_utf8_name(folder: Path, seed: int = 1) -> Path:
    """A PNG whose file name holds bytes that are not UTF-8 (b'\\xff\\xfe')."""
    return photo(Path(os.fsdecode(os.fsencode(folder) + b"/\xff\xfe-photo.png")), seed=seed)


def deep_folders(root: Path, depth: int = 1100) -> Path:
    """root/d/d/.../d/deep.png, `depth` folders down (deeper than Python's recursion limit)."""
    folder = root
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(depth):  # one level at a time: Path.mkdir(parents=True) recurses
        folder = folder / "d"
        os.mkdir(folder)
    return photo(folder / "deep.png")


def remove_tree(root: Path) -> None:
    """Delete a folder tree of any depth (shutil.rmtree recurses, and fails past ~1000 levels)."""
    stack, folders = [str(root)], []
    while stack:
        folder = stack.pop()
        folders.append(folder)
        for entry in os.scandir(folder):
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            else:
                os.unlink(entry.path)
    for folder in reversed(folders):
        os.rmdir(folder)
