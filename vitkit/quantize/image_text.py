"""INT8 for both towers of an image-text model (CLIP, SigLIP), gated on what the pair is used for: zero-shot
classification of the evaluation images by their class names.

    report = quantize_image_text(model, text, "val/", out="image-int8.onnx", text_out="text-int8.onnx")

1. the image tower's INT8 graph as `vitkit quantize` makes it (dynamic INT8, the default recipe; SmoothQuant with
   --calib images), and the text tower's: onnxruntime dynamic INT8 of every weight matrix product (per channel)
2. the label embeddings (each class name in every prompt template, averaged) and the image embeddings from the
   fp32 and the INT8 graphs; zero-shot logits = exp(scale) * cosine (+ SigLIP's bias)
3. the gate: zero-shot top-1 accuracy drop (fp32 - INT8, in points) on the class folders <= max_drop, or, without
   labels, the top-1 disagreement; otherwise QuantizationRefused and nothing is written
4. both files atomically: the image graph with vitkit's metadata (`vitkit.load` runs it), the text graph with its
   tokenizer inside (`vitkit.load_text` runs it), each with the report's numbers in `vitkit_quantization`

Try it:  python -m pytest tests/test_zero_shot.py -q -k int8
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from vitkit.api import Model
from vitkit.checkpoints.io import write_atomic_bytes
from vitkit.data.labelled import class_folders
from vitkit.image_text import TextEncoder, check_templates, default_templates
from vitkit.onnx.format import PRE_LOGITS
from vitkit.onnx.graph import graph_bytes
from vitkit.onnx.session import Session
from vitkit.onnx.text import TEXT_OUTPUT, text_graph_bytes, with_text_metadata
from vitkit.int8.build import build_int8
from vitkit.quantize.data import calibration_pixels, eval_set
from vitkit.int8.onnx_int8 import META_KEY, add_metadata, quantize_graph
from vitkit.quantize.pipeline import QuantizationRefused
from vitkit.int8.recipe import default_recipe
from vitkit.quantize.report import QuantizationReport

CHUNK = 64  # images (or prompts) per onnxruntime call


def _run(session: Session, inputs: torch.Tensor, output: str) -> torch.Tensor:
    parts = [torch.from_numpy(session.run(inputs[i:i + CHUNK], [output])[output]) for i in range(0, len(inputs), CHUNK)]
    return torch.nn.functional.normalize(torch.cat(parts).float(), dim=-1)  # (N, P)


def _label_vectors(session: Session, text: TextEncoder, labels: list[str], templates: tuple[str, ...]) -> torch.Tensor:
    ids = text.tokenizer([t.format(label) for label in labels for t in templates])  # (L * T, context)
    per_prompt = _run(session, ids, TEXT_OUTPUT).reshape(len(labels), len(templates), -1)  # (L, T, P)
    return torch.nn.functional.normalize(per_prompt.mean(dim=1), dim=-1)  # (L, P)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> dict:
    cos = (a.double() * b.double()).sum(-1)  # rows are unit vectors
    return {"mean": round(float(cos.mean()), 6), "min": round(float(cos.min()), 6)}


def quantize_image_text(model: Model, text: TextEncoder, eval_folder: str, out: str | None = None,
                        text_out: str | None = None, labels: list[str] | None = None,
                        templates: list[str] | None = None, calib: list[str] | None = None, max_drop: float = 1.0,
                        force: bool = False, log=None) -> QuantizationReport:
    """Quantize both towers; measure zero-shot agreement and accuracy on `eval_folder` (class sub-folders named by
    their class, or `labels` with a labels.csv); write `out` / `text_out` only when the gate passes (or `force`)."""
    say = log or (lambda msg: None)
    if model.default_pool != "prelogits":
        raise ValueError(f"{model.source} is not the image tower of an image-text model (CLIP, SigLIP)")
    started = time.perf_counter()
    templates = check_templates(templates) if templates is not None else default_templates()
    folder = Path(eval_folder)
    labels = list(labels) if labels is not None else class_folders(folder)
    if not labels:
        raise ValueError(f"{folder} has no class sub-folders: give the class names (labels=...)")
    ev = eval_set(folder, tuple(labels))
    spec, net = model.spec, model.net
    report = QuantizationReport(model=str(model.source), method="dynamic", image_size=spec.input_size)
    recipe = default_recipe("dynamic")
    calibration = None
    if calib:
        calibration, used = calibration_pixels(calib, spec, exclude=set(ev.paths))
        report.calibration = {"source": ", ".join(map(str, calib)), "images": len(used), "inputs": len(calibration)}
    else:
        recipe = recipe.replace(smooth_alpha=None)
        report.notes.append("no calibration images: SmoothQuant was skipped")
    report.recipe, report.recipe_text = recipe.to_dict(), recipe.describe() + "; text tower: dynamic INT8, per channel"

    image_fp32 = graph_bytes(net, spec.input_size, dynamic_batch=True)
    built = build_int8(net, spec.input_size, recipe, calibration)
    text_fp32 = text_graph_bytes(text.net, text.tokenizer)
    matmuls = [n.name for n in onnx.load_from_string(text_fp32).graph.node if n.op_type == "MatMul"]
    text_int8 = quantize_graph(text_fp32, matmuls, recipe)
    report.layers = {"int8": len(built.quantized), "float": built.kept_float, "text_int8_matmuls": len(matmuls)}
    sizes = {"image_fp32": len(image_fp32), "image_int8": len(built.int8), "text_fp32": len(text_fp32),
             "text_int8": len(text_int8)}
    report.size_mb = {k: round(v / 2**20, 2) for k, v in sizes.items()}
    say(f"built: image {report.size_mb['image_int8']} MB (fp32 {report.size_mb['image_fp32']}), text "
        f"{report.size_mb['text_int8']} MB (fp32 {report.size_mb['text_fp32']})")

    pixels = model.preprocess(ev.paths)  # (N, 3, S, S)
    images = {k: _run(Session(g), pixels, PRE_LOGITS) for k, g in (("fp32", image_fp32), ("int8", built.int8))}
    names = [label.replace("_", " ") for label in labels]
    vectors = {k: _label_vectors(Session(g), text, names, templates) for k, g in (("fp32", text_fp32),
                                                                                  ("int8", text_int8))}
    with torch.inference_mode():
        top1 = {k: text.net.logits(images[k], vectors[k]).argmax(-1).numpy() for k in ("fp32", "int8")}
    result = {"folder": str(folder), "images": len(ev.paths), "labels": len(labels), "templates": len(templates),
              "top1_agreement": float((top1["fp32"] == top1["int8"]).mean()),
              "image_embedding_cosine": _cosine(images["fp32"], images["int8"]),
              "label_embedding_cosine": _cosine(vectors["fp32"], vectors["int8"])}
    if ev.targets is not None:
        truth = np.asarray(ev.targets)
        fp32, int8 = float((top1["fp32"] == truth).mean()), float((top1["int8"] == truth).mean())
        result["accuracy"] = {"fp32": fp32, "quantized": int8, "drop_points": round(100 * (fp32 - int8), 2)}
    report.eval = result
    say(f"zero-shot: agreement {result['top1_agreement']:.4f}, accuracy {result.get('accuracy')}")

    drop, measure = ((result["accuracy"]["drop_points"], "zero-shot accuracy") if "accuracy" in result else
                     (round(100 * (1 - result["top1_agreement"]), 2), "zero-shot top-1 disagreement (no labels)"))
    report.gate = {"max_drop": max_drop, "forced": force, "measure": measure, "drop_points": drop,
                   "passed": drop <= max_drop}
    report.seconds = round(time.perf_counter() - started, 1)
    report.out = out
    if not report.gate["passed"] and not force:
        raise QuantizationRefused(f"refused to write the INT8 towers: zero-shot accuracy would drop by {drop} points "
                                  f"({measure}), more than the allowed {max_drop}; use --force to write them anyway",
                                  report)
    summary = json.dumps({k: getattr(report, k) for k in ("method", "recipe_text", "layers", "size_mb", "gate",
                                                          "eval")})
    if out:
        write_atomic_bytes(add_metadata(built.int8, net, spec, dynamic_batch=built.dynamic_batch,
                                        source=report.model, quantization=json.loads(summary)), out)
    if text_out:
        write_atomic_bytes(with_text_metadata(text_int8, text.net, text.tokenizer, text.source, {META_KEY: summary}),
                           text_out)
    report.written = bool(out or text_out)
    return report
