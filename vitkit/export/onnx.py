"""vitkit -> ONNX: one file per input size, preprocessing and labels inside, verified before it is written.

What the file holds
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

Position information is baked in, never resized in the graph (ONNX Runtime rejects or mismatches antialiased
bicubic Resize): when S differs from the network's own grid, a copy of the network is configured for S with its
absolute position embedding and BEiT relative tables resampled by vitkit's own pure functions, exactly as the
model resamples them at run time. BEiT's relative position index is a constant of the graph; the exporter's
constant folding then stores each layer's gathered bias (heads, N+1, N+1) as one initializer (BEiT-B/16: +22 MB at
224 px, +180 MB at 384 px; onnxruntime would build the same tensors at load time anyway). Any Resize or Upsample
node is an error.

Verification: before the file is written, ONNX Runtime (CPU) runs it against the original PyTorch network at S
on random pixels and on a few real photos (see `default_photos`). fp32 fails when logits or pre_logits differ
by more than 1e-4 (max abs), or the tokens (`features`) by more than 1e-4 or 2e-4 of their largest |value|,
whichever is larger (PyTorch fp32's own tokens are ~1e-3 from float64 on real photos: see `tolerances`); fp16
fails when any output differs by more than 5e-2 of its largest |value|. Either fails when top-1 differs beyond
a near-tie. A failed export raises `OnnxExportError` saying by how much, and writes nothing (an existing file
is left as it was).

Exporter: PyTorch's TorchScript-based `torch.onnx.export(..., dynamo=False)`: it needs nothing beyond torch and
onnx (the dynamo exporter needs onnxscript).

Try it:  python -c "from vitkit.export import export_onnx; import vitkit; \
print(export_onnx(vitkit.load(arch='deit_tiny_patch16_224'), '/tmp/deit.onnx', dynamic_batch=True))"
"""

from __future__ import annotations

import copy
import io
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitkit.checkpoints.io import write_atomic_bytes
from vitkit.config import PreprocessSpec, ViTConfig
from vitkit.models.pos_embed import relative_position_index, resample_abs_pos_embed, resample_rel_pos_table
from vitkit.models.vit import VisionTransformer

INPUT = "pixels"
LOGITS, FEATURES, PRE_LOGITS = "logits", "features", "pre_logits"
DEFAULT_OPSET = 17  # LayerNormalization is a single op from 17 on
MIN_OPSET = 14  # scaled_dot_product_attention exports from 14
DTYPES = ("fp32", "fp16")
FP32_ATOL = 1e-4  # logits and pre_logits
FEATURES_RTOL = 2e-4  # every token: of the largest |feature| (see `tolerances`)
FP16_RTOL = 5e-2  # fp16: of the largest |value| of each output
FORBIDDEN_OPS = ("Resize", "Upsample")
META = "vitkit_"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class OnnxExportError(RuntimeError):
    """The export cannot be made or did not match PyTorch; the message says what and by how much."""


