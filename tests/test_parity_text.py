"""Parity of the text towers and the image-text logits with their home libraries, every parameter randomised:
transformers CLIPModel (quick-GELU and GELU; eos pooling and the legacy argmax pooling), SiglipModel and
Siglip2Model, and OpenCLIP's TextTransformer (CLIP-style causal + argmax, SigLIP-style bidirectional + last token
with a biased projection). Saved in the library's own format, loaded by vitkit -> the same text embeddings and
logits (max abs diff <= 1e-4); vitkit -> the foreign layout -> the reference library's strict load, the same again.

Run:  .venv/bin/python -m pytest tests/test_parity_text.py -q
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ is not a package: the reference helpers

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

from vitkit.checkpoints.convert import load_network  # noqa: E402
from vitkit.checkpoints.text_config import HF_TEXT_DEFAULTS, text_config_from_hf, text_config_to_hf  # noqa: E402
from vitkit.checkpoints.text_convert import load_text_tower  # noqa: E402
from vitkit.checkpoints.text_layouts import hf_text_keymap, openclip_text_keymap  # noqa: E402

TOL = 1e-4
VOCAB = 99
VISION = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96, image_size=32,
              patch_size=8)
TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=VOCAB,
            max_position_embeddings=16)
PREPROCESS = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"height": 32, "width": 32},
              "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
              "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
HF_CASES = {  # name -> (model class, config class, vision fields, text fields)
    "clip-quickgelu-eos": ("CLIPModel", "CLIPConfig", dict(VISION, hidden_act="quick_gelu"),
                           dict(TEXT, hidden_act="quick_gelu", eos_token_id=VOCAB - 1)),
    "clip-gelu-legacy-argmax": ("CLIPModel", "CLIPConfig", dict(VISION, hidden_act="gelu"),
                                dict(TEXT, hidden_act="gelu", eos_token_id=2)),
    "siglip": ("SiglipModel", "SiglipConfig", dict(VISION, hidden_act="gelu_pytorch_tanh"),
               dict(TEXT, hidden_act="gelu_pytorch_tanh", projection_size=48)),  # = the image width
    "siglip2": ("Siglip2Model", "Siglip2Config", dict(VISION, hidden_act="gelu_pytorch_tanh", num_patches=16),
                dict(TEXT, hidden_act="gelu_pytorch_tanh")),
}


def token_ids(rows: int, length: int, eos: int, seed: int = 1) -> torch.Tensor:
    """(rows, length) ids below `eos`, each row ending its text with one `eos` at a random place, then padding
    with `eos` (as OpenAI's tokenizer pads), so that both eos and argmax pooling find the same token."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, eos, (rows, length), generator=g)
    for row, end in enumerate(torch.randint(1, length, (rows,), generator=g).tolist()):
        ids[row, end:] = eos
    return ids


def build_hf(name: str, randomise):
    cls, config_cls, vision, text = HF_CASES[name]
    config = getattr(transformers, config_cls)(vision_config=vision, text_config=text, projection_dim=24)
    return randomise(getattr(transformers, cls)(config)), text


@torch.no_grad()
def hf_outputs(model, ids: torch.Tensor, pixels: torch.Tensor | None):
    text = model.get_text_features(input_ids=ids)
    text = getattr(text, "pooler_output", text)  # newer transformers return an output object
    if pixels is None:  # Siglip2Model: its image tower takes patch sequences; use its image embeddings
        return text, None
    return text, model(input_ids=ids, pixel_values=pixels).logits_per_image


@pytest.mark.parametrize("name", HF_CASES)
def test_transformers_text_tower_and_logits(name, tmp_path, randomise, report):
    model, text_fields = build_hf(name, randomise)
    model.eval().save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(PREPROCESS))
    loaded = load_text_tower(str(tmp_path))
    cfg = loaded.net.config
    assert loaded.layout == "hf" and cfg.family == ("clip" if name.startswith("clip") else "siglip")
    assert cfg.pool == {"clip-quickgelu-eos": "eos", "clip-gelu-legacy-argmax": "argmax"}.get(name, "last")
    ids = token_ids(5, text_fields["max_position_embeddings"], VOCAB - 1)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    want_text, want_logits = hf_outputs(model, ids, None if name == "siglip2" else pixels)
    with torch.no_grad():
        got_text = loaded.net(ids)
        if want_logits is None:
            image = torch.randn(3, want_text.shape[1], generator=torch.Generator().manual_seed(3))
            want_logits = (torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(
                want_text, dim=-1).T) * model.logit_scale.exp() + model.logit_bias
        else:
            image = load_network(str(tmp_path)).net.pool_pixels(pixels, "prelogits")
        got_logits = loaded.net.logits(image, got_text)
        loaded.net.set_fused_attention(False)  # the readable attention path: the same embeddings
        readable = loaded.net(ids)
        loaded.net.set_fused_attention(True)
    text_diff = max((want_text - got_text).abs().max().item(), (want_text - readable).abs().max().item())
    logit_diff = (want_logits - got_logits).abs().max().item()
    assert text_diff <= TOL and logit_diff <= TOL, (text_diff, logit_diff)
    # and back: vitkit's tensors in transformers' layout load strictly into a fresh transformers model
    keymap = hf_text_keymap(cfg)
    foreign = keymap.to_foreign(loaded.net.state_dict(), cfg)
    fresh, _ = build_hf(name, lambda m: m)
    reference = {k: v for k, v in fresh.state_dict().items() if k.startswith(("text_model.", "text_projection",
                                                                                "logit_"))}
    assert set(foreign) == set(reference) - {"text_model.embeddings.position_ids"}
    assert all(foreign[k].shape == reference[k].shape for k in foreign)
    assert all(torch.equal(foreign[k], v) for k, v in model.state_dict().items() if k in foreign)
    report(f"parity: transformers {HF_CASES[name][0]}({name}) text tower -> vitkit: text max|diff| "
           f"{text_diff:.1e}, logits {logit_diff:.1e}")


