"""examples/edge_classify.py in a fresh virtual environment with only onnxruntime, numpy, pillow (and tokenizers, for
zero-shot) gives the same top-5 (indices, and scores within 1e-4) as vitkit's PyTorch classify, and as vitkit's
zero-shot classifier with a tiny CLIP's two exported towers.

The environment: `python -m venv`, then `pip install --no-deps onnxruntime numpy pillow` at the versions of this
environment (from PyPI, or pip's cache; onnxruntime's own dependencies -- protobuf, sympy, flatbuffers -- are
not needed for inference, and leaving them out proves it). Skipped with the reason when pip cannot install them
(no network). The script runs with `python -I` (isolated: no PYTHONPATH, no user site, not the script's folder),
and the test checks that neither vitkit nor torch can be imported there.

The model: the real DeiT-Tiny when ../shared has it, else a tiny random ViT; exported by vitkit twice, with its
own spec ("shortest" resize, bicubic, crop 0.875) and with transformers' ("exact" resize), so both resize rules of
the example are compared. The images: real photos (grayscale, smaller than the crop, portrait) when ../shared has
them, plus files made here from them: EXIF-rotated JPEG, RGBA PNG with transparency, palette PNG with a
transparent colour, 16-bit grayscale PNG.

Run:  .venv/bin/python -m pytest tests/test_edge_example.py -q -s
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")

import vitkit  # noqa: E402
from vitkit.checkpoints.convert import Loaded  # noqa: E402
from vitkit.config import ViTConfig  # noqa: E402
from vitkit.onnx import export_onnx  # noqa: E402
from vitkit.models.registry import HF_DEIT  # noqa: E402
from vitkit.models.vit import VisionTransformer  # noqa: E402

from conftest import SHARED, randomise_  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "edge_classify.py"
WEIGHTS = SHARED / "weights" / "deit-tiny-patch16-224" / "model.safetensors"
PHOTOS = SHARED / "images" / "imagenet-sample-100"
PHOTO_NAMES = ("n01440764_tench.JPEG", "n03908714_pencil_sharpener.JPEG", "n03825788_nipple.JPEG",
               "n03759954_microphone.JPEG", "n02095889_Sealyham_terrier.JPEG", "n03937543_pill_bottle.JPEG")
PACKAGES = ("onnxruntime", "numpy", "pillow", "tokenizers")  # tokenizers: zero-shot's text side only
ALLOWED_IN_VENV = {*PACKAGES, "pip", "setuptools", "wheel"}
TOL = 1e-4


pytestmark = pytest.mark.slow  # runs the example in a subprocess: full suite only

def _bin(venv: Path, name: str) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / name


@pytest.fixture(scope="module")
def edge_python(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("edge") / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
    if made.returncode:
        pytest.skip(f"cannot create a virtual environment: {made.stderr.strip()[-500:]}")
    python = _bin(venv, "python")
    pinned = []
    for name in PACKAGES:
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pinned.append(name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    command = [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check"]
    for attempt in (pinned, list(PACKAGES)):  # this environment's versions, else the latest
        done = subprocess.run(command + attempt, capture_output=True, text=True, timeout=600, env=env)
        if done.returncode == 0:
            break
    else:
        pytest.skip(f"pip cannot install {' '.join(PACKAGES)} into a fresh venv (no network?): "
                    f"{done.stderr.strip()[-500:]}")
    return python


def _run_example(python: Path, images: list[Path], model: Path, cwd: Path, extra: tuple = ()) -> list[dict]:
    done = subprocess.run([str(python), "-I", str(EXAMPLE), *map(str, images), "--model", str(model), "--json",
                           *extra],
                          capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert [row["path"] for row in rows] == [str(p) for p in images]
    return rows


# -- inputs ----------------------------------------------------------------------------------------------
def _base_image() -> Image.Image:
    if (PHOTOS / PHOTO_NAMES[0]).is_file():
        return Image.open(PHOTOS / PHOTO_NAMES[0]).convert("RGB")
    y, x = np.mgrid[0:300, 0:400]
    pixels = np.stack([x * 255 / 400, y * 255 / 300, (x + y) % 256], axis=-1)
    return Image.fromarray(pixels.astype(np.uint8))


def _images(folder: Path) -> list[Path]:
    paths = [PHOTOS / name for name in PHOTO_NAMES if (PHOTOS / name).is_file()]
    base = _base_image()
    width, height = base.size
    rotated = folder / "exif_rotated.jpg"  # stored sideways; orientation 6 says: rotate 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    base.transpose(Image.Transpose.ROTATE_90).save(rotated, quality=92, exif=exif)
    rgba = base.convert("RGBA")
    alpha = np.full((height, width), 255, np.uint8)
    alpha[: height // 3] = 0  # fully transparent top third: vitkit composites it over white
    alpha[height // 3: height // 2] = 128
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "rgba.png")
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette.save(folder / "palette_transparent.png", transparency=0)
    grey16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "grey16.png")  # read back as mode I;16 / I
    return paths + [rotated, folder / "rgba.png", folder / "palette_transparent.png", folder / "grey16.png"]


# -- the model -------------------------------------------------------------------------------------------
def _model() -> vitkit.Model:
    if WEIGHTS.is_file():
        return vitkit.load(str(WEIGHTS), arch="deit_tiny_patch16_224")
    cfg = ViTConfig(image_size=32, patch_size=8, width=48, depth=2, heads=3, mlp_dim=96, num_classes=10)
    spec = dataclasses.replace(HF_DEIT, resize_mode="shortest").at_size(32)
    return vitkit.Model(Loaded(randomise_(VisionTransformer(cfg)), spec, "tiny random ViT", "vitkit"))


def _compare(rows: list[dict], expected: list, name: str) -> float:
    """Same top-5 indices in the same order (a swap of two classes whose scores are within TOL is a tie), scores
    within TOL. -> the largest score difference."""
    worst = 0.0
    for row, want in zip(rows, expected):
        assert row["error"] is None, row
        got = row["top_k"]
        assert len(got) == len(want) == 5
        for rank, (g, w) in enumerate(zip(got, want)):
            worst = max(worst, abs(g["score"] - w.score))
            assert abs(g["score"] - w.score) <= TOL, f"{name} {row['path']} rank {rank}: {g} vs {w}"
            if g["index"] != w.index:
                tie = [p.index for p in want if abs(p.score - w.score) <= TOL]
                assert g["index"] in tie, f"{name} {row['path']} rank {rank}: {g} vs {w}"
            else:
                assert g["label"] == w.label
    return worst


def test_edge_example_matches_vitkit(edge_python, tmp_path, report):
    probe = subprocess.run([str(edge_python), "-I", "-c", "import importlib.util as u; "
                            "print([u.find_spec(m) is None for m in ('vitkit', 'torch', 'onnxruntime')])"],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert probe.stdout.strip() == "[True, True, False]", probe.stdout + probe.stderr
    listed = subprocess.run([str(edge_python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                            capture_output=True, text=True, timeout=60)
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert installed <= ALLOWED_IN_VENV and set(PACKAGES) <= installed, installed

    model = _model()
    images = _images(tmp_path)
    exact_spec = dataclasses.replace(HF_DEIT, input_size=model.spec.input_size)  # transformers' resize rule
    for name, spec in (("shortest", model.spec), ("exact", exact_spec)):
        model.spec = spec
        out = tmp_path / f"{name}.onnx"
        export_onnx(model, out, verify_photos=[])  # batch 1, as an edge device runs it
        start = time.perf_counter()
        rows = _run_example(edge_python, images, out, tmp_path)
        seconds = time.perf_counter() - start
        expected = model.classify(images, top_k=5)  # vitkit, PyTorch fp32, its own decoding
        worst = _compare(rows, expected, name)
        report(f"edge example ({model.source if name == 'shortest' else 'same model'}, {name} resize, "
               f"{len(images)} images): top-5 identical to vitkit, max score diff {worst:.1e}; {seconds:.1f} s")


@pytest.mark.parametrize("family", ["clip", "siglip2"])
def test_edge_example_zero_shot_matches_vitkit(family, edge_python, tiny_image_text, colour_photos, tmp_path, report):
    from image_text_support import gemma_vocabulary, train_image_text

    from vitkit.cli import main
    from vitkit.image_text import ZeroShotClassifier, load_text

    if family == "clip":
        folder = str(tiny_image_text["clip"])
    else:  # a SigLIP with SigLIP 2's Gemma tokenizer
        vocab = gemma_vocabulary(tmp_path / "gemma")
        folder = str(train_image_text("siglip", vocab, tmp_path / "siglip2", kind="siglip2"))
        assert load_text(folder).tokenizer.kind == "siglip2"
    image, text = tmp_path / "image.onnx", tmp_path / "text.onnx"
    assert main(["export", "onnx", "--model", folder, "--out", str(image)]) == 0
    assert main(["export", "onnx-text", "--model", folder, "--out", str(text)]) == 0
    labels, template = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"], "a {} square"
    photos = list(colour_photos)
    rows = _run_example(edge_python, photos, image, tmp_path, ("--text-model", str(text), "--labels", ",".join(labels),
                                                               "--template", template))
    expected = ZeroShotClassifier(vitkit.load(folder), load_text(folder), labels, [template]).classify(photos)
    worst = _compare(rows, expected, "zero-shot")
    correct = sum(row["top_k"][0]["label"] == colour_photos[row["path"]] for row in rows)
    report(f"edge example zero-shot (tiny {family}, image + text ONNX, {len(photos)} photos): top-5 identical to vitkit, "
           f"max score diff {worst:.1e}; top-1 right {correct}/{len(photos)}")


def test_the_edge_script_letterboxes_as_vitkit_does():
    """examples/edge_classify.py's own preprocessing of a `pad` recipe (what an exported --resize-mode pad model
    carries) equals vitkit's, bit for bit, on wide, tall and square images."""
    import importlib.util

    from vitkit.data.transforms import preprocess

    spec_ = importlib.util.spec_from_file_location("edge_classify", Path(__file__).resolve().parents[1] / "examples" / "edge_classify.py")
    edge = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(edge)
    spec = dataclasses.replace(HF_DEIT, input_size=64).with_resize_mode("pad")
    rng = np.random.default_rng(0)
    for size in ((300, 70), (41, 200), (64, 64), (1, 9)):
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        want = preprocess(image, spec).numpy()  # (3, 64, 64)
        assert np.array_equal(edge.preprocess(image, spec.to_dict())[0], want), size
