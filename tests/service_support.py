"""Helpers of the service tests (tests/test_service*.py): a client of a fresh app (`serve`), an upload, the check
of an error answer, encoded test images (a decompression bomb too), a model wrapper that can hold the engine's
worker, and `FakeIndex`, an in-memory stand-in with the image index's API (info, check_model, search_vectors,
get, place) for app tests that need no LanceDB.

Run:  .venv/bin/python -m pytest tests/test_service_api.py -q
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import threading
import time
import zlib
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fastapi.testclient import TestClient
from PIL import Image

import vitkit
from vitkit.index.roots import Place
from vitkit.service.app import create_app
from vitkit.service.engine import Engine

DIGITS = Path(__file__).resolve().parents[1] / "vitkit" / "assets" / "digits-vit"


def image_bytes(seed: int = 0, size: tuple[int, int] = (40, 30), fmt: str = "PNG") -> bytes:
    """A seeded random RGB image (width, height), encoded."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def bomb_png(width: int, height: int) -> bytes:
    """A 1 x 1 PNG whose header claims width x height: what a decompression bomb looks like before decoding."""
    data = bytearray(image_bytes(0, size=(1, 1)))
    ihdr = data[12:29]  # chunk type + 13 bytes of header data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def load_digits() -> vitkit.Model:
    return vitkit.load(str(DIGITS))


def serve(model, index=None, api_key=None, engine: dict | None = None, **options) -> TestClient:
    """A client of a fresh app; use it in a `with` block (that starts and stops the engine)."""
    return TestClient(create_app(Engine(model, threads=1, **(engine or {})), index, api_key, **options))


def upload(data: bytes, name: str = "image.png") -> dict:
    return {"files": {"file": (name, data, "application/octet-stream")}}


def assert_error(response, status: int, pattern: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert re.search(pattern, response.json()["detail"]), response.json()


class Gated:
    """A model whose forward waits until `gate` is set (to hold the engine's worker busy), recording the
    thread and torch thread count it ran with; everything else is the wrapped model's."""

    def __init__(self, model: vitkit.Model):
        self.model = model
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[tuple[str, int, int]] = []  # (thread name, torch threads, batch size)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls.append((threading.current_thread().name, torch.get_num_threads(), len(pixels)))
        self.gate.wait(timeout=30)
        return self.model(pixels)

    def hold(self, engine, pixels: torch.Tensor) -> Future:
        """Close the gate and submit one classification; returns once the engine's worker waits at the gate
        with it (so the queue is empty behind it)."""
        self.gate.clear()
        before = len(self.calls)
        held = engine.submit("classify", pixels, 1)
        while len(self.calls) == before:
            time.sleep(0.01)
        return held


def batches_of(engine) -> list[int]:
    """The sizes of the batches the engine runs from now on."""
    sizes: list[int] = []
    engine.observers.append(lambda size, seconds: sizes.append(size))
    return sizes


@dataclass(frozen=True)
class FakeHit:
    id: str
    path: str
    score: float
    label: str | None


class FakeIndex:
    """Exact cosine search over the embeddings of some image files, with the image index's API."""

    def __init__(self, model: vitkit.Model, paths: list[Path], labels: list[str], pool: str = "cls"):
        self.source, self.pool = model.source, pool
        self.vectors = model.embed([str(p) for p in paths], pool).numpy()  # (N, D), unit rows
        self.ids = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
        self.rows = {i: {"path": str(p), "label": label} for i, p, label in zip(self.ids, paths, labels)}

    @property
    def info(self) -> dict:
        return {"count": len(self.ids), "model": self.source, "pool": self.pool, "dim": self.vectors.shape[1],
                "preprocess": {}}

    def check_model(self, model, pool=None) -> None:
        if model.source != self.source:
            raise ValueError(f"this index was made with {self.source}, not {model.source}")

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> list[list[FakeHit]]:
        queries = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # (Q, D)
        scores = queries @ self.vectors.T  # (Q, N)
        return [[FakeHit(self.ids[j], self.rows[self.ids[j]]["path"], float(row[j]), self.rows[self.ids[j]]["label"])
                 for j in np.argsort(-row)[:k]] for row in scores]

    def get(self, hit_id: str) -> dict | None:
        return self.rows.get(hit_id)

    def place(self, path: str) -> Place:
        """Each file's own folder is its root here."""
        return Place(Path(path).parent.name, Path(path).name)


def write_images(folder: Path, count: int) -> list[Path]:
    """`count` different small PNG files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{i}.png" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(image_bytes(seed=100 + i, size=(48, 48)))
    return paths
