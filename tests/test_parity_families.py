"""Parity with transformers for the self-supervised and image-text families: ViTMAE (encoder, no masking),
DINOv2, DINOv2 with registers, DINOv3 (2-D RoPE; also with SwiGLU), CLIP vision towers (with and without the projection, alone and inside CLIPModel)
and SigLIP vision towers (alone and inside SiglipModel). Every parameter randomised, saved with
save_pretrained, loaded by vitkit -> the same pooled embedding, final tokens and hidden state of every layer
(max abs diff <= 1e-4) at the native size and at other sizes; then vitkit -> save_hf -> transformers'
from_pretrained -> the same outputs again.

Run:  .venv/bin/python -m pytest tests/test_parity_families.py -q
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ is not a package: the reference helpers

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

from vitkit.checkpoints.convert import load_network  # noqa: E402
from vitkit.checkpoints.save import save_hf  # noqa: E402

TOL = 1e-4
TINY = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, image_size=32, patch_size=8)
SIZES = ((32, 32), (48, 48), (24, 40))  # native, larger, smaller and non-square
PREPROCESS = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
              "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
              "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}


@dataclass(frozen=True)
class Case:
    cls: str  # transformers model class
    config: str  # its config class
    fields: dict
    family: str  # vitkit's family for it
    text: bool = False  # an image-text model: the vision config is nested, text fields are needed too

    def build(self, randomise):
        fields = self.fields
        if self.text:
            fields = dict(vision_config=self.fields, text_config=dict(hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=64, vocab_size=99), projection_dim=24)
        fields = {**fields, "projection_dim": 24} if self.cls == "CLIPVisionModelWithProjection" else fields
        model = getattr(transformers, self.cls)(getattr(transformers, self.config)(**fields))
        return randomise(model)


CLIP = dict(TINY, intermediate_size=96, hidden_act="quick_gelu")
SIGLIP = dict(TINY, intermediate_size=96, hidden_act="gelu_pytorch_tanh")
CASES = {
    "mae": Case("ViTMAEModel", "ViTMAEConfig", dict(TINY, intermediate_size=96, mask_ratio=0.0), "mae"),
    "dinov2": Case("Dinov2Model", "Dinov2Config", dict(TINY, mlp_ratio=2, layerscale_value=0.5), "dinov2"),
    "dinov2-classifier": Case("Dinov2ForImageClassification", "Dinov2Config",
                              dict(TINY, mlp_ratio=2, num_labels=4, id2label={0: "a", 1: "b", 2: "c", 3: "d"},
                                   label2id={"a": 0, "b": 1, "c": 2, "d": 3}), "dinov2"),
    "dinov2-registers-classifier": Case("Dinov2WithRegistersForImageClassification", "Dinov2WithRegistersConfig",
                                        dict(TINY, mlp_ratio=2, num_register_tokens=2, num_labels=3), "dinov2"),
    "dinov2-registers": Case("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig",
                             dict(TINY, mlp_ratio=2, num_register_tokens=3), "dinov2"),
    "dinov3": Case("DINOv3ViTModel", "DINOv3ViTConfig", dict(TINY, intermediate_size=96, num_register_tokens=2,
                                                              layerscale_value=0.5, rope_theta=50.0), "dinov3"),
    "dinov3-swiglu-all-biases": Case("DINOv3ViTModel", "DINOv3ViTConfig",
                                     dict(TINY, intermediate_size=80, use_gated_mlp=True, hidden_act="silu",
                                          key_bias=True), "dinov3"),
    "clip-vision": Case("CLIPVisionModel", "CLIPVisionConfig", CLIP, "clip"),
    "clip-vision-projection": Case("CLIPVisionModelWithProjection", "CLIPVisionConfig", CLIP, "clip"),
    "clip-gelu-image-text": Case("CLIPModel", "CLIPConfig", dict(CLIP, hidden_act="gelu"), "clip", text=True),
    "siglip-vision": Case("SiglipVisionModel", "SiglipVisionConfig", SIGLIP, "siglip"),
    "siglip-image-text": Case("SiglipModel", "SiglipConfig", SIGLIP, "siglip", text=True),
}


@torch.no_grad()
def reference(model, x: torch.Tensor, native: bool) -> dict:
    """transformers' pooled image embedding, final tokens and every hidden state."""
    kwargs = dict(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=not native)
    if isinstance(model, transformers.DINOv3ViTModel):  # rotary positions: any size, no flag
        del kwargs["interpolate_pos_encoding"]
    if isinstance(model, transformers.ViTMAEModel):  # keep every patch, in order
        kwargs["noise"] = torch.arange(x.shape[-2] // 8 * (x.shape[-1] // 8), dtype=torch.float32).expand(x.shape[0], -1)
    tower = getattr(model, "vision_model", None)
    if tower is not None and hasattr(model, "text_model"):  # image-text model: its image features
        out = tower(**kwargs)
        pooled = model.get_image_features(pixel_values=x, interpolate_pos_encoding=not native)
        pooled = getattr(pooled, "pooler_output", pooled)  # newer transformers return an output object
    elif hasattr(model, "classifier"):  # a classifier: its logits, and the backbone's tokens
        logits = model(**kwargs).logits
        out = model.base_model(**kwargs)
        return dict(pooled=logits, tokens=out.last_hidden_state, hidden=out.hidden_states)
    else:
        out = model(**kwargs)
        pooled = getattr(out, "image_embeds", None)
        pooled = pooled if pooled is not None else getattr(out, "pooler_output", None)
        pooled = pooled if pooled is not None else out.last_hidden_state[:, 0]  # MAE: no pooler
    tokens = out.last_hidden_state
    if isinstance(model, (transformers.CLIPVisionModel, transformers.CLIPVisionModelWithProjection,
                          transformers.CLIPModel)):
        tokens = None  # CLIP's last_hidden_state is before its final norm (which it applies to the pooled token)
    return dict(pooled=pooled, tokens=tokens, hidden=out.hidden_states)


@torch.no_grad()
def mine(net, x: torch.Tensor) -> dict:
    tokens = net.forward_features(x)
    blocks = net.forward_intermediates(x, list(range(net.config.depth)))
    pooled = net.forward_head(tokens, pre_logits=True)
    if net.config.num_classes:
        pooled = net(x)  # the logits
    elif net.config.family == "dinov2" or net.config.family == "mae":
        pooled = net.pool(tokens, "cls")  # their pooler_output: the class token after the final norm
    return dict(pooled=pooled, tokens=tokens, hidden=(net.embed(x)[0], *blocks))


def diffs(ref: dict, got: dict) -> dict[str, float]:
    out = {"pooled": (ref["pooled"] - got["pooled"]).abs().max().item()}
    if ref["tokens"] is not None:
        out["tokens"] = (ref["tokens"] - got["tokens"]).abs().max().item()
    assert len(ref["hidden"]) == len(got["hidden"])
    for i, (a, b) in enumerate(zip(ref["hidden"], got["hidden"])):
        assert a.shape == b.shape, (i, a.shape, b.shape)
        out[f"hidden[{i}]"] = (a - b).abs().max().item()
    return out


def check(ref_model, net, size, label: str) -> float:
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    d = diffs(reference(ref_model, x, native=size == SIZES[0]), mine(net, x))
    worst = max(d.values())
    assert worst <= TOL, f"{label} at {size}: {d}"
    return worst


@pytest.fixture(scope="module")
def built(tmp_path_factory, randomise):
    cache = {}

    def get(name: str):
        if name not in cache:
            ref = CASES[name].build(randomise)
            folder = tmp_path_factory.mktemp(name)
            ref.save_pretrained(folder)
            (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESS))
            cache[name] = ref, load_network(str(folder)), folder
        return cache[name]

    return get


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", CASES)
def test_transformers_to_vitkit(name, size, built, report):
    ref, loaded, _ = built(name)
    assert loaded.net.config.family == CASES[name].family
    worst = check(ref, loaded.net, size, name)
    if size == SIZES[0]:
        report(f"parity: transformers {CASES[name].cls} -> vitkit ({CASES[name].family}): max|diff| {worst:.1e}")


