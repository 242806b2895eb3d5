"""Embeddings (`Model.embed_pixels` and `vitkit embed`) against transformers, on the same pixel tensors:

- real DeiT-Tiny on 100 photos, saved as a transformers folder and loaded by `ViTModel`: pool cls / mean /
  tokens and raw hidden states of chosen blocks equal transformers' tensors; normalize gives unit vectors;
- BEiT with mean pooling (every parameter randomised): the default pool is 'mean' and equals
  `pooler_output` (fc_norm on the patch mean); ViT with a pooler layer: 'prelogits' equals
  `pooler_output`, and the default is the class token, never the pooler;
- `vitkit embed` writes the same array, paths, errors and settings to .npy, .safetensors and .parquet,
  equal to `Model.embed`; other suffixes are refused.

Run:  .venv/bin/python -m pytest tests/test_embed.py -q
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vitkit
from conftest import SHARED
from vitkit.cli import main as cli
from vitkit.embedding_files import read_embeddings

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

TOL = 1e-4
WEIGHTS = SHARED / "weights" / "deit-tiny-patch16-224" / "model.safetensors"
PHOTOS = SHARED / "images" / "imagenet-sample-100"
ARCH = "vit_tiny_patch16_224"
SIDE = 32


def run_cli(args: list) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = cli([str(a) for a in args])
        except SystemExit as exit_:  # argparse
            code = exit_.code
    return code, err.getvalue()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------- real DeiT-Tiny vs ViTModel


@pytest.fixture(scope="module")
def deit():
    if not WEIGHTS.is_file():
        pytest.skip(f"real DeiT-Tiny weights not found at {WEIGHTS} (../shared is absent in a fresh clone)")
    photos = sorted(p for p in PHOTOS.glob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    if len(photos) < 100:
        pytest.skip(f"expected the 100 photos of {PHOTOS}, found {len(photos)}")
    return vitkit.load(str(WEIGHTS), arch="deit_tiny_patch16_224"), [str(p) for p in photos]


@pytest.mark.slow
def test_deit_tiny_embeddings_equal_transformers_vit_model(deit, tmp_path, report):
    model, photos = deit
    folder = model.save(tmp_path / "deit-hf", format="hf")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "vit"
    hf = transformers.ViTModel.from_pretrained(folder, add_pooling_layer=False).eval()
    pixels = model.preprocess(photos)  # (100, 3, 224, 224): both sides see these very tensors
    assert pixels.shape == (100, 3, 224, 224)

    diffs = {"cls": 0.0, "mean": 0.0, "layers[-1] cls": 0.0, "layers[-4] cls": 0.0, "tokens": 0.0}
    norms = []
    for start in range(0, len(photos), 25):
        x = pixels[start:start + 25]
        with torch.inference_mode():
            out = hf(pixel_values=x, output_hidden_states=True)
        last, hidden = out.last_hidden_state, out.hidden_states
        assert len(hidden) == 13  # embeddings + 12 blocks
        cls = model.embed_pixels(x, pool="cls", normalize=False)
        diffs["cls"] = max(diffs["cls"], _max_diff(cls, last[:, 0]))
        mean = model.embed_pixels(x, pool="mean", normalize=False)
        diffs["mean"] = max(diffs["mean"], _max_diff(mean, last[:, 1:].mean(1)))
        layers = model.embed_pixels(x, pool="cls", layers=[-1, -4], normalize=False)  # (25, 2, 192)
        assert layers.shape == (25, 2, 192) == (25, *model.embedding_shape("cls", [-1, -4]))
        diffs["layers[-1] cls"] = max(diffs["layers[-1] cls"], _max_diff(layers[:, 0], hidden[12][:, 0]))
        diffs["layers[-4] cls"] = max(diffs["layers[-4] cls"], _max_diff(layers[:, 1], hidden[9][:, 0]))
        tokens = model.embed_pixels(x, pool="tokens", normalize=False)  # (25, 197, 192)
        assert tokens.shape == (25, *model.embedding_shape("tokens"))
        diffs["tokens"] = max(diffs["tokens"], _max_diff(tokens, last))
        if start == 0:  # normalize=True (the default): unit vectors in the direction of the raw ones
            unit = model.embed_pixels(x)
            assert model.default_pool == "cls"
            norms.append(unit.norm(dim=-1))
            assert _max_diff(unit, torch.nn.functional.normalize(cls, dim=-1)) <= 1e-6
            unit_tokens = model.embed_pixels(x, pool="tokens")
            norms.append(unit_tokens.norm(dim=-1).flatten())
    norm_err = (torch.cat(norms) - 1).abs().max().item()
    report("embed DeiT-Tiny vs transformers ViTModel, 100 photos: max|diff| "
           + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + f"; normalize: max|norm-1| {norm_err:.1e}")
    assert all(v <= TOL for v in diffs.values()), diffs
    assert norm_err <= 1e-5


# ----------------------------------------------------------------------------- tiny random BEiT / ViT with pooler

TINY = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96, image_size=32,
            patch_size=8, hidden_act="gelu")
PREPROCESSOR = {"size": {"height": 32, "width": 32}, "resample": 2, "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5], "do_normalize": True}


def _save_random(hf, folder: Path, randomise) -> Path:
    randomise(hf)
    hf.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return folder


@pytest.fixture(scope="module")
def tiny_images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)) for _ in range(6)]
    return images


def test_beit_default_pool_is_mean_and_equals_pooler_output(tmp_path, randomise, tiny_images, report):
    config = transformers.BeitConfig(**TINY, use_mean_pooling=True, use_relative_position_bias=True,
                                     layer_scale_init_value=0.1)
    hf = transformers.BeitModel(config)
    folder = _save_random(hf, tmp_path / "beit", randomise)
    model = vitkit.load(str(folder))
    assert model.default_pool == "mean" and model.embedding_shape() == (48,)
    x = model.preprocess(tiny_images)  # (6, 3, 32, 32)
    with torch.inference_mode():
        out = hf(pixel_values=x)
    default = model.embed_pixels(x, normalize=False)
    diffs = {"default vs pooler_output": _max_diff(default, out.pooler_output),
             "mean vs pooler_output": _max_diff(model.embed_pixels(x, pool="mean", normalize=False), out.pooler_output),
             "cls vs last_hidden_state[:, 0]": _max_diff(model.embed_pixels(x, pool="cls", normalize=False),
                                                         out.last_hidden_state[:, 0]),
             "tokens vs last_hidden_state": _max_diff(model.embed_pixels(x, pool="tokens", normalize=False),
                                                      out.last_hidden_state)}
    # the pooler's layer norm matters: without it the patch mean is something else
    assert _max_diff(default, out.last_hidden_state[:, 1:].mean(1)) > 10 * TOL
    report("embed BEiT (random, mean pooling): " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    assert all(v <= TOL for v in diffs.values()), diffs


def test_vit_prelogits_is_the_pooler_and_the_default_is_cls(tmp_path, randomise, tiny_images, report):
    hf = transformers.ViTModel(transformers.ViTConfig(**TINY, pooler_output_size=40), add_pooling_layer=True)
    folder = _save_random(hf, tmp_path / "vit-pooler", randomise)
    model = vitkit.load(str(folder))
    assert model.config.pre_logits_dim == 40
    assert model.default_pool == "cls", "the pooler dense layer is never the default"
    assert model.embedding_shape() == (48,) and model.embedding_shape("prelogits") == (40,)
    x = model.preprocess(tiny_images)
    with torch.inference_mode():
        out = hf(pixel_values=x)
    diffs = {"prelogits vs pooler_output": _max_diff(model.embed_pixels(x, pool="prelogits", normalize=False),
                                                     out.pooler_output),
             "default vs last_hidden_state[:, 0]": _max_diff(model.embed_pixels(x, normalize=False),
                                                             out.last_hidden_state[:, 0])}
    report("embed ViT with pooler (random): " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    assert all(v <= TOL for v in diffs.values()), diffs
    with pytest.raises(ValueError, match="prelogits"):
        model.embed_pixels(x, pool="prelogits", layers=[-1])


# ----------------------------------------------------------------------------- CLI output formats


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """12 images, 2 corrupt, and a path that does not exist; a saved random model."""
    root = tmp_path_factory.mktemp("small")
    rng = np.random.default_rng(2)
    for i in range(12):
        path = root / f"im_{i:02d}.png"
        if i == 3:
            path.write_bytes(b"")
        elif i == 8:
            path.write_text("not an image")
        else:
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    saved = vitkit.load(arch=ARCH).save(root / "model.safetensors", format="safetensors")
    inputs = sorted(str(p) for p in root.glob("im_*.png")) + [str(root / "missing.png")]
    return inputs, saved


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("extra, shape", [([], (192,)), (["--pool", "tokens", "--layers=-1,-3"], (2, 5, 192)),
                                          (["--pool", "mean", "--no-normalize"], (192,))],
                         ids=["cls", "tokens-2-layers", "mean-raw"])
def test_cli_writes_the_same_embeddings_to_every_format(small_set, tmp_path, extra, shape):
    torch.set_num_threads(1)  # tiny batches: synchronising two threads costs more than it gains
    inputs, saved = small_set
    common = ["--model", saved, "--image-size", SIDE, "--batch-size", "4", "--chunk-size", "8", "--workers", "0",
              "--no-progress", *extra]
    results = {}
    for suffix in (".npy", ".safetensors", ".parquet"):
        out = tmp_path / f"emb{suffix}"
        code, err = run_cli(["embed", *inputs, *common, "--output", out])
        assert code == 0, err
        assert err.strip().splitlines()[-1] == f"wrote {out}: 13 rows (0 from an earlier run, 13 now, 3 unreadable)"
        results[suffix] = read_embeddings(out)
    array, rows, settings = results[".npy"]
    assert array.shape == (13, *shape)
    assert [r["path"] for r in rows] == inputs
    errors = [r["error"] for r in rows]
    assert [i for i, e in enumerate(errors) if e] == [3, 8, 12]
    assert "empty" in errors[3] and "not an image" in errors[8] and errors[12] == "no such file"
    for suffix, (other, other_rows, other_settings) in results.items():
        assert other.shape == array.shape and other.dtype == np.float32, suffix
        np.testing.assert_array_equal(other, array, err_msg=suffix)  # NaN rows included
        assert other_rows == rows and other_settings == settings, suffix
    assert np.isnan(array[[3, 8, 12]]).all() and np.isfinite(np.delete(array, [3, 8, 12], axis=0)).all()

    model = vitkit.load(str(saved), image_size=SIDE)
    pool = extra[extra.index("--pool") + 1] if "--pool" in extra else None
    layers = [-1, -3] if "--layers=-1,-3" in extra else None
    normalize = "--no-normalize" not in extra
    good = [i for i in range(13) if i not in (3, 8, 12)]
    direct = model.embed([inputs[i] for i in good], pool=pool, layers=layers, normalize=normalize).numpy()
    assert np.abs(array[good] - direct).max() <= 1e-5
    assert settings["pool"] == (pool or "cls") and settings["layers"] == layers and settings["normalize"] == normalize


def test_cli_refuses_an_unknown_suffix(small_set, tmp_path):
    inputs, saved = small_set
    for name in ("emb.csv", "emb.pt", "emb"):
        code, err = run_cli(["embed", *inputs[:2], "--model", saved, "--workers", "0", "--output", tmp_path / name])
        assert code == 2, err
        assert "use a .npy, .safetensors, .parquet file name" in err and name in err
    assert not list(tmp_path.iterdir()), "nothing is written for a refused output"
    with pytest.raises(ValueError, match="use a .npy"):
        read_embeddings(tmp_path / "emb.csv")


def test_cli_layers_accept_the_documented_form(small_set, tmp_path):
    inputs, saved = small_set
    out = tmp_path / "emb.npy"
    code, err = run_cli(["embed", *inputs[:2], "--model", saved, "--image-size", SIDE, "--workers", "0",
                         "--layers", "-1,-4", "--output", out])
    assert code == 0, err
    assert read_embeddings(out)[0].shape == (2, 2, 192)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors", ".parquet"])
def test_no_inputs_is_a_clear_error_and_writes_nothing(small_set, tmp_path, suffix):
    _, saved = small_set
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / f"emb{suffix}"
    code, err = run_cli(["embed", empty, "--model", saved, "--image-size", SIDE, "--workers", "0", "--output", out])
    assert code == 2 and "no images found" in err, err
    assert not out.exists() and not (tmp_path / f"emb{suffix}.parts").exists()
