"""Before an export is written, ONNX Runtime (CPU) runs it against the original PyTorch network at S on random
pixels and on a few real photos (see `default_photos`). fp32 fails when logits or pre_logits differ by more
than 1e-4 (max abs), or the tokens (`features`) by more than 1e-4 or 2e-4 of their largest |value|, whichever
is larger (PyTorch fp32's own tokens are ~1e-3 from float64 on real photos: see `tolerances`); fp16 fails when
any output differs by more than 5e-2 of its largest |value|. Either fails when top-1 differs beyond a near-tie.

Try it:  python -m pytest tests/test_onnx.py -q
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from vitkit.config import PreprocessSpec
from vitkit.models.vit import VisionTransformer
from vitkit.onnx.format import FEATURES, LOGITS, PRE_LOGITS, OnnxExportError
from vitkit.onnx.session import Session

FP32_ATOL = 1e-4  # logits and pre_logits
FEATURES_RTOL = 2e-4  # every token: of the largest |feature| (see `tolerances`)
FP16_RTOL = 5e-2  # fp16: of the largest |value| of each output
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


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


def verify(session: Session, net: VisionTransformer, spec: PreprocessSpec, *, dtype: str = "fp32",
           random: int = 2, photos: list | None = None, atol: float = FP32_ATOL) -> dict:
    """Run the graph (a CPU `Session` over it) against `net` at spec.input_size; -> {"max_abs_diff",
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
                got = session.run(pixels)
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
