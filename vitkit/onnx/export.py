"""vitkit -> ONNX: one file per input size, preprocessing and labels inside (vitkit.onnx.format), the graph built
by vitkit.onnx.graph, verified by vitkit.onnx.verify before it is written. A failed export raises
`OnnxExportError` saying by how much, and writes nothing (an existing file is left as it was).

Try it:  python -c "from vitkit.onnx import export_onnx; import vitkit; \
print(export_onnx(vitkit.load(arch='deit_tiny_patch16_224'), '/tmp/deit.onnx', dynamic_batch=True))"
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vitkit.checkpoints.io import write_atomic_bytes
from vitkit.config import PreprocessSpec
from vitkit.onnx.format import DEFAULT_OPSET, OnnxExportError, output_names, with_metadata
from vitkit.onnx.graph import graph_bytes, plain
from vitkit.onnx.session import Session
from vitkit.onnx.verify import FP32_ATOL, verify


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
        found = getattr(model_or_net, "provenance", None)
    else:
        net, found = model_or_net, None
        if spec is None:
            raise OnnxExportError("exporting a bare network needs its PreprocessSpec (spec=...)")
    net = plain(net)
    size = image_size or spec.input_size
    spec = spec.at_size(size)
    start = time.perf_counter()
    data = graph_bytes(net, size, dynamic_batch=dynamic_batch, opset=opset, dtype=dtype)
    export_s = time.perf_counter() - start
    config = net.config.replace(image_size=size, drop_path=0.0)
    start = time.perf_counter()
    verified_with = "onnxruntime CPUExecutionProvider"
    try:
        session = Session(data)
    except Exception as err:  # onnxruntime raises its own exception types
        if dtype != "fp16":
            raise OnnxExportError(f"onnxruntime cannot load the exported graph: {err}") from err
        session, reason = None, str(err).splitlines()[0]
    if session is None:  # fp16 that onnxruntime's CPU provider cannot run
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
        verified_with = f"onnx.checker only (onnxruntime CPU cannot run this fp16 graph: {reason})"
        result = {"max_abs_diff": {}, "limits": {}, "checked": {}, "top1_agreement": None}
    else:
        result = verify(session, net, spec, dtype=dtype, random=verify_random, photos=verify_photos, atol=atol)
        del session  # freed before the metadata pass, as when verify owned it
    verify_s = time.perf_counter() - start
    data = with_metadata(data, config, spec, dtype=dtype, dynamic_batch=dynamic_batch, source=source or "",
                         verification={**result, "verified_with": verified_with}, provenance=found)
    report = ExportReport(None, size, dtype, opset, dynamic_batch, output_names(config), result["max_abs_diff"],
                          result["limits"], result["checked"], result["top1_agreement"], verified_with,
                          round(len(data) / 2**20, 2), round(export_s, 2), round(verify_s, 2))
    return data, report
