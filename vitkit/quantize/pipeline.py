"""`vitkit quantize`: make an INT8 (or fp16) ONNX model, measure it against fp32, and write it only if it keeps its
accuracy.

    quantize(model, method="dynamic", calib=["calib/"], eval_folder="val/", out="model-int8.onnx")

1. calibration views of the --calib images (vitkit.quantize.data) that are not evaluation images, when the recipe
   needs them (with --qat and no --calib: of the QAT images)
2. the INT8 graph (vitkit.int8.build): SmoothQuant folded in, fused attention, onnxruntime quantization
3. evaluation on --eval: top-1 agreement with the fp32 graph, accuracy of both on the labels, embedding cosine
3b. with qat: quantization-aware fine-tuning (vitkit.quantize.qat) on images that are not evaluation images, the
   INT8 graph of the tuned weights through the same build, and its evaluation; the post-training one stays in the
   report as `ptq_eval`, side by side, and what is gated and written is the QAT graph
4. speed, model only, batch 1: the fp32 graph, the quantized graph and transformers (sdpa, fp32) in the same run
5. the gate: accuracy drop in points (fp32 - quantized) must be <= max_drop (default 1.0), else QuantizationRefused
   and nothing is written, unless force=True. Without labels the drop is bounded by the top-1 disagreement, which is
   what the gate then uses. Without an evaluation folder nothing can be checked: refused unless forced.
6. the file, atomically, with vitkit's metadata (preprocessing, labels, config) and `vitkit_quantization` (recipe
   and this report's numbers), so `vitkit.load("model-int8.onnx")` runs it with the right preprocessing.

Try it:  vitkit quantize --model ../shared/weights/deit-tiny-patch16-224/model.safetensors \
             --arch deit_tiny_patch16_224 --method dynamic --calib CALIB_DIR --eval EVAL_DIR --out /tmp/deit-int8.onnx
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from vitkit.checkpoints.io import write_atomic_bytes, write_atomic_text
from vitkit.checkpoints.model_card import model_card, onnx_loading, write_model_card
from vitkit.data.sources import expand_inputs
from vitkit.onnx.graph import graph_bytes
from vitkit.onnx.session import Session
from vitkit.int8.build import build_int8
from vitkit.quantize.data import calibration_pixels, eval_set
from vitkit.int8.onnx_int8 import QuantizeError, add_metadata
from vitkit.int8.recipe import Recipe, default_recipe
from vitkit.quantize.qat import QATOptions, tune
from vitkit.quantize.report import QuantizationReport, compare, markdown, measure_speed, transformers_runner

METHODS = ("dynamic", "static", "fp16")
BACKENDS = ("onnx", "torch")


class QuantizationRefused(RuntimeError):
    """The quantized model lost more accuracy than allowed; nothing was written. `.report` holds the measurements."""

    def __init__(self, message: str, report: QuantizationReport):
        super().__init__(message)
        self.report = report


def _resolved(paths) -> set[str]:
    return {str(Path(p).resolve()) for p in paths}


def _size_mb(data: bytes) -> float:
    return round(len(data) / 2**20, 2)


def quantize(model, method: str = "dynamic", calib: list[str] | None = None, eval_folder: str | None = None,
             backend: str = "onnx", out: str | None = None, max_drop: float = 1.0, force: bool = False, *,
             recipe: Recipe | None = None, calib_views: int = 4, max_calib_images: int | None = 256,
             speed: bool = True, speed_rounds: int = 5, quiet_wait_s: float = 20.0, compare_transformers: bool = True,
             report_md: str | None = None, qat: QATOptions | None = None, log=None) -> QuantizationReport:
    """Quantize a vitkit `Model` (plain network, loaded without --backend/--dtype) and return its QuantizationReport
    (`markdown(report)` renders it, `report.to_dict()` is its JSON). Raises QuantizationRefused (report attached,
    nothing written) when the accuracy drop on `eval_folder` exceeds `max_drop` points and `force` is False; QuantizeError / ValueError for bad input.

    method   "dynamic" (default recipe: per-image INT8 activations, per-channel weights, float islands, SmoothQuant,
             fused attention), "static" (calibrated activation ranges; needs calib), "fp16" (an fp16 graph for GPUs)
    calib    image files / folders / globs for calibration (SmoothQuant scales, static ranges). None: a dynamic model
             is made without SmoothQuant; static refuses.
    backend  "onnx" (onnxruntime). "torch" is refused: see docs/quantization-report.md for why.
    out      the .onnx file to write (None: measure only, write nothing)
    qat      quantization-aware fine-tuning before the graph is written (vitkit.quantize.qat); None: post-training only
    """
    say = log or (lambda msg: None)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose {', '.join(METHODS)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose {', '.join(BACKENDS)}")
    if backend == "torch":
        raise QuantizeError("INT8 runs on onnxruntime (--backend onnx): PyTorch's dynamic INT8 linear layers (torch.ao, "
                            "deprecated quantized tensors) ran DeiT-Tiny at 82-91 img/s here against 106-119 for "
                            "onnxruntime's, with the same accuracy; for a fast PyTorch path use --dtype bf16")
    if max_drop < 0:
        raise ValueError(f"max_drop must be >= 0 points, got {max_drop}")
    if qat is not None and method == "fp16":
        raise ValueError("--qat tunes for INT8: use --method dynamic or static")
    calib = calib or ([qat.data] if qat is not None else None)
    net, spec = model.net, model.spec
    started = time.perf_counter()
    report = QuantizationReport(model=str(getattr(model, "source", "")), method=method, image_size=spec.input_size)
    ev = eval_set(eval_folder, tuple(model.labels)) if eval_folder else None
    recipe, calibration = _calibrate(report, method, recipe, spec, calib, calib_views, max_calib_images,
                                     ev.paths if ev else [], say)
    fp32, quantized, dynamic_batch = _build(report, net, spec, method, recipe, calibration, say)
    ref_run, q_run = _sessions(report, fp32, quantized)
    _evaluate(report, model, ev, eval_folder, ref_run, q_run, say)
    if qat is not None:
        quantized, dynamic_batch = _qat(report, model, recipe, calibration, qat, ev, say)
        q_run = Session(quantized)
        _evaluate(report, model, ev, eval_folder, ref_run, q_run, say)
    if speed and q_run is not None:
        _speed(report, net, spec, method, ref_run, q_run, speed_rounds, quiet_wait_s, compare_transformers, say)
    gate = _gate(report, max_drop, force)
    report.seconds = round(time.perf_counter() - started, 1)
    report.out = str(out) if out else None
    if not gate["passed"] and not force:
        why = (f"accuracy would drop by {gate['drop_points']} points ({gate['measure']}), more than the allowed "
               f"{max_drop}" if gate["drop_points"] is not None else
               "no evaluation images to check the accuracy on (give --eval FOLDER)")
        _write_md(report, report_md)
        raise QuantizationRefused(f"refused to write {out or 'the quantized model'}: {why}; use --force to write it "
                                  "anyway", report)
    if out:
        _write(report, quantized, net, spec, method, dynamic_batch, out)
    _write_md(report, report_md)
    return report


# -- the phases: each adds its part of the report ---------------------------------------------------------------
def _calibrate(report: QuantizationReport, method, recipe, spec, calib, views, max_images, eval_paths, say):
    """1. The recipe, and calibration pixels from --calib images that are not evaluation images."""
    calibration = None
    if method == "fp16":
        report.recipe_text = "fp16 graph (inputs and outputs float32), for GPUs"
        return None, None
    recipe = recipe or default_recipe(method)
    if recipe.method != method:
        raise ValueError(f"recipe is {recipe.method} but method is {method}")
    if calib:
        calibration, calib_paths = calibration_pixels(calib, spec, views=views, max_images=max_images,
                                                      exclude=set(eval_paths))
        left_out = len(_resolved(expand_inputs(list(calib))) & _resolved(eval_paths))
        report.calibration = {"source": ", ".join(map(str, calib)), "images": len(calib_paths), "views": views,
                                 "inputs": int(len(calibration)), "evaluation_images_left_out": left_out}
        say(f"calibration: {len(calib_paths)} images x {views} views"
            + (f" ({left_out} evaluation images left out)" if left_out else ""))
    elif recipe.method == "static":
        raise QuantizeError("static INT8 needs calibration images: --calib FOLDER (not the evaluation images)")
    elif recipe.smooth_alpha is not None:
        recipe = recipe.replace(smooth_alpha=None)
        report.notes.append("no --calib images: SmoothQuant was skipped (it needs activation statistics)")
    report.recipe = recipe.to_dict()
    report.recipe_text = recipe.describe()
    return recipe, calibration


def _build(report: QuantizationReport, net, spec, method, recipe, calibration, say) -> tuple[bytes, bytes, bool]:
    """2. The quantized graph, and the fp32 graph it is measured against."""
    fp32 = graph_bytes(net, spec.input_size, dynamic_batch=True)
    if method == "fp16":
        quantized, dynamic_batch = graph_bytes(net, spec.input_size, dynamic_batch=True, dtype="fp16"), True
    else:
        built = build_int8(net, spec.input_size, recipe, calibration)
        quantized, dynamic_batch = built.int8, built.dynamic_batch
        report.layers = {"int8": len(built.quantized), "float": built.kept_float,
                            "fused_attention": built.fused_attention}
        report.seconds_build = built.seconds
    report.size_mb = {"fp32": _size_mb(fp32), "quantized": _size_mb(quantized),
                         "ratio": round(len(quantized) / len(fp32), 3)}
    say(f"built: {report['size_mb']['quantized']} MB (fp32 {report['size_mb']['fp32']} MB)")
    return fp32, quantized, dynamic_batch


def _qat(report: QuantizationReport, model, recipe: Recipe, calibration, options: QATOptions, ev,
         say) -> tuple[bytes, bool]:
    """3b. Quantization-aware fine-tuning, then the INT8 graph of the tuned weights (SmoothQuant is folded in
    already); the post-training evaluation moves to report.ptq_eval."""
    tuned, record = tune(model.net, model.spec, recipe, calibration, options, tuple(model.labels),
                         exclude=ev.paths if ev else [], log=say)
    built = build_int8(tuned, model.spec.input_size, recipe.replace(smooth_alpha=None), calibration)
    report.recipe = {**recipe.to_dict(), "qat": record}
    report.recipe_text = (f"{recipe.describe()}; quantization-aware fine-tuning ({record['steps']} steps, "
                          f"lr {record['lr']:g})")
    report.seconds_build = {**(report.seconds_build or {}), "qat": record["seconds"],
                            "qat_graph": round(sum(built.seconds.values()), 2)}
    report.ptq_eval, report.eval = report.eval, None
    return built.int8, built.dynamic_batch


def _sessions(report: QuantizationReport, fp32: bytes, quantized: bytes) -> tuple[Session, Session | None]:
    reference = Session(fp32)
    try:
        return reference, Session(quantized)
    except Exception as err:  # fp16 graphs onnxruntime's CPU provider cannot run
        report.notes.append(f"onnxruntime (CPU) cannot run the quantized graph: {str(err).splitlines()[0][:160]}")
        return reference, None


def _evaluate(report: QuantizationReport, model, ev, eval_folder, ref_run, q_run, say) -> None:
    """3. Top-1 agreement with the fp32 graph, accuracy of both on the labels, embedding cosine."""
    if ev is None or q_run is None:
        return
    result = compare(ref_run, q_run, model.preprocess(ev.paths), ev.targets, ev.paths, tuple(model.labels))
    report.eval = {"folder": str(eval_folder), "labels_from": ev.labels_from, **result}
    say(f"evaluation: agreement {result.get('top1_agreement')}, accuracy {result.get('accuracy')}")


def _speed(report: QuantizationReport, net, spec, method, ref_run, q_run, rounds, quiet_wait_s, compare_transformers,
           say) -> None:
    """4. Model-only speed at batch 1: fp32 graph, quantized graph, transformers (sdpa, fp32), in one run."""
    x = torch.randn(1, net.config.in_chans, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(0))
    runners = {"onnxruntime fp32": lambda p: ref_run(p, ["logits"] if "logits" in ref_run.outputs else None),
               f"onnxruntime {method}": lambda p: q_run(p, ["logits"] if "logits" in q_run.outputs else None)}
    skipped = {}
    if compare_transformers:
        hf = transformers_runner(net, spec)
        if callable(hf):
            runners["transformers sdpa fp32"] = hf
        else:
            skipped["transformers sdpa fp32"] = hf
    say("speed: measuring (waits for a quiet machine)")
    sp = measure_speed(runners, x, rounds=rounds, quiet_wait_s=quiet_wait_s, baseline="onnxruntime fp32")
    sp["skipped"] = skipped
    ratios = sp.get("speedup", {})
    sp["vs_fp32_onnxruntime"] = ratios.get(f"onnxruntime {method}")
    if "transformers sdpa fp32" in ratios and ratios["transformers sdpa fp32"]:
        sp["vs_transformers_sdpa"] = round(ratios[f"onnxruntime {method}"] / ratios["transformers sdpa fp32"], 2)
    report.speed = sp


def _gate(report: QuantizationReport, max_drop: float, force: bool) -> dict:
    """5. The accuracy drop in points (or the top-1 disagreement without labels) against max_drop."""
    gate = {"max_drop": max_drop, "forced": force}
    if report.eval and report.eval.get("accuracy"):
        gate.update(measure="accuracy", drop_points=report.eval["accuracy"]["drop_points"])
    elif report.eval and report.eval.get("top1_agreement") is not None:
        gate.update(measure="top-1 disagreement (no labels: an upper bound on the accuracy drop)",
                    drop_points=round(100 * (1 - report.eval["top1_agreement"]), 2))
    else:
        gate.update(measure="none (no evaluation images)", drop_points=None)
    gate["passed"] = gate["drop_points"] is not None and gate["drop_points"] <= max_drop
    report.gate = gate
    return gate


def _write(report: QuantizationReport, quantized: bytes, net, spec, method, dynamic_batch: bool, out: str) -> None:
    """6. The file, atomically, with vitkit's metadata and the quantization summary."""
    summary = {k: getattr(report, k) for k in ("method", "recipe", "recipe_text", "layers", "size_mb", "gate")}
    for name in ("eval", "ptq_eval"):
        if getattr(report, name):
            summary[name] = {k: getattr(report, name).get(k) for k in ("folder", "images", "top1_agreement",
                                                                       "accuracy", "embedding_cosine")}
    data = add_metadata(quantized, net, spec, dynamic_batch=dynamic_batch, source=report.model,
                        quantization=summary, dtype="fp16" if method == "fp16" else "int8")
    write_atomic_bytes(data, out)
    report.written = True
    report.size_mb["file"] = _size_mb(data)
    report.model_card = str(write_model_card(Path(out).parent, _model_card(report, out)) or "") or None