@pytest.mark.parametrize("name", CASES)
def test_vitkit_to_transformers(name, built, tmp_path):
    ref, loaded, _ = built(name)
    folder = save_hf(loaded.net, loaded.preprocess, tmp_path / "saved")
    architecture = json.loads((folder / "config.json").read_text())["architectures"][0]
    back = getattr(transformers, architecture).from_pretrained(folder).eval()
    for size in SIZES[:2]:
        check(back, loaded.net, size, f"{name} saved back")
    assert load_network(str(folder)).net.config == loaded.net.config


def test_registers_are_prefix_tokens_without_positions(built):
    _, loaded, _ = built("dinov2-registers")
    cfg = loaded.net.config
    assert (cfg.reg_tokens, cfg.num_prefix_tokens, cfg.pos_prefix_tokens) == (3, 4, 1)
    assert loaded.net.pos_embed.shape[1] == 1 + cfg.grid**2  # class + patches, none for the registers
    assert loaded.net.embed(torch.zeros(1, 3, 32, 32))[0].shape[1] == 4 + 16


def test_default_embeddings_per_family(built):
    import vitkit

    expected = {"dinov2": "cls", "dinov2-registers": "cls", "mae": "cls", "clip-vision": "cls",
                "clip-vision-projection": "prelogits", "siglip-vision": "prelogits"}
    for name, pool in expected.items():
        _, _, folder = built(name)
        model = vitkit.load(str(folder), device="cpu")
        assert model.default_pool == pool, name
        vec = model.embed_pixels(torch.randn(2, 3, 32, 32))
        assert vec.shape == (2, 24 if name == "clip-vision-projection" else 48)


