"""Google's vision_transformer .npz checkpoints (the original release, its `opt/target/` variant with
optimizer state, and AugReg files without a pre-logits layer) against an independent reference.

The .npz is written here by hand in the original layout (per-head attention kernels (D, heads, head_dim),
conv kernel (kh, kw, in, out), ...), and `jax_reference` below is a from-scratch forward pass over those
arrays (float64 einsums over heads), written without vitkit's key map. Then: vitkit loads the file ->
same logits; vitkit -> save_jax -> the same arrays; and vitkit -> save_hf -> transformers' ViT -> same logits.

Run:  .venv/bin/python -m pytest tests/test_jax_npz.py -q
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitkit.checkpoints.convert import load_network
from vitkit.checkpoints.io import CheckpointError
from vitkit.checkpoints.save import save_hf, save_jax
from vitkit.config import HALF, PreprocessSpec, ViTConfig
from vitkit.models import registry

TOL = 1e-4
D, DEPTH, HEADS, MLP, PATCH, IMAGE, CLASSES, REPR = 48, 2, 3, 96, 8, 32, 5, 40
HD = D // HEADS
ARCH = "vit_test_tiny_patch8_32"


@pytest.fixture(autouse=True)
def tiny_arch(monkeypatch):
    """A tiny architecture row, as if the registry had it (bare .npz files carry no config)."""
    cfg = ViTConfig(image_size=IMAGE, patch_size=PATCH, width=D, depth=DEPTH, heads=HEADS, mlp_dim=MLP,
                    num_classes=CLASSES)
    monkeypatch.setitem(registry.ARCHS, ARCH, registry.Arch(cfg, PreprocessSpec(IMAGE, 1.0, mean=HALF, std=HALF)))


def jax_params(pre_logits: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 arrays named and shaped as in google-research/vision_transformer's checkpoints."""
    rng = np.random.default_rng(seed)

    def normal(*shape, std=1.0):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def kernel(fan_in, *shape):
        return normal(*shape, std=1 / math.sqrt(fan_in))

    p = {
        "embedding/kernel": kernel(PATCH * PATCH * 3, PATCH, PATCH, 3, D),
        "embedding/bias": normal(D, std=0.5),
        "cls": normal(1, 1, D, std=0.5),
        "Transformer/posembed_input/pos_embedding": normal(1, (IMAGE // PATCH) ** 2 + 1, D, std=0.5),
        "Transformer/encoder_norm/scale": 1 + normal(D, std=0.2),
        "Transformer/encoder_norm/bias": normal(D, std=0.5),
    }
    for i in range(DEPTH):
        block = f"Transformer/encoderblock_{i}/"
        mha = block + "MultiHeadDotProductAttention_1/"
        for norm in ("LayerNorm_0", "LayerNorm_2"):
            p[block + norm + "/scale"] = 1 + normal(D, std=0.2)
            p[block + norm + "/bias"] = normal(D, std=0.5)
        for name in ("query", "key", "value"):
            p[mha + name + "/kernel"] = kernel(D, D, HEADS, HD)  # (D, heads, head_dim)
            p[mha + name + "/bias"] = normal(HEADS, HD, std=0.5)
        p[mha + "out/kernel"] = kernel(D, HEADS, HD, D)  # (heads, head_dim, D)
        p[mha + "out/bias"] = normal(D, std=0.5)
        p[block + "MlpBlock_3/Dense_0/kernel"] = kernel(D, D, MLP)  # (in, out)
        p[block + "MlpBlock_3/Dense_0/bias"] = normal(MLP, std=0.5)
        p[block + "MlpBlock_3/Dense_1/kernel"] = kernel(MLP, MLP, D)
        p[block + "MlpBlock_3/Dense_1/bias"] = normal(D, std=0.5)
    features = D
    if pre_logits:  # the original in21k release: dense + tanh "representation" layer before the head
        p["pre_logits/kernel"] = kernel(D, D, REPR)
        p["pre_logits/bias"] = normal(REPR, std=0.5)
        features = REPR
    p["head/kernel"] = kernel(features, features, CLASSES)
    p["head/bias"] = normal(CLASSES, std=0.5)
    return p


def jax_reference(p: dict[str, np.ndarray], pixels: torch.Tensor) -> torch.Tensor:
    """Logits from the JAX arrays, in float64: vision_transformer's forward pass, written from its
    model code (models_vit.py) rather than from vitkit. One difference on purpose: exact (erf) GELU, as
    timm, transformers and vitkit use for these weights, where flax's nn.gelu defaults to the tanh form."""
    t = {k: torch.from_numpy(v).double() for k, v in p.items()}
    x = pixels.double().permute(0, 2, 3, 1)  # (B, H, W, C): JAX is channels-last
    b, h, w, c = x.shape
    gh, gw = h // PATCH, w // PATCH
    patches = x.reshape(b, gh, PATCH, gw, PATCH, c)  # (B, gh, ph, gw, pw, C)
    x = torch.einsum("biujvc,uvco->bijo", patches, t["embedding/kernel"]) + t["embedding/bias"]  # (B, gh, gw, D)
    x = x.reshape(b, gh * gw, D)  # row-major patches, as flax's reshape
    x = torch.cat([t["cls"].expand(b, 1, D), x], dim=1)  # (B, 1 + N, D)
    x = x + t["Transformer/posembed_input/pos_embedding"]

    def layer_norm(x, name):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-6) * t[name + "/scale"] + t[name + "/bias"]

    for i in range(DEPTH):
        block = f"Transformer/encoderblock_{i}/"
        mha = block + "MultiHeadDotProductAttention_1/"
        y = layer_norm(x, block + "LayerNorm_0")
        q, k, v = (torch.einsum("bnd,dhk->bnhk", y, t[mha + n + "/kernel"]) + t[mha + n + "/bias"]
                   for n in ("query", "key", "value"))  # each (B, N, heads, head_dim)
        scores = torch.einsum("bnhk,bmhk->bhnm", q / math.sqrt(HD), k)  # (B, heads, N, N)
        o = torch.einsum("bhnm,bmhk->bnhk", scores.softmax(-1), v)  # (B, N, heads, head_dim)
        x = x + torch.einsum("bnhk,hkd->bnd", o, t[mha + "out/kernel"]) + t[mha + "out/bias"]
        y = layer_norm(x, block + "LayerNorm_2")
        mlp = block + "MlpBlock_3/"
        y = torch.nn.functional.gelu(y @ t[mlp + "Dense_0/kernel"] + t[mlp + "Dense_0/bias"])
        x = x + y @ t[mlp + "Dense_1/kernel"] + t[mlp + "Dense_1/bias"]
    x = layer_norm(x, "Transformer/encoder_norm")[:, 0]  # class token
    if "pre_logits/kernel" in t:
        x = torch.tanh(x @ t["pre_logits/kernel"] + t["pre_logits/bias"])
    return x @ t["head/kernel"] + t["head/bias"]


def write_npz(path, params: dict[str, np.ndarray]):
    with open(path, "wb") as fh:
        np.savez(fh, **params)
    return str(path)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


VARIANTS = {
    "original-in21k": dict(pre_logits=True, prefix=""),
    "opt-target": dict(pre_logits=True, prefix="opt/target/"),
    "augreg": dict(pre_logits=False, prefix=""),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_npz_matches_reference(variant, tmp_path):
    spec = VARIANTS[variant]
    params = jax_params(spec["pre_logits"])
    stored = {spec["prefix"] + k: v for k, v in params.items()}
    if spec["prefix"]:  # optimizer state beside the weights: not part of the model, dropped
        stored["opt/state/step"] = np.array(1234, dtype=np.int64)
        stored["opt/state/param_states/head/kernel/grad_ema"] = np.zeros_like(params["head/kernel"])
    loaded = load_network(write_npz(tmp_path / "vit.npz", stored), arch=ARCH)
    assert loaded.layout == "jax"
    assert loaded.net.config.pre_logits_dim == (REPR if spec["pre_logits"] else 0)
    assert loaded.net.config.num_classes == CLASSES
    for size in ((IMAGE, IMAGE), (48, 40)):  # native, and another size (positions resampled)
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            mine = loaded.net(x)
        if size == (IMAGE, IMAGE):
            diff = max_diff(jax_reference(params, x), mine)
            print(f"{variant}: max|logits - reference| {diff:.2e}")
            assert diff <= TOL
        else:
            assert mine.shape == (2, CLASSES) and torch.isfinite(mine).all()


def test_reference_is_sensitive():
    """The reference notices a transposed per-head kernel, so agreeing with it means something."""
    params = jax_params()
    x = torch.randn(1, 3, IMAGE, IMAGE)
    wrong = dict(params)
    q = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"
    wrong[q] = params[q].transpose(0, 2, 1).reshape(D, HEADS, HD)  # heads and head_dim swapped
    assert max_diff(jax_reference(params, x), jax_reference(wrong, x)) > 1e-2


@pytest.mark.parametrize("variant", ["original-in21k", "augreg"])
def test_save_jax_roundtrip(variant, tmp_path):
    params = jax_params(VARIANTS[variant]["pre_logits"])
    loaded = load_network(write_npz(tmp_path / "in.npz", params), arch=ARCH)
    out = save_jax(loaded.net, loaded.preprocess, tmp_path / "out.npz")
    with np.load(out) as saved:
        assert sorted(saved.files) == sorted(params)
        for key, value in params.items():
            assert saved[key].shape == value.shape, key
            assert np.array_equal(saved[key], value), key
    again = load_network(str(out), arch=ARCH)
    x = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        assert torch.equal(again.net(x), loaded.net(x))


def test_npz_to_transformers(tmp_path):
    """The AugReg-style file through vitkit into transformers' ViTForImageClassification: the same logits
    as the JAX reference, a second check of the key map from the other side."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    params = jax_params(pre_logits=False)
    loaded = load_network(write_npz(tmp_path / "augreg.npz", params), arch=ARCH)
    folder = save_hf(loaded.net, loaded.preprocess, tmp_path / "hf")
    model, info = transformers.ViTForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info
    x = torch.randn(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        theirs = model.eval()(pixel_values=x).logits
    diff = max_diff(jax_reference(params, x), theirs)
    print(f"npz -> vitkit -> transformers: max|logits - reference| {diff:.2e}")
    assert diff <= TOL


def test_npz_with_wrong_architecture_is_refused(tmp_path):
    path = write_npz(tmp_path / "vit.npz", jax_params())
    with pytest.raises(CheckpointError, match="pos_embed|blocks|shape"):
        load_network(path, arch="vit_tiny_patch16_224")