@dataclass
class ExportReport:
    path: str | None
    image_size: int
    dtype: str
    opset: int
    dynamic_batch: bool
    outputs: list[str]
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # per output, over every input checked
    limits: dict[str, float] = field(default_factory=dict)  # the allowed max abs diff per output
    checked: dict[str, int] = field(default_factory=dict)  # {"random": n, "photos": n}
    top1_agreement: float | None = None  # on the photos (and random inputs), when the model classifies
    verified_with: str = "onnxruntime CPUExecutionProvider"
    size_mb: float = 0.0
    export_s: float = 0.0
    verify_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line for a command line: what was written and how closely it matched PyTorch."""
        where = self.path or "(not written)"
        batch = "dynamic batch" if self.dynamic_batch else "batch 1"
        head = f"{where}: {self.size_mb:.0f} MB, {self.dtype}, {self.image_size} px, {batch}, opset {self.opset}"
        if not self.checked:
            return f"{head}; {self.verified_with}"
        checked = " + ".join(f"{n} {kind}" for kind, n in self.checked.items())
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in self.max_abs_diff.items())
        return f"{head}; onnxruntime vs PyTorch on {checked} inputs: max abs diff {diffs}"


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


# -- the network at a fixed size -----------------------------------------------------------------------
class _FixedRelPosBias(nn.Module):
    """BEiT's bias at one grid: the (resampled) table and a constant index; `forward(grid)` ->
    (heads, N+1, N+1), as `RelativePositionBias._compute` gives it."""

    def __init__(self, table: torch.Tensor, index: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table.detach().clone(), requires_grad=False)
        self.register_buffer("index", index, persistent=False)  # (N+1)^2 int64, a constant of the graph
        self.n = int(round(index.numel() ** 0.5))

    def forward(self, grid) -> torch.Tensor:
        n = self.n
        return self.table[self.index].view(n, n, -1).permute(2, 0, 1)  # (heads, N+1, N+1)


def network_at_size(net: VisionTransformer, image_size: int) -> VisionTransformer:
    """A copy of `net` whose own grid is image_size / patch: absolute positions resampled as
    `VisionTransformer._pos_embed_for` does, BEiT tables as `RelativePositionBias._compute` does (then baked
    with a constant index). In eval mode, without gradients; `net` is untouched."""
    cfg = net.config
    if image_size % cfg.patch_size:
        raise OnnxExportError(f"image size {image_size} is not a multiple of the patch size {cfg.patch_size}")
    grid = (image_size // cfg.patch_size,) * 2
    out = copy.deepcopy(net).eval().requires_grad_(False)
    out.config = cfg.replace(image_size=image_size, drop_path=0.0)
    if cfg.abs_pos_embed:
        pos = resample_abs_pos_embed(net.pos_embed.detach(), grid, cfg.num_prefix_tokens,
                                     antialias=cfg.pos_embed_antialias)
        out.pos_embed = nn.Parameter(pos.clone(), requires_grad=False)
    if cfg.rel_pos_bias != "none":
        index = relative_position_index(grid).view(-1)  # one constant, shared by every layer
        owners = [out] if cfg.rel_pos_bias == "shared" else list(out.blocks)
        for owner in owners:
            rel = owner.rel_pos
            table = resample_rel_pos_table(rel.table.detach(), rel.grid, grid, rel.resize_method)
            owner.rel_pos = _FixedRelPosBias(table, index)
    return out


class _Graph(nn.Module):
    """What the ONNX graph computes, with vitkit's own forward: pixels -> (logits?, features, pre_logits)."""

    def __init__(self, net: VisionTransformer, dtype: torch.dtype):
        super().__init__()
        self.net, self.dtype = net, dtype

    def forward(self, pixels: torch.Tensor):
        tokens = self.net.forward_features(pixels.to(self.dtype))  # (B, T, D)
        pre_logits = self.net.forward_head(tokens, pre_logits=True)  # (B, D')
        outs = [tokens.float(), pre_logits.float()]
        if self.net.config.num_classes:
            outs.insert(0, self.net.forward_head(tokens).float())  # (B, C)
        return tuple(outs)


def output_names(config: ViTConfig) -> list[str]:
    return ([LOGITS] if config.num_classes else []) + [FEATURES, PRE_LOGITS]


# -- export ---------------------------------------------------------------------------------------------
def _plain(net) -> VisionTransformer:
    if getattr(net, "prepared", False):
        raise OnnxExportError("this network was prepared for a runtime backend (packed/bf16 weights): export the "
                              "plain network (load it without --backend/--dtype)")
    if not isinstance(net, VisionTransformer):
        raise OnnxExportError(f"cannot export {type(net).__name__}: expected a vitkit VisionTransformer")
    return net


