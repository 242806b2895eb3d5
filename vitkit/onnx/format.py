"""The ONNX file vitkit writes and reads: input/output names, and the metadata that carries the config, the
preprocessing and the labels, so that any runtime can run the file right (`vitkit.load("x.onnx")`, the edge
client, quantized files alike).

  graph     input  `pixels`      float32 (B, 3, S, S), already preprocessed (resize, crop, normalize)
            output `logits`      float32 (B, num_classes)      -- absent for a backbone without head
                   `features`    float32 (B, T, D)             final normed tokens (T = prefix + (S/patch)^2)
                   `pre_logits`  float32 (B, D')               the head's input: pooled (+ fc_norm, + pooler)
            B is 1, or symbolic ("batch") with dynamic_batch=True. Inputs and outputs stay float32 when the
            graph computes in fp16 (dtype="fp16": casts at both ends).
  metadata  (ModelProto.metadata_props, all JSON strings except source/version)
            vitkit_preprocess  PreprocessSpec at S            vitkit_labels   ["tench", ...]
            vitkit_config      ViTConfig of the graph (image_size=S; labels in vitkit_labels)
            vitkit_outputs     output names, in order         vitkit_input    {"name", "shape", "dtype"}
            vitkit_dtype       "fp32" | "fp16"                vitkit_verification  measured diffs
            vitkit_source      what was exported              vitkit_version  vitkit's version
            vitkit_scores      {"activation": "softmax"} or {"activation": "sigmoid", "thresholds": [...]} (multi-label)

Try it:  python -c "from vitkit.onnx.format import read_metadata; print(read_metadata('/tmp/deit.onnx'))"
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vitkit.config import PreprocessSpec, ViTConfig
from vitkit.version import VERSION

INPUT = "pixels"
LOGITS, FEATURES, PRE_LOGITS = "logits", "features", "pre_logits"
DEFAULT_OPSET = 17  # LayerNormalization is a single op from 17 on
MIN_OPSET = 14  # scaled_dot_product_attention exports from 14
DTYPES = ("fp32", "fp16")
META = "vitkit_"


class OnnxExportError(RuntimeError):
    """The export cannot be made or did not match PyTorch; the message says what and by how much."""


@dataclass(frozen=True)
class OnnxMetadata:
    """What vitkit reads back from a file it exported."""

    config: ViTConfig
    preprocess: PreprocessSpec
    outputs: tuple[str, ...]
    dtype: str
    dynamic_batch: bool
    source: str
    version: str

    @property
    def labels(self) -> tuple[str, ...]:
        return self.config.labels



def output_names(config: ViTConfig) -> list[str]:
    return ([LOGITS] if config.num_classes else []) + [FEATURES, PRE_LOGITS]


def with_metadata(data: bytes, config: ViTConfig, spec: PreprocessSpec, *, dtype: str, dynamic_batch: bool,
                  source: str, verification: dict | None = None, provenance: dict | None = None) -> bytes:
    """`data` with vitkit's metadata_props (replacing any earlier ones) and producer fields."""
    import onnx

    model = onnx.load_from_string(data)
    cfg = config.to_dict()
    labels = cfg.pop("labels")
    size = spec.input_size
    props = {
        "vitkit_preprocess": json.dumps(spec.to_dict()),
        "vitkit_labels": json.dumps(labels),
        "vitkit_config": json.dumps(cfg),
        "vitkit_outputs": json.dumps(output_names(config)),
        "vitkit_input": json.dumps({"name": INPUT, "shape": ["batch" if dynamic_batch else 1, config.in_chans,
                                                             size, size], "dtype": "float32"}),
        "vitkit_dtype": dtype,
        "vitkit_source": source,
        "vitkit_version": VERSION,
    }
    if config.num_classes:  # how logits become scores, for runtimes that read no vitkit_config
        props["vitkit_scores"] = json.dumps({"activation": "sigmoid", "thresholds": list(config.class_thresholds())}
                                            if config.multi_label else {"activation": "softmax"})
    if verification is not None:
        props["vitkit_verification"] = json.dumps(verification)
    if provenance:  # the hub commit and sha256 of the weights this graph was exported from
        props["vitkit_provenance"] = json.dumps(provenance)
    kept = [p for p in model.metadata_props if not p.key.startswith(META)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "vitkit", VERSION
    model.doc_string = (f"vitkit {config.family} {config.width}w/{config.depth}d/patch{config.patch_size} at "
                        f"{size} px from {source}; preprocessing and labels in metadata_props (vitkit_*)")
    return model.SerializeToString()


def read_metadata(source: str | Path | bytes) -> OnnxMetadata:
    """vitkit's metadata of an exported file (path or bytes)."""
    return metadata_from_props(_props(source), _name(source))


def metadata_from_props(props: dict[str, str], name: str = "this ONNX file") -> OnnxMetadata:
    """OnnxMetadata from metadata_props as a dict (e.g. onnxruntime's `get_modelmeta().custom_metadata_map`)."""
    missing = [k for k in ("vitkit_preprocess", "vitkit_config", "vitkit_labels") if k not in props]
    if missing:
        raise ValueError(f"{name} was not exported by vitkit (no {', '.join(missing)} in its metadata): "
                         "vitkit will not guess its preprocessing")
    cfg = json.loads(props["vitkit_config"])
    cfg["labels"] = json.loads(props["vitkit_labels"])
    config = ViTConfig.from_dict(cfg)
    return OnnxMetadata(
        config=config, preprocess=PreprocessSpec.from_dict(json.loads(props["vitkit_preprocess"])),
        outputs=tuple(json.loads(props.get("vitkit_outputs", json.dumps(output_names(config))))),
        dtype=props.get("vitkit_dtype", "fp32"),
        dynamic_batch=json.loads(props.get("vitkit_input", "{}")).get("shape", [1])[0] != 1,
        source=props.get("vitkit_source", ""), version=props.get("vitkit_version", ""))


def _props(source: str | Path | bytes) -> dict[str, str]:
    import onnx

    if isinstance(source, (bytes, bytearray)):
        return {p.key: p.value for p in onnx.load_from_string(bytes(source)).metadata_props}
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX file at {path}")
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _name(source) -> str:
    return "these ONNX bytes" if isinstance(source, (bytes, bytearray)) else str(source)