# ------------------------------------------------------------------------------------------------- timm
# timm's VisionTransformer carries every one of these families as arguments; a tiny randomised model of each
# is saved as a state dict and loaded by vitkit with the matching config (as an --arch row would give it).

TIMM_TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
VITKIT_TINY = dict(image_size=32, patch_size=8, width=48, depth=2, heads=3, mlp_dim=192, num_classes=10)
TIMM_CASES = {  # name -> (timm VisionTransformer arguments, vitkit config fields)
    "dinov2": (dict(init_values=0.5), dict(layer_scale_init=0.5, family="dinov2")),
    "dinov2-reg4": (dict(init_values=0.5, reg_tokens=4, no_embed_class=True),
                    dict(layer_scale_init=0.5, reg_tokens=4, class_pos_embed=False, family="dinov2")),
    "deit3": (dict(init_values=0.5, no_embed_class=True),
              dict(layer_scale_init=0.5, class_pos_embed=False, family="deit3")),
    "siglip": (dict(class_token=False, global_pool="map", act_layer="gelu_tanh"),
               dict(class_token=False, pool="map", act="gelu_tanh", family="siglip")),
    "clip-quickgelu": (dict(pre_norm=True, act_layer="quick_gelu"),
                       dict(pre_norm=True, patch_bias=False, act="quick_gelu", family="clip")),
}


@pytest.fixture(scope="module")
def timm_built(tmp_path_factory):
    from reference_timm import import_timm, tiny_vit

    try:
        import_timm()
    except ImportError as err:
        pytest.skip(f"timm, the parity reference, cannot be imported: {err}")
    from safetensors.torch import save_file

    from vitkit.config import PreprocessSpec, ViTConfig
    from vitkit.models import registry

    cache = {}

    def get(name: str):
        if name not in cache:
            timm_args, fields = TIMM_CASES[name]
            ref = tiny_vit(**{**TIMM_TINY, **timm_args})
            path = tmp_path_factory.mktemp(name) / "model.safetensors"
            save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
            arch = f"tiny_{name}_timm_test"
            registry.ARCHS[arch] = registry.Arch(ViTConfig(**VITKIT_TINY, **fields), PreprocessSpec(input_size=32))
            try:
                cache[name] = ref, load_network(str(path), arch), path
            finally:
                del registry.ARCHS[arch]
        return cache[name]

    return get


@torch.no_grad()
def _timm_vs_vitkit(ref, net, x) -> dict[str, float]:
    captured = []
    hooks = [blk.register_forward_hook(lambda m, i, o: captured.append(o)) for blk in ref.blocks]
    try:
        tokens = ref.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    mine_tokens = net.forward_features(x)
    out = {"tokens": (tokens - mine_tokens).abs().max().item(),
           "pre_logits": (ref.forward_head(tokens, pre_logits=True)
                          - net.forward_head(mine_tokens, pre_logits=True)).abs().max().item(),
           "logits": (ref(x) - net(x)).abs().max().item()}
    for i, (a, b) in enumerate(zip(captured, net.forward_intermediates(x, list(range(net.config.depth))))):
        out[f"block{i}"] = (a - b).abs().max().item()
    return out