@pytest.mark.parametrize("name", ["clip-quickgelu-eos", "siglip"])
def test_text_config_round_trips_through_transformers(name, randomise):
    model, _ = build_hf(name, randomise)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    cfg = text_config_from_hf(model.config.to_dict(), shapes)
    written = text_config_to_hf(cfg)
    rebuilt = getattr(transformers, HF_CASES[name][1])(text_config=written, vision_config=HF_CASES[name][2],
                                                       projection_dim=24)
    assert text_config_from_hf(rebuilt.to_dict(), shapes) == cfg


@pytest.mark.parametrize("model_type,config_cls", [("clip", "CLIPTextConfig"), ("siglip", "SiglipTextConfig"),
                                                   ("siglip2", "Siglip2TextConfig")])
def test_text_defaults_are_transformers_defaults(model_type, config_cls):
    """transformers writes only non-default fields: vitkit must fill in the same defaults it does."""
    full = getattr(transformers, config_cls)().to_dict()
    assert {k: full[k] for k in HF_TEXT_DEFAULTS[model_type]} == HF_TEXT_DEFAULTS[model_type]


def test_an_image_only_checkpoint_says_it_has_no_text_tower(tmp_path, randomise):
    from vitkit.checkpoints.io import CheckpointError

    vision = randomise(transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(
        **VISION, projection_dim=24)))
    vision.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no text tower"):
        load_text_tower(str(tmp_path))


# ------------------------------------------------------------------------------------------------- OpenCLIP
OPENCLIP_CASES = {  # name -> (TextTransformer arguments, text_cfg, model-level flags)
    "openclip-clip-argmax": (dict(), dict(), {"quick_gelu": True}),
    "openclip-siglip-last": (dict(no_causal_mask=True, pool_type="last", proj_bias=True),
                             dict(no_causal_mask=True, pool_type="last", proj_bias=True,
                                  act_kwargs={"approximate": "tanh"}, norm_kwargs={"eps": 1e-6}), {}),
}


@pytest.mark.parametrize("name", OPENCLIP_CASES)
def test_openclip_text_tower(name, tmp_path, report):
    from functools import partial

    from reference_openclip import import_openclip_transformer
    from reference_timm import randomize_

    try:
        oc = import_openclip_transformer()
    except ImportError as err:
        pytest.skip(f"OpenCLIP, the reference for its layout, cannot be imported: {err}")
    args, text_cfg, flags = OPENCLIP_CASES[name]
    if "act_kwargs" in text_cfg:
        act, norm = partial(torch.nn.GELU, approximate="tanh"), partial(oc.LayerNorm, eps=1e-6)
    else:
        act, norm = (oc.QuickGELU if flags.get("quick_gelu") else torch.nn.GELU), oc.LayerNorm
    text = oc.TextTransformer(context_length=16, vocab_size=VOCAB, width=32, heads=2, layers=2, mlp_ratio=2.0,
                              output_dim=24, act_layer=act, norm_layer=norm, **args)
    randomize_(text, seed=4).eval()
    prefix = "text." if "proj_bias" in args else ""
    state = {prefix + k: v for k, v in text.state_dict().items()}
    state["logit_scale"] = torch.tensor(2.3)
    if prefix:
        state["logit_bias"] = torch.tensor([-3.0])
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
    meta = {"model_cfg": {"embed_dim": 24, **flags, "text_cfg": dict(context_length=16, vocab_size=VOCAB, width=32,
                                                                      heads=2, layers=2, mlp_ratio=2.0, **text_cfg)}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(meta))
    loaded = load_text_tower(str(tmp_path))
    ids = token_ids(4, 16, VOCAB - 1, seed=5)
    with torch.no_grad():
        want, got = text(ids), loaded.net(ids)
    diff = (want - got).abs().max().item()
    assert diff <= TOL, diff
    keymap = openclip_text_keymap(loaded.net.config, prefix)
    back = keymap.to_foreign(loaded.net.state_dict(), loaded.net.config)
    assert set(back) == {k for k in state if not k.endswith("attn_mask")}
    assert all(torch.equal(back[k], state[k].reshape(back[k].shape)) for k in back)
    report(f"parity: OpenCLIP TextTransformer({name}) -> vitkit: max|diff| {diff:.1e}")