def _model_card(report: QuantizationReport, out: str) -> str:
    """README.md beside the file: base model, recipe, the measured fp32-vs-quantized figures, how to run it."""
    metrics = {}
    if report.eval:
        metrics["top-1 agreement with fp32"] = report.eval.get("top1_agreement")
        accuracy = report.eval.get("accuracy") or {}
        if accuracy:
            metrics["accuracy fp32"], metrics["accuracy quantized"] = accuracy["fp32"], accuracy["quantized"]
        metrics["embedding cosine (mean)"] = (report.eval.get("embedding_cosine") or {}).get("mean")
    if report.ptq_eval:
        metrics["top-1 agreement with fp32 before QAT (post-training INT8)"] = report.ptq_eval.get("top1_agreement")
    if report.speed and report.speed.get("vs_fp32_onnxruntime"):
        metrics["speed vs onnxruntime fp32 (batch 1)"] = f"{report.speed['vs_fp32_onnxruntime']:.2f}x"
    metrics["size MB (fp32 -> quantized)"] = f"{report.size_mb.get('fp32')} -> {report.size_mb.get('quantized')}"
    recipe = {"method": report.method, "recipe": report.recipe_text, "image size": report.image_size,
              "evaluation folder": (report.eval or {}).get("folder"), "gate": json.dumps(report.gate)}
    return model_card(title=f"{Path(out).name}: {report.method} quantization of {report.model}",
                      base_model=report.model, summary=f"An ONNX graph made by `vitkit quantize` from {report.model}, "
                      "measured against fp32 before it was written.", recipe=recipe,
                      metrics={k: v for k, v in metrics.items() if v is not None},
                      pipeline_tag="image-classification", how_to_load=onnx_loading(Path(out).name))


def _write_md(report: QuantizationReport, path: str | None) -> None:
    if path:
        write_atomic_text(markdown(report), path)