@pytest.mark.parametrize("name", TIMM_CASES)
def test_timm_to_vitkit_and_back(name, timm_built, tmp_path, report):
    from vitkit.checkpoints.save import save_timm

    ref, loaded, _ = timm_built(name)
    d = _timm_vs_vitkit(ref, loaded.net, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)))
    assert max(d.values()) <= TOL, d
    report(f"parity: timm VisionTransformer({name}) -> vitkit: max|diff| {max(d.values()):.1e}")
    saved = save_timm(loaded.net, loaded.preprocess, tmp_path / "back.safetensors")
    from safetensors.torch import load_file

    state = load_file(str(saved))
    assert set(state) == set(ref.state_dict())
    ref.load_state_dict(state, strict=True)  # the same tensors in timm's names and shapes
    d = _timm_vs_vitkit(ref, loaded.net, torch.randn(1, 3, 32, 32))
    assert max(d.values()) <= TOL, d


@pytest.mark.parametrize("name", ["dinov2-reg4", "deit3", "siglip"])
def test_timm_families_at_other_sizes(name, timm_built):
    """Positions resampled at run time for 48 px and a non-square 24x40 input, against timm built with
    dynamic_img_size (it resamples the same positions per input)."""
    from reference_timm import tiny_vit

    ref, loaded, _ = timm_built(name)
    dynamic = tiny_vit(**{**TIMM_TINY, **TIMM_CASES[name][0]}, dynamic_img_size=True)
    dynamic.load_state_dict(ref.state_dict())
    for size in ((48, 48), (24, 40)):
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            diff = (dynamic(x) - loaded.net(x)).abs().max().item()
        assert diff <= TOL, (size, diff)


# ------------------------------------------------------------------------------- timm eva.py: EVA-02, DINOv3
EVA_CASES = {  # name -> (timm Eva arguments, vitkit config fields)
    "eva02-tiny-packed": (dict(swiglu_mlp=True, mlp_ratio=8 / 3),
                          dict(mlp_dim=128, mlp="swiglu", act="silu")),
    "eva02-base-split-sublayernorm": (dict(swiglu_mlp=True, scale_mlp=True, qkv_fused=False, mlp_ratio=8 / 3),
                                      dict(mlp_dim=128, mlp="swiglu", act="silu", mlp_norm=True)),
    "eva02-layer-scale-ref-grid": (dict(swiglu_mlp=True, mlp_ratio=8 / 3, init_values=0.5, ref_feat_shape=(6, 6)),
                                   dict(mlp_dim=128, mlp="swiglu", act="silu", layer_scale_init=0.5,
                                        rope_ref_grid=6)),
}
TIMM_DINOV3_ARGS = dict(use_rot_pos_emb=True, rope_type="dinov3", rope_temperature=100, rope_rotate_half=True,
                        use_abs_pos_emb=False, num_reg_tokens=2, init_values=0.5, global_pool="token")
TIMM_DINOV3_FIELDS = dict(abs_pos_embed=False, rope="dinov3", rope_theta=100.0, reg_tokens=2, layer_scale_init=0.5,
                          pool="cls", fc_norm=False, family="dinov3")
EVA_CASES["dinov3-timm-no-qkv-bias"] = (dict(TIMM_DINOV3_ARGS, qkv_bias=False),
                                        dict(TIMM_DINOV3_FIELDS, qkv_bias="none", mlp_dim=192))
EVA_CASES["dinov3-timm-qv-bias"] = (dict(TIMM_DINOV3_ARGS, qkv_bias=True), dict(TIMM_DINOV3_FIELDS, mlp_dim=192))
EVA_COMMON = (dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=5, use_rot_pos_emb=True),
              dict(image_size=32, patch_size=8, width=48, depth=2, heads=3, num_classes=5, rope="eva",
                   rope_theta=10000.0, qkv_bias="qv", pool="mean", fc_norm=True, norm_eps=1e-6, family="eva02"))


def _eva(timm_args: dict, **extra):
    from reference_timm import _build, import_timm

    try:
        timm = import_timm()
    except ImportError as err:
        pytest.skip(f"timm, the parity reference, cannot be imported: {err}")
    args = {**EVA_COMMON[0], "ref_feat_shape": (4, 4), **timm_args, **extra}
    return _build(timm.models.eva.Eva, 0, **args)


