"""Runtime backends (vitkit.runtime.prepare) against the plain network, on this CPU.

Tolerances:
  eager fp32 (oneDNN-packed linears): max abs diff <= 1e-4 on logits, features, intermediates, pre-logits
    (observed ~2e-6 on O(1) logits: only the summation order changes).
  bf16: the logits are not expected within 1e-4 (bf16 keeps 8 bits of mantissa); required instead:
    max abs logit diff <= 3% of the largest |logit| (observed ~1%), token features cosine >= 0.999
    (observed 0.9999), and the same top-1 wherever the fp32 top-2 margin exceeds 5% of the largest |logit|
    (random weights and inputs give near-ties that may flip; observed 94-97% raw agreement). With the real
    DeiT-Tiny on the 100 real photos: top-1 agreement >= 99% (observed 100%).
  compile: same tolerances as its dtype; built on a tiny model only (inductor compiles in ~5-10 s here).

Run:  .venv/bin/python -m pytest tests/test_runtime.py -q
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.config import ViTConfig, variant
from vitkit.models.vit import VisionTransformer
from vitkit.runtime import PreparedViT, RuntimeUnavailable, available, cpu_bf16_native, prepare, resolve
from vitkit.runtime.memory import release_file_pages
from vitkit.runtime.packed_linear import InferenceBlock, PackedLinear, packing_available

from conftest import SHARED, TINY, TINY_VARIANTS, randomise_

CONFIGS = {**TINY_VARIANTS, "no_qkv_bias": ViTConfig(**TINY, qkv_bias="none")}
needs_bf16 = pytest.mark.skipif(not cpu_bf16_native(), reason="this CPU has no bf16 instructions (AVX512-BF16/AMX)")
needs_onednn = pytest.mark.skipif(not packing_available(), reason="PyTorch built without oneDNN: nothing is packed")


def _net(cfg: ViTConfig, seed: int = 0) -> VisionTransformer:
    return randomise_(VisionTransformer(cfg), scale=0.1, seed=seed)


def _outputs(net, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    with torch.inference_mode():
        tokens = net.forward_features(x)
        return {
            "logits": net(x),
            "features": tokens,
            "pre_logits": net.forward_head(tokens, pre_logits=True),
            "intermediates": net.forward_intermediates(x, [0, -1]),
            "intermediates_norm": net.forward_intermediates(x, [-1, 0], norm=True),
            "attention_maps": net.attention_maps(x),
        }


def _max_diff(a, b) -> float:
    if isinstance(a, list):
        return max(_max_diff(x, y) for x, y in zip(a, b))
    assert a.dtype == torch.float32, a.dtype  # prepared networks always answer in fp32
    assert a.shape == b.shape
    return float((a - b).abs().max())


# -- fp32 eager: packed linears, same numbers --------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIGS))
def test_eager_fp32_matches_plain(name):
    net = _net(CONFIGS[name])
    x = torch.randn(3, 3, 32, 32)
    ref = _outputs(net, x)
    prepared = prepare(copy.deepcopy(net), "eager", "fp32", "cpu")
    assert prepared.runtime.packed == packing_available()
    got = _outputs(prepared, x)
    for key in ref:
        assert _max_diff(got[key], ref[key]) <= 1e-4, key


@pytest.mark.parametrize("size", [48, 44, 24])  # another grid, a side that is no multiple of the patch, smaller
def test_eager_fp32_other_input_sizes(size):
    net = _net(CONFIGS["vit"])
    x = torch.randn(2, 3, size, size + 8)
    with torch.inference_mode():
        ref = net(x)
    assert _max_diff(prepare(copy.deepcopy(net)).forward(x), ref) <= 1e-4


@pytest.mark.slow
def test_eager_fp32_full_size_vit_b16():
    net = _net(variant("B/16"))
    x = torch.randn(2, 3, 224, 224)
    ref = _outputs(net, x)
    got = _outputs(prepare(net, "eager", "fp32"), x)
    for key in ("logits", "features", "pre_logits", "intermediates", "intermediates_norm"):
        assert _max_diff(got[key], ref[key]) <= 1e-4, key


# -- bf16 --------------------------------------------------------------------------------------------
def _close_in_bf16(out: torch.Tensor, ref: torch.Tensor) -> None:
    scale = float(ref.abs().max())
    assert float((out - ref).abs().max()) <= 0.03 * scale
    top2 = ref.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 0.05 * scale  # not a near-tie
    assert clear.any()
    assert torch.equal(out.argmax(-1)[clear], ref.argmax(-1)[clear])


@needs_bf16
@pytest.mark.parametrize("name", ["vit", "deit_distilled", "beit", "pre_logits"])
def test_eager_bf16_close_to_fp32(name):
    net = _net(CONFIGS[name])
    x = torch.randn(64, 3, 32, 32)
    ref = _outputs(net, x)
    prepared = prepare(copy.deepcopy(net), "eager", "bf16")
    got = _outputs(prepared, x)
    _close_in_bf16(got["logits"], ref["logits"])
    cos = torch.nn.functional.cosine_similarity(got["features"].flatten(1), ref["features"].flatten(1))
    assert float(cos.min()) >= 0.999
    assert _max_diff(got["intermediates"], ref["intermediates"]) <= 0.05 * float(ref["intermediates"][-1].abs().max())
    if prepared.runtime.packed:  # weights are held once, in bf16
        packed = [m.packed_weight for m in prepared.modules() if isinstance(m, PackedLinear)]
        assert packed and all(w.dtype == torch.bfloat16 for w in packed)


@needs_bf16
@pytest.mark.slow
def test_eager_bf16_full_size_vit_b16():
    net = _net(variant("B/16"))
    x = torch.randn(8, 3, 224, 224)
    with torch.inference_mode():
        ref = net(x)
    _close_in_bf16(prepare(net, "eager", "bf16")(x), ref)


@needs_bf16
@pytest.mark.skipif(not (SHARED / "weights/deit-tiny-patch16-224/model.safetensors").exists(),
                    reason="../shared/weights/deit-tiny-patch16-224 is not here")
@pytest.mark.slow
def test_bf16_top1_agreement_real_deit_tiny(report):
    weights = SHARED / "weights/deit-tiny-patch16-224/model.safetensors"
    photos = sorted(str(p) for p in (SHARED / "images/imagenet-sample-100").glob("*.JPEG"))
    model = vitkit.load(str(weights), arch="deit_tiny_patch16_224")
    pixels = model.preprocess(photos)
    fp32 = model(pixels).argmax(-1)
    model.net = prepare(model.net, "eager", "bf16")
    bf16 = model(pixels).argmax(-1)
    agreement = float((bf16 == fp32).float().mean())
    report(f"runtime: eager bf16 vs fp32 top-1 agreement, real DeiT-Tiny, {len(photos)} photos: {agreement:.0%}")
    assert agreement >= 0.99


# -- compile -----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile (inductor) needs a C++ compiler on CPU; none found")
def test_compile_tiny_matches_plain(report):
    net = _net(CONFIGS["vit"])
    x = torch.randn(4, 3, 32, 32)
    ref = _outputs(net, x)
    start = time.perf_counter()
    prepared = prepare(copy.deepcopy(net), "compile", "fp32", warmup_batch=4)
    report(f"runtime: torch.compile of a tiny ViT (fp32, freezing) took {time.perf_counter() - start:.1f} s")
    assert prepared.runtime.compile_s is not None and prepared.runtime.compiled_batch == 4
    got = _outputs(prepared, x)
    for key in ("logits", "features", "pre_logits", "intermediates"):
        assert _max_diff(got[key], ref[key]) <= 1e-4, key
    # other batch sizes reuse the compiled graph: padded up, or split into chunks of 4
    more = torch.randn(9, 3, 32, 32)
    with torch.inference_mode():
        assert _max_diff(prepared(more), net(more)) <= 1e-4
        assert _max_diff(prepared(more[:1]), net(more[:1])) <= 1e-4
    assert prepared.runtime.compiled_batch == 4


# -- choices and errors ------------------------------------------------------------------------------
def test_auto_on_cpu_is_eager_fp32():
    assert resolve("auto", "auto", "cpu") == ("eager", "fp32", torch.device("cpu"))
    assert ("eager", "fp32") in available("cpu")
    assert all(dtype != "fp16" for _, dtype in available("cpu"))


def test_fp16_on_cpu_is_refused():
    with pytest.raises(RuntimeUnavailable, match="fp16 runs on a GPU only"):
        prepare(_net(CONFIGS["vit"]), "eager", "fp16", "cpu")


def test_bf16_refused_without_bf16_instructions(monkeypatch):
    import vitkit.runtime.backends as backends

    monkeypatch.setattr(backends, "cpu_bf16_native", lambda: False)
    with pytest.raises(RuntimeUnavailable, match="bf16 needs a CPU with bf16 instructions"):
        backends.prepare(_net(CONFIGS["vit"]), "eager", "bf16", "cpu")


@pytest.mark.parametrize("backend, dtype, error, message", [
    ("tensorrt", "fp32", RuntimeUnavailable, "unknown backend 'tensorrt'"),
    ("eager", "int4", RuntimeUnavailable, "unknown dtype 'int4'"),
    ("onnx", "auto", RuntimeUnavailable, "use vitkit.runtime.inference_network"),
])
def test_unknown_or_reserved_choices(backend, dtype, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(")):
        prepare(_net(CONFIGS["vit"]), backend, dtype)


# -- the prepared network ------------------------------------------------------------------------------
def test_prepare_is_in_place_inference_only_and_saves_as_itself():
    net = _net(CONFIGS["beit"])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    prepared = prepare(net)
    assert prepared is net and isinstance(prepared, PreparedViT) and isinstance(prepared, VisionTransformer)
    assert prepared.config == CONFIGS["beit"] and not prepared.training
    assert not any(p.requires_grad for p in prepared.parameters())
    if prepared.runtime.packed:
        assert all(isinstance(b, InferenceBlock) for b in prepared.blocks)
        assert not any(isinstance(m, torch.nn.Linear) for m in prepared.modules())  # no fp32 copy left
    after = prepared.state_dict()
    assert set(after) == set(before)
    assert max(float((after[k] - before[k]).abs().max()) for k in before) <= 1e-6  # layer scale unfolded
    fresh = VisionTransformer(CONFIGS["beit"]).eval()
    fresh.load_state_dict(after)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert _max_diff(fresh(x), prepared(x)) <= 1e-4
    with pytest.raises(RuntimeError, match="prepared for inference"):
        prepared.train()
    with pytest.raises(RuntimeError, match="cannot load weights"):
        prepared.load_state_dict(after)
    with pytest.raises(RuntimeError, match="already prepared"):
        prepare(prepared)


def test_prepared_network_serves_the_model_api():
    model = vitkit.load(arch="deit_tiny_patch16_224")
    randomise_(model.net, scale=0.1)
    x = torch.randn(2, 3, 224, 224)
    ref = model(x)
    model.net = prepare(model.net)
    assert _max_diff(model(x), ref) <= 1e-4
    assert len(model.top_k(model(x), 3)[0]) == 3


# -- memory --------------------------------------------------------------------------------------------
@needs_onednn
def test_packing_releases_memory_mapped_weights(tmp_path: Path):
    net = VisionTransformer(variant("S/16", depth=2))
    model = vitkit.load(arch="vit_small_patch16_224")
    model.net = net
    path = model.save(tmp_path / "s16.safetensors", format="safetensors")
    loaded = vitkit.load(str(path))
    fc1 = loaded.net.blocks[0].mlp.fc1.weight  # memory-mapped from the file
    assert release_file_pages([fc1]) > 0
    assert release_file_pages([torch.randn(1024, 1024)]) == 0  # anonymous memory is left alone
    prepare(loaded.net)
    assert loaded.net.blocks[0].qkv.packed_weight.is_mkldnn


# -- bench -----------------------------------------------------------------------------------------------
def test_bench_model_and_end_to_end(tmp_path: Path):
    from PIL import Image

    from vitkit.tasks.bench import bench_end_to_end, bench_model

    model = vitkit.load(arch="deit_tiny_patch16_224")
    result = bench_model(model, batch_size=2, backend="eager", dtype="fp32", warmup=1, iters=2)
    for key in ("img_s", "ms_p50", "ms_p95", "peak_rss_mb", "backend", "dtype", "batch_size"):
        assert key in result, key
    assert result["backend"] == "eager" and result["dtype"] == "fp32" and result["batch_size"] == 2
    assert result["img_s"] > 0 and result["ms_p95"] >= result["ms_p50"] > 0
    assert isinstance(model.net, PreparedViT)  # the Model now holds the prepared network
    for i in range(3):
        Image.new("RGB", (300, 200), (40 * i, 90, 200)).save(tmp_path / f"{i}.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    e2e = bench_end_to_end(model, tmp_path, batch_size=2, workers=0)
    assert e2e["images"] == 3 and e2e["errors"] == 1 and e2e["img_s"] > 0
    assert e2e["backend"] == "eager" and e2e["batch_size"] == 2