def graph_bytes(net: VisionTransformer, image_size: int, *, dynamic_batch: bool = False,
                opset: int = DEFAULT_OPSET, dtype: str = "fp32") -> bytes:
    """The bare ONNX graph (no vitkit metadata) of `net` at image_size, serialized."""
    import onnx

    net = _plain(net)
    if dtype not in DTYPES:
        raise OnnxExportError(f"unknown dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if opset < MIN_OPSET:
        raise OnnxExportError(f"opset {opset} is too old: vitkit's attention needs opset {MIN_OPSET} or newer")
    fixed = network_at_size(net, image_size)
    torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
    fixed.to(torch_dtype)  # fp16: BEiT's tables too (the model casts the gathered bias to fp16: same values)
    graph = _Graph(fixed, torch_dtype).eval()
    names = output_names(fixed.config)
    example = torch.zeros(1, fixed.config.in_chans, image_size, image_size)
    axes = {name: {0: "batch"} for name in [INPUT] + names} if dynamic_batch else None
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation, tracer warnings on shape checks
        try:
            torch.onnx.export(graph, (example,), buffer, dynamo=False, input_names=[INPUT], output_names=names,
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
        except Exception as err:  # e.g. a graph over protobuf's 2 GB limit (H/14, BEiT-L at 512 px)
            raise OnnxExportError(f"torch.onnx.export failed at {image_size} px, opset {opset}, {dtype}: "
                                  f"{str(err).strip().splitlines()[0] if str(err).strip() else err!r}") from err
    data = buffer.getvalue()
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    bad = sorted({node.op_type for node in _all_nodes(model.graph) if node.op_type in FORBIDDEN_OPS})
    if bad:
        raise OnnxExportError(f"the exported graph contains {', '.join(bad)}: position resampling leaked into it")
    return data


def _all_nodes(graph):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.g is not None and attr.g.node:
                yield from _all_nodes(attr.g)
            for sub in attr.graphs:
                yield from _all_nodes(sub)


def with_metadata(data: bytes, config: ViTConfig, spec: PreprocessSpec, *, dtype: str, dynamic_batch: bool,
                  source: str, verification: dict | None = None) -> bytes:
    """`data` with vitkit's metadata_props (replacing any earlier ones) and producer fields."""
    import onnx

    import vitkit

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
        "vitkit_version": vitkit.__version__,
    }
    if verification is not None:
        props["vitkit_verification"] = json.dumps(verification)
    kept = [p for p in model.metadata_props if not p.key.startswith(META)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "vitkit", vitkit.__version__
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


# -- verification ----------------------------------------------------------------------------------------
def default_photos(count: int = 4) -> list[Path]:
    """A few real photos to verify exports on: $VITKIT_SAMPLE_IMAGES (a folder), else the project's shared
    sample folder (../shared/images/imagenet-sample-100 beside a source checkout) when present, else none."""
    candidates = [os.environ.get("VITKIT_SAMPLE_IMAGES"),
                  Path(__file__).resolve().parents[2].parent / "shared" / "images" / "imagenet-sample-100"]
    for folder in candidates:
        if folder and Path(folder).is_dir():
            photos = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
            if photos:
                step = max(len(photos) // count, 1)
                return photos[::step][:count]  # spread over the folder (different sizes, some grayscale)
    return []


def _verification_inputs(spec: PreprocessSpec, channels: int, random: int, photos: list) -> dict[str, torch.Tensor]:
    from vitkit.data.decode import decode_image
    from vitkit.data.transforms import preprocess_batch

    size = spec.input_size
    gen = torch.Generator().manual_seed(0)
    inputs = {}
    if random:
        inputs["random"] = torch.randn(random, channels, size, size, generator=gen)
    if photos:
        images = [p if hasattr(p, "mode") else decode_image(p) for p in photos]
        inputs["photos"] = preprocess_batch(images, spec)
    return inputs


@torch.inference_mode()
def _torch_outputs(net: VisionTransformer, pixels: torch.Tensor) -> dict[str, np.ndarray]:
    """The reference: vitkit's own network (at its own grid, resampling for this input size) in fp32."""
    tokens = net.forward_features(pixels)
    out = {FEATURES: tokens, PRE_LOGITS: net.forward_head(tokens, pre_logits=True)}
    if net.config.num_classes:
        out[LOGITS] = net.forward_head(tokens)
    return {k: v.float().numpy() for k, v in out.items()}


def run_graph(session, x: np.ndarray, dynamic_batch: bool, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """float32 pixels (B, 3, S, S) through an onnxruntime session -> {output name: array} (default: every output)."""
    names = names or [o.name for o in session.get_outputs()]
    if dynamic_batch or len(x) == 1:
        results = session.run(names, {INPUT: x})
    else:  # batch 1 graph: one input at a time
        per = [session.run(names, {INPUT: x[i:i + 1]}) for i in range(len(x))]
        results = [np.concatenate(parts) for parts in zip(*per)]
    return dict(zip(names, results))


def _cpu_session(data: bytes):
    import onnxruntime as ort

    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def verify(session, net: VisionTransformer, spec: PreprocessSpec, *, dtype: str = "fp32",
           dynamic_batch: bool = False, random: int = 2, photos: list | None = None,
           atol: float = FP32_ATOL) -> dict:
    """Run the graph (an onnxruntime CPU `session` over it) against `net` at spec.input_size; -> {"max_abs_diff",
    "limits", "checked", "top1_agreement"}. Raises OnnxExportError when an output differs by more than its limit
    (`tolerances`), or when top-1 differs where PyTorch's margin between the two classes exceeds the logits limit
    (a near-tie within the tolerance may flip, e.g. in fp16)."""
    photos = default_photos() if photos is None else photos
    if not random and not photos:
        raise ValueError("verification needs inputs: random > 0 or some photos")
    inputs = _verification_inputs(spec, net.config.in_chans, random, photos)
    was_training = net.training
    net.eval()
    diffs: dict[str, float] = {}
    scales: dict[str, float] = {}  # largest |reference value| per output
    agree = total = 0
    flips: list[float] = []  # fp32 margin between PyTorch's top-1 and onnxruntime's, where they differ
    try:
        for kind, pixels in inputs.items():
            ref = _torch_outputs(net, pixels)
            try:
                got = run_graph(session, pixels.numpy(), dynamic_batch)
            except Exception as err:
                raise OnnxExportError(f"onnxruntime failed to run the exported graph ({dtype}): {err}") from err
            for name, value in ref.items():
                if got[name].shape != value.shape:
                    raise OnnxExportError(f"output {name}: onnxruntime gives shape {got[name].shape}, PyTorch "
                                          f"{value.shape}")
                diffs[name] = max(diffs.get(name, 0.0), float(np.abs(got[name] - value).max()))
                scales[name] = max(scales.get(name, 0.0), float(np.abs(value).max()))
            if LOGITS in ref:
                ours, theirs = ref[LOGITS].argmax(-1), got[LOGITS].argmax(-1)
                agree += int((ours == theirs).sum())
                total += len(pixels)
                rows = np.arange(len(ours))
                flips.extend((ref[LOGITS][rows, ours] - ref[LOGITS][rows, theirs])[ours != theirs].tolist())
    finally:
        net.train(was_training)
    checked = {kind: len(pixels) for kind, pixels in inputs.items()}
    limits = tolerances(scales, dtype, atol)
    report = {"max_abs_diff": diffs, "limits": limits, "checked": checked,
              "top1_agreement": agree / total if total else None}
    where = " and ".join(f"{n} {kind}" for kind, n in checked.items())
    over = {k: v for k, v in diffs.items() if not v <= limits[k]}  # NaN counts as over
    clear_flips = [m for m in flips if m > limits.get(LOGITS, 0.0)]  # not a near-tie within the tolerance
    if over or clear_flips:
        detail = ", ".join(f"{k} {v:.3g} > {limits[k]:.3g}" for k, v in over.items())
        detail = f"max abs diff {detail}" if detail else ""
        if clear_flips:
            detail = (f"{detail}; " if detail else "") + (
                f"top-1 differs on {len(clear_flips)} of {total} inputs by a margin of up to {max(clear_flips):.3g}")
        raise OnnxExportError(f"onnxruntime ({dtype}) and PyTorch (fp32) differ on {where} inputs: {detail}")
    return report


def tolerances(scales: dict[str, float], dtype: str = "fp32", atol: float = FP32_ATOL) -> dict[str, float]:
    """Allowed max abs diff per output, given the largest |reference value| of each.

    fp32: logits and pre_logits `atol` (1e-4); features (every token) `atol`, or FEATURES_RTOL (2e-4) of the
    largest |feature| when that is larger: on real photos PyTorch fp32's own patch tokens are ~1e-3 from a float64
    evaluation (DeiT-Tiny: 8.7e-4 with |features| up to 12), so 1e-4 absolute is below fp32's own precision there.
    fp16: FP16_RTOL (5e-2) of the largest |value| of each output (plus top-1 agreement, checked by the caller)."""
    if dtype == "fp16":
        return {name: FP16_RTOL * max(scale, 1.0) for name, scale in scales.items()}
    return {name: max(atol, FEATURES_RTOL * scale) if name == FEATURES else atol for name, scale in scales.items()}


def export_onnx(model_or_net, out: str | Path | None, *, spec: PreprocessSpec | None = None,
                image_size: int | None = None, dynamic_batch: bool = False, opset: int = DEFAULT_OPSET,
                dtype: str = "fp32", source: str | None = None, verify_random: int = 2,
                verify_photos: list | None = None, atol: float = FP32_ATOL) -> ExportReport:
    """Export a vitkit `Model` (or a `VisionTransformer` with `spec`) to `out` at image_size (default: the
    model's input size), verify it with onnxruntime, then write it atomically. `out=None` verifies without
    writing (the report's path is None). verify_photos: images (paths or PIL) to check on; None -> up to 4 from
    `default_photos()`, [] -> random inputs only. Raises OnnxExportError (nothing written) on any mismatch.

    fp16: the graph computes in fp16 (for GPUs; inputs and outputs stay float32). It is verified on
    onnxruntime's CPU provider when that can run it; otherwise only checked with onnx.checker (the report says
    which in `verified_with`)."""
    try:
        data, report = export_bytes(model_or_net, spec=spec, image_size=image_size, dynamic_batch=dynamic_batch,
                                    opset=opset, dtype=dtype, source=source, verify_random=verify_random,
                                    verify_photos=verify_photos, atol=atol)
    except OnnxExportError as err:
        raise OnnxExportError(f"{err}; {out if out is not None else 'nothing'} was not written") from err
    if out is not None:
        write_atomic_bytes(data, out)
        report.path = str(out)
    return report


def export_bytes(model_or_net, *, spec: PreprocessSpec | None = None, image_size: int | None = None,
                 dynamic_batch: bool = False, opset: int = DEFAULT_OPSET, dtype: str = "fp32",
                 source: str | None = None, verify_random: int = 2, verify_photos: list | None = None,
                 atol: float = FP32_ATOL) -> tuple[bytes, ExportReport]:
    """`export_onnx` without the file: -> (the verified model with its metadata, serialized; the report)."""
    import onnx

    if hasattr(model_or_net, "net") and hasattr(model_or_net, "spec"):  # a vitkit Model
        net, spec = model_or_net.net, spec or model_or_net.spec
        source = source or getattr(model_or_net, "source", "")
    else:
        net = model_or_net
        if spec is None:
            raise OnnxExportError("exporting a bare network needs its PreprocessSpec (spec=...)")
    net = _plain(net)
    size = image_size or spec.input_size
    spec = spec.at_size(size)
    start = time.perf_counter()
    data = graph_bytes(net, size, dynamic_batch=dynamic_batch, opset=opset, dtype=dtype)
    export_s = time.perf_counter() - start
    config = net.config.replace(image_size=size, drop_path=0.0)
    start = time.perf_counter()
    verified_with = "onnxruntime CPUExecutionProvider"
    try:
        session = _cpu_session(data)
    except Exception as err:  # onnxruntime raises its own exception types
        if dtype != "fp16":
            raise OnnxExportError(f"onnxruntime cannot load the exported graph: {err}") from err
        session, reason = None, str(err).splitlines()[0]
    if session is None:  # fp16 that onnxruntime's CPU provider cannot run
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
        verified_with = f"onnx.checker only (onnxruntime CPU cannot run this fp16 graph: {reason})"
        result = {"max_abs_diff": {}, "limits": {}, "checked": {}, "top1_agreement": None}
    else:
        result = verify(session, net, spec, dtype=dtype, dynamic_batch=dynamic_batch, random=verify_random,
                        photos=verify_photos, atol=atol)
        del session  # freed before the metadata pass, as when verify owned it
    verify_s = time.perf_counter() - start
    data = with_metadata(data, config, spec, dtype=dtype, dynamic_batch=dynamic_batch, source=source or "",
                         verification={**result, "verified_with": verified_with})
    report = ExportReport(None, size, dtype, opset, dynamic_batch, output_names(config), result["max_abs_diff"],
                          result["limits"], result["checked"], result["top1_agreement"], verified_with,
                          round(len(data) / 2**20, 2), round(export_s, 2), round(verify_s, 2))
    return data, report