@pytest.mark.parametrize("name", EVA_CASES)
def test_timm_eva_module_to_vitkit_and_back(name, tmp_path, report):
    from safetensors.torch import load_file, save_file

    from vitkit.checkpoints.save import save_timm
    from vitkit.config import PreprocessSpec, ViTConfig
    from vitkit.models import registry

    timm_args, fields = EVA_CASES[name]
    ref = _eva(timm_args)
    path = tmp_path / "eva.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    arch = f"tiny_{name}_test"
    registry.ARCHS[arch] = registry.Arch(ViTConfig(**{**EVA_COMMON[1], **fields}), PreprocessSpec(input_size=32))
    try:
        loaded = load_network(str(path), arch)
    finally:
        del registry.ARCHS[arch]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    d = _timm_vs_vitkit(ref, loaded.net, x)
    assert max(d.values()) <= TOL, d
    report(f"parity: timm Eva({name}) -> vitkit: max|diff| {max(d.values()):.1e}")
    dynamic = _eva(timm_args, dynamic_img_size=True)  # positions and rotary tables for each input size
    dynamic.load_state_dict(ref.state_dict())
    for size in ((48, 48), (24, 40)):
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            diff = (dynamic(x) - loaded.net(x)).abs().max().item()
        assert diff <= TOL, (size, diff)
    state = load_file(str(save_timm(loaded.net, loaded.preprocess, tmp_path / "back.safetensors")))
    assert set(state) == set(ref.state_dict())
    ref.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------------------- OpenCLIP
OPENCLIP_CASES = {  # name -> (open_clip VisionTransformer arguments, model_cfg flags)
    "openclip-gelu": (dict(), {}),
    "openclip-quickgelu-layer-scale": (dict(ls_init_value=0.5), {"quick_gelu": True}),
}


@pytest.mark.parametrize("name", OPENCLIP_CASES)
def test_openclip_tower_to_vitkit(name, tmp_path, report):
    from reference_openclip import import_openclip_transformer
    from reference_timm import randomize_

    try:
        oc = import_openclip_transformer()
    except ImportError as err:
        pytest.skip(f"OpenCLIP, the reference for its layout, cannot be imported: {err}")
    extra, flags = OPENCLIP_CASES[name]
    act = oc.QuickGELU if flags.get("quick_gelu") else torch.nn.GELU
    visual = oc.VisionTransformer(image_size=32, patch_size=8, width=48, layers=2, heads=3, mlp_ratio=2.0,
                                  output_dim=24, act_layer=act, **extra)
    randomize_(visual, seed=3).eval()
    state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    state["logit_scale"] = torch.tensor(4.6)  # the image-text model's other half is left out
    state["token_embedding.weight"] = torch.randn(10, 24)
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
    meta = {"model_cfg": {"embed_dim": 24, **flags, "vision_cfg": {
        "image_size": 32, "layers": 2, "width": 48, "patch_size": 8, "head_width": 16, "mlp_ratio": 2.0,
        **({"ls_init_value": 0.5} if "ls_init_value" in extra else {})}},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(meta))
    loaded = load_network(str(tmp_path))
    assert loaded.layout == "openclip" and loaded.net.config.proj_dim == 24
    assert loaded.preprocess.mean == (0.5, 0.5, 0.5) and loaded.preprocess.interpolation == "bicubic"
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = visual(x)  # the projected image embedding
        got = loaded.net.forward_head(loaded.net.forward_features(x), pre_logits=True)
    diff = (want - got).abs().max().item()
    assert diff <= TOL, diff
    report(f"parity: OpenCLIP VisionTransformer({name}) -> vitkit: max|diff| {diff:.1e}")


@pytest.mark.parametrize("config", ["ViTMAEConfig", "Dinov2Config", "Dinov2WithRegistersConfig", "DINOv3ViTConfig",
                                    "CLIPVisionConfig", "SiglipVisionConfig", "CLIPConfig", "SiglipConfig"])
def test_a_config_json_without_the_default_fields_reads_as_transformers_defaults(config):
    """transformers writes only the fields that differ from its defaults: vitkit must fill in the same ones."""
    from vitkit.checkpoints.hf_config import config_from_hf

    full = getattr(transformers, config)().to_dict()
    minimal = {"model_type": full["model_type"]}
    assert config_from_hf(minimal, {}) == config_from_hf(full, {})
