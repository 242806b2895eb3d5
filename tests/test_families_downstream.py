"""Every capability on a tiny model of each new family (DINOv2, DINOv2 with registers, DINOv3 with and without
SwiGLU, EVA-02, DeiT-III, MAE, CLIP, SigLIP): the packed inference runtime, ONNX export with its parity gate, INT8 quantization, attention maps,
fine-tuning, the image index with retrieval evaluation, and the serving engine, each checked against a direct
computation with the plain network.

Data: three colour classes (red, green, blue photos-like noise), which even a random-weight backbone separates,
so retrieval and fine-tuning have an independent anchor (chance level).

Run:  .venv/bin/python -m pytest tests/test_families_downstream.py -q
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
from vitkit.checkpoints.save import save_vitkit
from vitkit.config import HALF, PreprocessSpec, ViTConfig
from vitkit.models.vit import VisionTransformer

TOL = 1e-4
TINY = dict(image_size=32, patch_size=8, width=32, depth=2, heads=2, mlp_dim=64, num_classes=3,
            labels=("red", "green", "blue"))
FAMILIES = {
    "dinov2": dict(image_size=48, layer_scale_init=0.5, family="dinov2"),  # positions learned at 48, run at 32
    "dinov2-registers": dict(image_size=48, layer_scale_init=0.5, reg_tokens=2, family="dinov2"),
    "dinov3": dict(abs_pos_embed=False, rope="dinov3", reg_tokens=2, layer_scale_init=0.5, qkv_bias="qv",
                   family="dinov3"),
    "dinov3-swiglu": dict(abs_pos_embed=False, rope="dinov3", reg_tokens=1, mlp="swiglu", act="silu",
                          family="dinov3"),
    "eva02": dict(mlp="swiglu", act="silu", mlp_norm=True, rope="eva", rope_theta=10000.0, qkv_bias="qv",
                  pool="mean", fc_norm=True, family="eva02"),
    "deit3": dict(layer_scale_init=0.5, class_pos_embed=False, family="deit3"),
    "mae": dict(family="mae"),
    "clip": dict(pre_norm=True, patch_bias=False, act="quick_gelu", proj_dim=16, norm_eps=1e-5, family="clip"),
    "siglip": dict(class_token=False, pool="map", act="gelu_tanh", family="siglip"),
}
SPEC = PreprocessSpec(input_size=32, crop_pct=1.0, resize_mode="exact", interpolation="bilinear", mean=HALF, std=HALF)
COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}


def colour_images(folder: Path, per_class: int, seed: int = 0) -> Path:
    """`folder/<colour>/<n>.png`: noisy 40x36 images around each class colour."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 40, (36, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{n}.png")
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory, randomise):
    """family -> a randomised tiny model saved as vitkit safetensors (config and preprocessing inside)."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for seed, (name, fields) in enumerate(FAMILIES.items()):
        net = randomise(VisionTransformer(ViTConfig(**{**TINY, **fields})), seed=seed)
        out[name] = save_vitkit(net, SPEC, root / f"{name}.safetensors")
    return out


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return colour_images(tmp_path_factory.mktemp("colours"), per_class=8)


def run_cli(args: list) -> tuple[int, str, str]:
    from vitkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def pixels(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_runtime_matches_the_plain_network(family, files):
    plain = vitkit.load(str(files[family]))
    fast = vitkit.load(str(files[family]), backend="eager", dtype="fp32")
    x = pixels()
    assert (plain(x) - fast(x)).abs().max().item() <= TOL
    pools = ("mean", "prelogits", plain.default_pool) + (("cls_mean",) if plain.config.class_token else ())
    for pool in pools:
        assert (plain.embed_pixels(x, pool) - fast.embed_pixels(x, pool)).abs().max().item() <= TOL, pool
    if plain.config.class_token:  # DINOv2's linear-evaluation features: class token beside the patch mean
        tokens = plain.net.forward_features(x)
        want = torch.cat((tokens[:, 0], tokens[:, plain.config.num_prefix_tokens:].mean(dim=1)), dim=-1)
        assert torch.equal(plain.embed_pixels(x, "cls_mean", normalize=False), want)


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_export_is_verified_and_loads_back(family, files, tmp_path):
    pytest.importorskip("onnxruntime")
    from vitkit.onnx.export import export_onnx

    model = vitkit.load(str(files[family]))
    report = export_onnx(model, tmp_path / "m.onnx", dynamic_batch=True, verify_photos=[])
    assert report.path and report.max_abs_diff["logits"] <= TOL
    onnx = vitkit.load(str(tmp_path / "m.onnx"))
    x = pixels()
    assert (onnx(x) - model(x)).abs().max().item() <= TOL
    for pool in {model.default_pool, "mean", "tokens"} | ({"cls_mean"} if model.config.class_token else set()):
        assert (onnx.embed_pixels(x, pool) - model.embed_pixels(x, pool)).abs().max().item() <= TOL, pool


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_quantization_keeps_the_embedding(family, files, colours, tmp_path):
    pytest.importorskip("onnxruntime")
    from vitkit.quantize import quantize

    model = vitkit.load(str(files[family]))
    calib = colour_images(tmp_path / "calib", per_class=2, seed=5)  # calibration never sees evaluation images
    report = quantize(model, "dynamic", calib=[str(calib)], eval_folder=str(colours), max_drop=100.0, speed=False)
    assert report.layers["int8"] > 0 and report.eval["images"] == 24
    assert report.eval["embedding_cosine"]["mean"] > 0.9, report.eval["embedding_cosine"]


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_maps_cover_the_patch_grid_only(family, files, colours):
    from vitkit.explain.explanation import explain

    model = vitkit.load(str(files[family]))
    (exp,) = explain(model, [str(colours / "red" / "0.png")], "rollout")
    assert exp.map.shape == (4, 4) and np.isfinite(exp.map).all() and exp.map.std() > 0
    attention = model.net.attention_maps(pixels(1))
    tokens = model.config.num_prefix_tokens + 16
    assert [a.shape for a in attention] == [(1, 2, tokens, tokens)] * 2  # registers in the attention, not the map


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_finetune_learns_colours_with_the_defaults(family, files, tmp_path):
    data = colour_images(tmp_path / "data", per_class=16, seed=1)
    run = tmp_path / "run"
    code, stdout, err = run_cli(["finetune", data, "--model", files[family], "--out", run, "--epochs", "3",
                                 "--workers", "0"])
    assert code == 0, err
    tuned = vitkit.load(str(run))
    assert tuned.config.family == FAMILIES[family]["family"] and tuned.labels == ("blue", "green", "red")
    test = colour_images(tmp_path / "test", per_class=6, seed=2)
    paths = sorted(test.glob("*/*.png"))
    predicted = [p[0].label for p in tuned.classify([str(p) for p in paths], top_k=1)]
    accuracy = np.mean([pred == path.parent.name for pred, path in zip(predicted, paths)])
    assert accuracy > 0.8, (accuracy, stdout[-500:])  # chance is 1/3
    code, out, err = run_cli(["eval", test, "--model", run, "--json", "--no-progress", "--workers", "0"])
    assert code == 0, err
    assert json.loads(out)["top1"] == pytest.approx(accuracy, abs=1e-9)  # `vitkit eval` scores the same


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_decay_groups_know_the_new_parameters(family, files):
    from vitkit.train.optim import NO_DECAY_NAMES

    net = vitkit.load(str(files[family])).net
    depth = net.config.depth
    for name, _ in net.named_parameters():
        if name.startswith(("reg_token", "norm_pre.", "cls_token", "pos_embed", "patch_embed.")):
            assert net.layer_of(name) == 0, name
        if name.startswith(("attn_pool.", "proj.", "head.", "norm.")):
            assert net.layer_of(name) == depth + 1, name
    assert {"reg_token", "attn_pool.latent"} <= set(NO_DECAY_NAMES)


@pytest.mark.parametrize("family", FAMILIES)
def test_index_search_and_retrieval_evaluation(family, files, colours, tmp_path, monkeypatch):
    pytest.importorskip("lancedb")
    db = tmp_path / "db"
    code, _, err = run_cli(["index", "add", db, colours, "--model", files[family], "--workers", "0", "--no-progress"])
    assert code == 0, err
    code, out, err = run_cli(["index", "search", db, colours / "blue" / "0.png", "--k", "4", "--format", "jsonl"])
    assert code == 0, err
    (row,) = [json.loads(line) for line in out.splitlines()]
    hits = row["results"]
    assert len(hits) == 4 and all("/blue/" in h["path"] for h in hits), hits
    code, out, err = run_cli(["eval", "retrieval", colours, "--model", files[family], "--json", "--no-progress",
                              "--workers", "0"])
    assert code == 0, err
    result = json.loads(out)
    assert result["recall@1"] > 2 * result["chance"]["recall@1"]


@pytest.mark.parametrize("family", FAMILIES)
def test_serving_engine_answers_as_the_model(family, files, colours):
    pytest.importorskip("fastapi")
    from vitkit.service.engine import Engine

    model = vitkit.load(str(files[family]))
    data = (colours / "green" / "1.png").read_bytes()
    with Engine(model, max_batch=4, threads=1) as engine:
        x = engine.prepare(data)
        vector = engine.submit("embed", x, model.default_pool).result(timeout=60)
        top = engine.submit("classify", x, 2).result(timeout=60)
    want = model.embed_pixels(x[None], model.default_pool)[0]
    np.testing.assert_allclose(vector, (want / want.norm()).numpy(), atol=1e-5)
    assert [p.index for p in top] == [p.index for p in model.top_k(model(x[None]), 2)[0]]
