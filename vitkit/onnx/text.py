"""A text tower (CLIP, SigLIP) -> one ONNX file with its tokenizer inside, verified against PyTorch before it is
written, and read back into a runnable text encoder (`OnnxTextTower`) with no PyTorch model needed.

  graph     input  `input_ids`    int64 (B, L), L = the tower's context length (the tokenizer pads to it)
            output `text_embeds`  float32 (B, P), not normalised (transformers' get_text_features)
  metadata  vitkit_kind "text"; vitkit_text_config (TextConfig); vitkit_logit_scale / vitkit_logit_bias (the
            pair's temperature and bias, as floats; the bias null for CLIP); vitkit_tokenizer (the tokenizer file
            vitkit.data.tokenize writes, whole); vitkit_tokenizer_fingerprint; vitkit_weights_digest (TextTransformer.weights_digest);
            vitkit_source; vitkit_version

Verification: onnxruntime (CPU) and PyTorch embed the same varied texts; the export fails when any value
differs by more than 1e-4.

Try it:  python -m pytest tests/test_zero_shot.py -q -k onnx
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitkit.checkpoints.io import write_atomic_bytes
from vitkit.config import TextConfig
from vitkit.data.tokenize import SAVED, TextTokenizer, load_tokenizer
from vitkit.models.text import TextTransformer
from vitkit.onnx.format import DEFAULT_OPSET, OnnxExportError
from vitkit.onnx.graph import export_module
from vitkit.onnx.session import Session
from vitkit.version import VERSION

TEXT_INPUT, TEXT_OUTPUT = "input_ids", "text_embeds"
TEXT_ATOL = 1e-4
VERIFY_TEXTS = ("a photo of a dog", "", "A RED car parked on the street, at night!", "an émigré's café in Zürich",
                "猫の写真", "a photo of a 🐕 on the 🏖️", "x " * 200)


@dataclass
class TextExportReport:
    path: str | None
    context_length: int
    opset: int
    max_abs_diff: float
    checked: int
    size_mb: float

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"{self.path}: {self.size_mb:.0f} MB text tower, {self.context_length} tokens, dynamic batch, opset "
                f"{self.opset}; onnxruntime vs PyTorch on {self.checked} texts: max abs diff {self.max_abs_diff:.1e}")


def text_graph_bytes(net: TextTransformer, tokenizer: TextTokenizer, opset: int = DEFAULT_OPSET) -> bytes:
    """The bare graph (no vitkit metadata) of the text tower: input_ids (B, L) -> text_embeds (B, P)."""
    example = tokenizer(["a photo of a dog"])  # (1, L)
    try:
        return export_module(net.eval(), example, TEXT_INPUT, [TEXT_OUTPUT], dynamic_batch=True, opset=opset)
    except Exception as err:
        raise OnnxExportError(f"torch.onnx.export of the text tower failed: {str(err).strip().splitlines()[0]}"
                              ) from err


def text_difference(data: bytes, net: TextTransformer, tokenizer: TextTokenizer) -> float:
    """Max abs difference between onnxruntime on `data` and PyTorch on VERIFY_TEXTS' embeddings."""
    ids = tokenizer(list(VERIFY_TEXTS))
    with torch.inference_mode():
        want = net(ids).float().numpy()
    return float(np.abs(want - Session(data).run(ids)[TEXT_OUTPUT]).max())


def with_text_metadata(data: bytes, net: TextTransformer, tokenizer: TextTokenizer, source: str,
                       extra: dict[str, str] | None = None) -> bytes:
    """`data` with the metadata that makes it a runnable text tower (see the module doc), plus `extra` props."""
    import onnx

    model = onnx.load_from_string(data)
    bias = float(net.logit_bias.detach()) if net.config.logit_bias else None
    props = {"vitkit_kind": "text", "vitkit_text_config": json.dumps(net.config.to_dict()),
             "vitkit_logit_scale": json.dumps(float(net.logit_scale.detach())), "vitkit_logit_bias": json.dumps(bias),
             "vitkit_tokenizer": _tokenizer_text(tokenizer), "vitkit_tokenizer_fingerprint": tokenizer.fingerprint,
             "vitkit_weights_digest": net.weights_digest(), "vitkit_source": source, "vitkit_version": VERSION,
             **(extra or {})}
    kept = [p for p in model.metadata_props if not p.key.startswith("vitkit_")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "vitkit", VERSION
    return model.SerializeToString()


def export_text_onnx(net: TextTransformer, tokenizer: TextTokenizer, out: str | Path, *, source: str = "",
                     opset: int = DEFAULT_OPSET) -> TextExportReport:
    """Export, verify, then write `out` atomically (nothing is written when verification fails)."""
    data = text_graph_bytes(net, tokenizer, opset)
    diff = text_difference(data, net, tokenizer)
    if not diff <= TEXT_ATOL:
        raise OnnxExportError(f"the text tower's ONNX graph differs from PyTorch by {diff:.1e} (> {TEXT_ATOL:g}); "
                              f"{out} was not written")
    data = with_text_metadata(data, net, tokenizer, source)
    write_atomic_bytes(data, out)
    return TextExportReport(str(out), net.config.context_length, opset, diff, len(VERIFY_TEXTS),
                            round(len(data) / 2**20, 2))


def _tokenizer_text(tokenizer: TextTokenizer) -> str:
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save(Path(folder))
        return (Path(folder) / SAVED).read_text(encoding="utf-8")


class OnnxTextTower(nn.Module):
    """A text tower exported by `export_text_onnx`, run by onnxruntime behind TextTransformer's interface
    (forward, logits, probabilities, config) and with its own tokenizer (`.tokenizer`)."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        super().__init__()
        self.session = Session(path, device)
        props = self.session.session.get_modelmeta().custom_metadata_map
        if props.get("vitkit_kind") != "text":
            raise ValueError(f"{path} is not a text tower exported by vitkit (no vitkit_kind 'text' in its metadata)")
        self.config = TextConfig.from_dict(json.loads(props["vitkit_text_config"]))
        self.logit_scale = nn.Parameter(torch.tensor(json.loads(props["vitkit_logit_scale"])), requires_grad=False)
        bias = json.loads(props["vitkit_logit_bias"])
        if bias is not None:
            self.logit_bias = nn.Parameter(torch.tensor(bias), requires_grad=False)
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / SAVED).write_text(props["vitkit_tokenizer"], encoding="utf-8")
            self.tokenizer = load_tokenizer(Path(folder), _kind(props["vitkit_tokenizer"]), self.config.context_length)

        self._digest = props["vitkit_weights_digest"]

    def weights_digest(self) -> str:
        """The exported PyTorch tower's digest: an index built with it takes this file's queries too."""
        return self._digest

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(ids)[TEXT_OUTPUT])  # (N, P)

    logits = TextTransformer.logits
    probabilities = TextTransformer.probabilities


def _kind(saved: str) -> str:
    return json.loads(saved)["kind"]
