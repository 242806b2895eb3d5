"""ONNX export (vitkit.onnx) and the onnxruntime backend (vitkit.runtime.onnx_backend), against PyTorch.

Parity (fp32, onnxruntime CPU vs vitkit's plain network at the exported size):
  logits and pre_logits: max abs diff <= 1e-4 (observed ~1e-6 with random weights, <= 3.3e-5 with the real DeiT-Tiny
  on 100 real photos); features (every final token): <= 1e-4, or 2e-4 of the largest |feature| when that is
  larger -- on real photos PyTorch fp32's own tokens are ~9e-4 from a float64 evaluation, onnxruntime's ~6e-4.
  * tiny ViT, distilled DeiT, BEiT (per-layer and shared tables), pre-logits, backbone at their own size and at a
    larger and a smaller one (positions resampled outside the graph, exactly as vitkit does at run time);
  * full-size B/16 (slow): ViT, distilled DeiT and BEiT at 224, and BEiT at 384 (BEiT-B@384 exercises both
    resamplers' hardest case; a B/16 export + verification costs 9-23 s here, so the other 384 cases are tiny).
Also: metadata round trip, no Resize/Upsample node, dynamic batch (exported with 1, run with 3), a batch-1 file
run with 3 (looped), the verification failure path (nothing written, an older file kept), fp16 (runs on
onnxruntime CPU; checked against fp32), the backend through `vitkit.api.Model`, and the real DeiT-Tiny on the 100
photos (same top-1 as vitkit fp32 on all).

Run:  .venv/bin/python -m pytest tests/test_onnx.py -q --durations=5
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

import vitkit  # noqa: E402
import vitkit.onnx.export as vx_export  # noqa: E402
import vitkit.onnx.graph as vx_graph  # noqa: E402
import vitkit.onnx.verify as vx_verify  # noqa: E402
from vitkit.api import Model  # noqa: E402
from vitkit.config import BEIT_FIELDS, PreprocessSpec, ViTConfig, variant  # noqa: E402
from vitkit.onnx import OnnxExportError, export_onnx, read_metadata  # noqa: E402
from vitkit.models.vit import VisionTransformer  # noqa: E402
from vitkit.runtime import RuntimeUnavailable, prepare  # noqa: E402
from vitkit.runtime.onnx_backend import OnnxNet, load_onnx, onnx_from_network  # noqa: E402

from conftest import SHARED, TINY_VARIANTS, randomise_  # noqa: E402

WEIGHTS = SHARED / "weights" / "deit-tiny-patch16-224" / "model.safetensors"
PHOTOS = SHARED / "images" / "imagenet-sample-100"
TOL = 1e-4
CONFIGS = TINY_VARIANTS
SPEC = PreprocessSpec(input_size=32, crop_pct=0.875)
needs_photos = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"no photos at {PHOTOS} (../shared is absent)")
needs_weights = pytest.mark.skipif(not (WEIGHTS.is_file() and PHOTOS.is_dir()),
                                   reason="../shared/weights/deit-tiny-patch16-224 or its photos are not here")


def _net(cfg: ViTConfig, seed: int = 0) -> VisionTransformer:
    return randomise_(VisionTransformer(cfg), scale=0.5, seed=seed)


@torch.inference_mode()
def _reference(net: VisionTransformer, x: torch.Tensor) -> dict[str, np.ndarray]:
    tokens = net.forward_features(x)
    out = {"features": tokens, "pre_logits": net.forward_head(tokens, pre_logits=True)}
    if net.config.num_classes:
        out["logits"] = net.forward_head(tokens)
    return {k: v.numpy() for k, v in out.items()}


def _assert_parity(onnx_net: OnnxNet, net: VisionTransformer, x: torch.Tensor) -> dict[str, float]:
    ref, got = _reference(net, x), onnx_net.run(x)
    assert set(got) == set(ref)
    diffs = {k: float(np.abs(got[k] - ref[k]).max()) for k in ref}
    for name, diff in diffs.items():
        limit = max(TOL, vx_verify.FEATURES_RTOL * float(np.abs(ref[name]).max())) if name == "features" else TOL
        assert diff <= limit, f"{name}: max abs diff {diff:.3g} > {limit:.3g}"
    return diffs


def _op_types(path: Path) -> set[str]:
    return {node.op_type for node in vx_graph._all_nodes(onnx.load(str(path)).graph)}


# -- parity ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 48, 24])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_tiny_parity_at_sizes(name, size, tmp_path):
    net = _net(CONFIGS[name])
    out = tmp_path / "m.onnx"
    report = export_onnx(net, out, spec=SPEC, image_size=size, verify_photos=[])
    assert report.path == str(out) and out.is_file()
    assert not _op_types(out) & {"Resize", "Upsample"}
    onnx_net = OnnxNet(out)
    assert onnx_net.input_shape == [1, 3, size, size]
    x = torch.randn(2, 3, size, size)
    _assert_parity(onnx_net, net, x)  # the net at its own grid (32 px) resamples per input size at run time


@pytest.mark.slow
@pytest.mark.parametrize("family,size", [("vit", 224), ("deit_distilled", 224), ("beit", 224), ("beit", 384)])
def test_full_size_b16_parity(family, size, report):
    """The export's own verification is the parity check here (onnxruntime vs the original network at `size`, on
    a random input, and a real photo at 224); a second run would double the cost of these 10-20 s cases."""
    fields = {"vit": {}, "deit_distilled": dict(dist_token=True, family="deit"), "beit": BEIT_FIELDS}[family]
    with torch.device("meta"):
        net = VisionTransformer(variant("B/16", **fields))
    net = randomise_(net.to_empty(device="cpu"), scale=0.1)  # no init pass: every parameter is set here
    start = time.perf_counter()
    photos = vx_verify.default_photos(1) if size == 224 else []  # a 384 px input costs ~2 s per runtime here
    data, rep = vx_export.export_bytes(net, spec=PreprocessSpec(), image_size=size, dynamic_batch=True, verify_random=1,
                                verify_photos=photos)
    seconds = time.perf_counter() - start
    diffs = rep.max_abs_diff
    report(f"onnx: B/16 {family} @{size}: max abs diff logits {diffs['logits']:.1e}, pre_logits "
           f"{diffs['pre_logits']:.1e}, features {diffs['features']:.1e} ({rep.checked}); export "
           f"{rep.export_s:.1f} s + verify {rep.verify_s:.1f} s = {seconds:.1f} s, {rep.size_mb:.0f} MB")
    assert diffs["logits"] <= TOL and diffs["pre_logits"] <= TOL and diffs["features"] <= TOL
    assert rep.checked["random"] == 1 and rep.image_size == size
    graph = onnx.load_from_string(data).graph
    assert not {n.op_type for n in vx_graph._all_nodes(graph)} & {"Resize", "Upsample"}
    assert list(graph.input[0].type.tensor_type.shape.dim)[2].dim_value == size


def test_network_at_size_equals_runtime_resampling():
    """The baked copy at 48 px gives the same outputs as the original resampling per call (both PyTorch)."""
    for name in ("vit", "beit", "beit_shared_rel_pos"):
        net = _net(CONFIGS[name])
        fixed = vx_graph.network_at_size(net, 48)
        assert fixed.config.image_size == 48 and net.config.image_size == 32
        x = torch.randn(2, 3, 48, 48)
        with torch.inference_mode():
            torch.testing.assert_close(fixed(x), net(x), rtol=0, atol=1e-6)


# -- the file --------------------------------------------------------------------------------------------
def test_metadata_round_trip(tmp_path):
    cfg = CONFIGS["beit"].replace(labels=tuple(f"thing {i}" for i in range(10)))
    spec = PreprocessSpec(input_size=32, crop_pct=0.9, resize_mode="exact", interpolation="bilinear",
                          mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = tmp_path / "beit.onnx"
    export_onnx(_net(cfg), out, spec=spec, image_size=48, source="my-beit", verify_photos=[])
    meta = read_metadata(out)
    assert meta.preprocess == spec.at_size(48)
    assert meta.labels == cfg.labels
    assert meta.config == cfg.replace(image_size=48)  # the graph's own config: native at the exported size
    assert meta.outputs == ("logits", "features", "pre_logits") and meta.dtype == "fp32"
    assert meta.source == "my-beit" and meta.version == vitkit.__version__ and not meta.dynamic_batch
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["vitkit_labels"]) == list(cfg.labels)
    assert json.loads(props["vitkit_preprocess"])["input_size"] == 48
    assert json.loads(props["vitkit_input"]) == {"name": "pixels", "shape": [1, 3, 48, 48], "dtype": "float32"}
    verification = json.loads(props["vitkit_verification"])
    assert verification["max_abs_diff"]["logits"] <= TOL and verification["checked"] == {"random": 2}
    # the Model built from the file takes its preprocessing and labels from there
    model = Model(load_onnx(out))
    assert model.spec == spec.at_size(48) and model.labels == cfg.labels and model.config.image_size == 48
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary file


def test_backbone_has_no_logits_output(tmp_path):
    out = tmp_path / "backbone.onnx"
    export_onnx(_net(CONFIGS["backbone"]), out, spec=SPEC, verify_photos=[])
    assert read_metadata(out).outputs == ("features", "pre_logits")
    model = Model(load_onnx(out))
    with pytest.raises(ValueError, match="backbone"):
        model(torch.zeros(1, 3, 32, 32))
    assert model.embed_pixels(torch.zeros(2, 3, 32, 32)).shape == (2, 48)


def test_dynamic_batch(tmp_path):
    net = _net(CONFIGS["deit_distilled"])
    dynamic, static = tmp_path / "dyn.onnx", tmp_path / "static.onnx"
    export_onnx(net, dynamic, spec=SPEC, dynamic_batch=True, verify_photos=[])
    export_onnx(net, static, spec=SPEC, verify_photos=[])
    x = torch.randn(3, 3, 32, 32)
    dyn = OnnxNet(dynamic)
    assert dyn.dynamic_batch and dyn.input_shape[0] == "batch" and read_metadata(dynamic).dynamic_batch
    _assert_parity(dyn, net, x)  # exported with a batch of 1, run with 3 in one call
    fixed = OnnxNet(static)
    assert not fixed.dynamic_batch and fixed.input_shape[0] == 1
    _assert_parity(fixed, net, x)  # a batch-1 file runs a batch one input at a time
    with pytest.raises(ValueError, match="exported at 32 px"):
        dyn(torch.randn(1, 3, 48, 48))


def test_verification_failure_writes_nothing(tmp_path, monkeypatch):
    net = _net(CONFIGS["vit"])
    out = tmp_path / "m.onnx"
    out.write_bytes(b"an older export")
    real = vx_verify._torch_outputs

    def off_by_a_little(net, pixels):
        ref = real(net, pixels)
        ref["logits"] = ref["logits"] + 3e-4
        return ref

    monkeypatch.setattr(vx_verify, "_torch_outputs", off_by_a_little)
    with pytest.raises(OnnxExportError, match=r"max abs diff logits 0\.0003\d* > 0\.0001.*was not written"):
        export_onnx(net, out, spec=SPEC, verify_photos=[])
    assert out.read_bytes() == b"an older export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary file either
    fresh = tmp_path / "new.onnx"
    with pytest.raises(OnnxExportError):
        export_onnx(net, fresh, spec=SPEC, verify_photos=[])
    assert not fresh.exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's TorchScript exporter, used for a plain file
def test_refusals(tmp_path):
    net = _net(CONFIGS["vit"])
    with pytest.raises(OnnxExportError, match="multiple of the patch size"):
        export_onnx(net, tmp_path / "a.onnx", spec=SPEC, image_size=36)
    with pytest.raises(OnnxExportError, match="opset"):
        export_onnx(net, tmp_path / "a.onnx", spec=SPEC, opset=11)
    with pytest.raises(OnnxExportError, match="prepared"):
        export_onnx(prepare(_net(CONFIGS["vit"])), tmp_path / "a.onnx", spec=SPEC)
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(plain), dynamo=False)
    with pytest.raises(ValueError, match="not exported by vitkit"):
        load_onnx(plain)
    assert not (tmp_path / "a.onnx").exists()


def test_fp16_export(tmp_path, report):
    """fp16 graphs are for GPUs; here they are checked with onnx.checker and run on onnxruntime's CPU provider
    (which can run them), against fp32 PyTorch."""
    net = randomise_(VisionTransformer(CONFIGS["beit"]), scale=0.1)
    out = tmp_path / "fp16.onnx"
    rep = export_onnx(net, out, spec=SPEC, dtype="fp16", dynamic_batch=True, verify_photos=[])
    assert rep.verified_with == "onnxruntime CPUExecutionProvider"
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    floats = {init.data_type for init in model.graph.initializer if init.data_type in (1, 10)}
    assert floats == {onnx.TensorProto.FLOAT16}
    io_types = {v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
    assert io_types == {onnx.TensorProto.FLOAT}  # float32 in and out; casts at both ends
    assert read_metadata(out).dtype == "fp16"
    x = torch.randn(4, 3, 32, 32)
    got, ref = OnnxNet(out)(x), _reference(net, x)["logits"]
    scale = float(np.abs(ref).max())
    diff = float(np.abs(got.numpy() - ref).max())
    report(f"onnx: fp16 tiny BEiT on onnxruntime CPU vs fp32: max abs logit diff {diff:.1e} "
           f"({diff / scale:.1%} of max |logit|)")
    assert diff <= vx_verify.FP16_RTOL * scale


# -- the backend -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vit", "beit", "pre_logits"])
def test_backend_through_model(name, tmp_path):
    """A Model built on the file classifies and embeds (every pool) as the PyTorch Model does."""
    cfg = CONFIGS[name]
    net = _net(cfg)
    out = tmp_path / "m.onnx"
    export_onnx(net, out, spec=SPEC, dynamic_batch=True, verify_photos=[])
    from vitkit.checkpoints.convert import Loaded

    torch_model = Model(Loaded(net, SPEC, "torch", "vitkit"))
    onnx_model = Model(load_onnx(out))
    assert onnx_model.net.runtime.backend == "onnx"
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(onnx_model(x), torch_model(x), rtol=0, atol=TOL)
    assert [[p.index for p in row] for row in onnx_model.top_k(onnx_model(x), 3)] == \
        [[p.index for p in row] for row in torch_model.top_k(torch_model(x), 3)]
    for pool in ("cls", "mean", "tokens", "prelogits"):
        for normalize in (True, False):
            got = onnx_model.embed_pixels(x, pool=pool, normalize=normalize)
            want = torch_model.embed_pixels(x, pool=pool, normalize=normalize)
            torch.testing.assert_close(got, want, rtol=0, atol=TOL, msg=f"pool {pool}")
        unnormed = onnx_model.net.pool_pixels(x, pool)
        torch.testing.assert_close(unnormed, torch_model.embed_pixels(x, pool=pool, normalize=False), rtol=0,
                                   atol=TOL)
    with pytest.raises(NotImplementedError, match="final layer only"):
        onnx_model.embed_pixels(x, pool="cls", layers=[-1])
    with pytest.raises(ValueError, match="exported at 32 px"):
        load_onnx(out, image_size=64)


def test_backend_from_network_and_bench():
    """`--backend onnx` on a PyTorch checkpoint: exported in memory, verified, run; bench reports it."""
    from vitkit.tasks.bench import bench_model

    net = _net(CONFIGS["deit_distilled"])
    onnx_net = onnx_from_network(net, SPEC, image_size=48, source="tiny")
    assert onnx_net.spec.input_size == 48 and onnx_net.dynamic_batch
    _assert_parity(onnx_net, net, torch.randn(2, 3, 48, 48))
    from vitkit.checkpoints.convert import Loaded

    model = Model(Loaded(onnx_net, onnx_net.spec, "tiny", "onnx"))
    result = bench_model(model, batch_size=2, backend=None, warmup=1, iters=2)
    assert result["backend"] == "onnx" and result["dtype"] == "fp32" and result["image_size"] == 48
    assert result["model_params_m"] > 0
    with pytest.raises(RuntimeUnavailable, match="GPU"):
        onnx_from_network(net, SPEC, dtype="fp16", device="cpu")


# -- real weights, real photos ---------------------------------------------------------------------------
@pytest.mark.slow
@needs_weights
def test_real_deit_tiny_100_photos(tmp_path, report):
    model = vitkit.load(str(WEIGHTS), arch="deit_tiny_patch16_224")
    out = tmp_path / "deit.onnx"
    rep = export_onnx(model, out, dynamic_batch=True)
    assert rep.checked == {"random": 2, "photos": 4} and rep.top1_agreement == 1.0
    onnx_model = Model(load_onnx(out))
    assert onnx_model.spec == model.spec and onnx_model.labels == model.labels
    photos = sorted(str(p) for p in PHOTOS.glob("*.JPEG"))
    assert len(photos) == 100
    pixels = onnx_model.preprocess(photos)  # the file's spec (equal to the checkpoint's, asserted above)
    ours, theirs = onnx_model(pixels), model(pixels)
    diff = float((ours - theirs).abs().max())
    same_top1 = int((ours.argmax(-1) == theirs.argmax(-1)).sum())
    tokens = onnx_model.embed_pixels(pixels[:16], pool="tokens", normalize=False)
    token_diff = float((tokens - model.embed_pixels(pixels[:16], pool="tokens", normalize=False)).abs().max())
    report(f"onnx: real DeiT-Tiny, {len(photos)} photos, onnxruntime fp32 vs vitkit fp32: top-1 same on "
           f"{same_top1}/{len(photos)}, max abs logit diff {diff:.1e}, token features {token_diff:.1e} "
           f"(export verification: {rep.max_abs_diff['logits']:.1e}; {rep.export_s:.1f} s + {rep.verify_s:.1f} s)")
    assert same_top1 == len(photos)
    assert diff <= TOL
    assert token_diff <= vx_verify.FEATURES_RTOL * float(tokens.abs().max())
