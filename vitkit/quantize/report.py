"""What a quantized model costs and buys: top-1 agreement with fp32, accuracy on labelled images, embedding cosine
similarity, file size, and model-only speed against the fp32 graph and transformers (sdpa, fp32) in the same run.

    compare(fp32_run, int8_run, pixels, targets, names)   -> agreement, accuracy change, flips, cosine, logit diff
    measure_speed({name: fn}, pixels, ...)                 -> img/s medians over interleaved rounds and speed-ups
    QuantizationReport                                     -> what quantize() measured, one field per phase
    markdown(report)                                       -> the report as a short markdown page

Try it:  python benchmarks/quantize.py --quick
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vitkit.onnx.format import LOGITS, PRE_LOGITS
from vitkit.onnx.session import Session


@dataclass
class QuantizationReport:
    """What quantize() measured; each phase of the pipeline fills its fields. The nested parts are plain dicts
    because they go into JSON (`to_dict`) and into the .onnx file's metadata as they are.

    calibration  {source, images, views, inputs, evaluation_images_left_out} or None (no --calib)
    layers       {int8: count, float: [kept layer names], fused_attention: bool} or None (fp16)
    size_mb      {fp32, quantized, ratio[, file]}
    eval         {folder, labels_from, images, top1_agreement[, accuracy {fp32, quantized, drop_points}], flips,
                  embedding_cosine {mean, min}, ...} or None (no --eval): of the graph that is gated and written
    ptq_eval     with --qat: the same measures of the post-training graph (the same recipe without the tuning)
    speed        measure_speed()'s result plus vs_fp32_onnxruntime / vs_transformers_sdpa, or None
    gate         {max_drop, forced, measure, drop_points, passed}
    """

    model: str
    method: str
    image_size: int
    backend: str = "onnx"
    notes: list[str] = field(default_factory=list)
    recipe_text: str = ""
    recipe: dict | None = None
    calibration: dict | None = None
    layers: dict | None = None
    seconds_build: float | None = None
    size_mb: dict = field(default_factory=dict)
    eval: dict | None = None
    ptq_eval: dict | None = None
    speed: dict | None = None
    model_card: str | None = None  # the README.md written beside the file (None: a README there was not vitkit's)
    gate: dict = field(default_factory=dict)
    seconds: float | None = None
    out: str | None = None
    written: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> QuantizationReport:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def __getitem__(self, key: str):  # report["gate"]: the JSON view's keys read the same on the object
        if key not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(key)
        return getattr(self, key)


# -- quality ---------------------------------------------------------------------------------------------------
def compare(fp32: Session, int8: Session, pixels: torch.Tensor, targets: list[int] | None,
            names: list[str] | None = None, labels: tuple[str, ...] = ()) -> dict:
    """Top-1 agreement of the quantized graph with fp32, accuracy of each on `targets` (None: unlabelled), the flips with fp32's
    own margin between the two classes, and the cosine similarity of the embeddings (`pre_logits`)."""
    ref, got = fp32(pixels), int8(pixels)
    out: dict = {"images": len(pixels)}
    if PRE_LOGITS in ref:
        a, b = torch.from_numpy(ref[PRE_LOGITS]).double(), torch.from_numpy(got[PRE_LOGITS]).double()
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        out["embedding_cosine"] = {"mean": round(float(cos.mean()), 6), "min": round(float(cos.min()), 6)}
    if LOGITS not in ref:
        return out
    r, g = ref[LOGITS], got[LOGITS]
    top_r, top_g = r.argmax(-1), g.argmax(-1)
    out["top1_agreement"] = float((top_r == top_g).mean())
    out["logits_max_abs_diff"] = round(float(np.abs(r - g).max()), 4)
    rows = np.arange(len(r))
    margin = r[rows, top_r] - r[rows, top_g]  # fp32's preference for its own top-1 over int8's
    name = (lambda i: Path(names[i]).name) if names else (lambda i: str(i))
    label = (lambda k: labels[k] if k < len(labels) else str(k))
    out["flips"] = [{"image": name(i), "fp32": label(int(top_r[i])), "quantized": label(int(top_g[i])),
                     "fp32_margin": round(float(margin[i]), 4),
                     **({"true": label(targets[i])} if targets is not None else {})}
                    for i in np.flatnonzero(top_r != top_g)]
    if targets is not None:
        t = np.asarray(targets)
        acc_r, acc_g = float((top_r == t).mean()), float((top_g == t).mean())
        out["accuracy"] = {"fp32": acc_r, "quantized": acc_g, "drop_points": round(100 * (acc_r - acc_g), 2)}
    return out


# -- speed -----------------------------------------------------------------------------------------------------
def transformers_runner(net, spec):
    """transformers' ViTForImageClassification (attn_implementation="sdpa", fp32) on the same weights, or a reason
    string when it cannot be built (not installed, a family transformers has no class for)."""
    import tempfile

    try:
        from transformers import AutoModelForImageClassification

        from vitkit.checkpoints.save import save_hf

        with tempfile.TemporaryDirectory(prefix="vitkit-quant-hf-") as folder:  # the loaded model keeps no file
            save_hf(net, spec, Path(folder))
            model = AutoModelForImageClassification.from_pretrained(folder, attn_implementation="sdpa").eval()
    except Exception as err:  # noqa: BLE001 - a reference that cannot run here is reported, not fatal
        return f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"

    def run(x: torch.Tensor):
        with torch.inference_mode():
            return model(pixel_values=x).logits

    return run


def measure_speed(runners: dict[str, callable], pixels: torch.Tensor, rounds: int = 5, seconds: float = 1.0,
                  warmup: int = 3, quiet_wait_s: float = 60.0, baseline: str | None = None) -> dict:
    """Model-only img/s of each runner on the same batch: `rounds` interleaved rounds (each begins once other processes
    use < 0.25 core, waiting at most quiet_wait_s), each runner timed for `seconds` per round; medians."""
    from vitkit.runtime.measure import wait_quiet

    batch = len(pixels)
    for fn in runners.values():
        for _ in range(warmup):
            fn(pixels)
    per_round: dict[str, list[float]] = {name: [] for name in runners}
    loads = []
    for _ in range(rounds):
        quiet = wait_quiet(max_wait_s=quiet_wait_s)
        loads.append(quiet)
        for name, fn in runners.items():
            start, n = time.perf_counter(), 0
            while n < 2 or time.perf_counter() - start < seconds:
                fn(pixels)
                n += 1
            per_round[name].append(n * batch / (time.perf_counter() - start))
    img_s = {name: round(statistics.median(v), 2) for name, v in per_round.items()}
    out = {"batch_size": batch, "rounds": rounds, "img_s": img_s,
           "quiet_rounds": sum(q["quiet"] for q in loads),
           "other_load_max": max((q["other_load"] or 0.0) for q in loads) if loads else None}
    if baseline in per_round:  # median of per-round ratios: robust to load that changes between rounds
        out["speedup"] = {name: round(statistics.median(a / b for a, b in zip(v, per_round[baseline])), 2)
                          for name, v in per_round.items()}
    return out


# -- markdown --------------------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _quality_rows(size: dict, evals: list[dict]) -> list[str]:
    """The table's rows: size, accuracy, agreement, cosine; one column per evaluated graph after fp32's."""
    def row(name: str, fp32: str, cell) -> str:
        return f"| {name} | {fp32} | " + " | ".join(cell(e) for e in evals) + " |"

    rows = [row("file size MB", size.get("fp32", "n/a"), lambda e: str(size.get("quantized", "n/a")))]
    if evals[-1].get("accuracy"):
        acc = evals[-1]["accuracy"]
        rows.append(row("top-1 accuracy", _pct(acc["fp32"]),
                        lambda e: f"{_pct(e['accuracy']['quantized'])} ({-e['accuracy']['drop_points']:+.1f} points)"))
    if evals[-1].get("top1_agreement") is not None:
        rows.append(row("top-1 agreement with fp32", "100%", lambda e: _pct(e["top1_agreement"])))
    if evals[-1].get("embedding_cosine"):
        rows.append(row("embedding cosine similarity, mean (min)", "1",
                        lambda e: f"{e['embedding_cosine']['mean']:.4f} ({e['embedding_cosine']['min']:.4f})"))
    return rows


def markdown(report: QuantizationReport | dict) -> str:
    """A short page: what was made, how it compares, whether the gate passed (from the report, or its JSON)."""
    r = report if isinstance(report, QuantizationReport) else QuantizationReport.from_dict(report)
    lines = [f"# INT8 quantization report: {r.model}", ""]
    lines.append(f"- recipe: **{r.recipe_text or r.method}** (backend {r.backend})")
    if r.layers:
        layers = r.layers
        lines.append(f"- layers: {layers['int8']} weight GEMMs in INT8, {len(layers['float'])} kept in float "
                     f"({', '.join(layers['float']) or 'none'}); LayerNorm, softmax and its inputs, GELU in float")
    cal = r.calibration
    if cal:
        lines.append(f"- calibration: {cal['images']} images x {cal['views']} views = {cal['inputs']} inputs from "
                     f"{cal['source']}; none of them is an evaluation image"
                     + (f" ({cal['evaluation_images_left_out']} evaluation images found there were left out)"
                        if cal.get("evaluation_images_left_out") else ""))
    else:
        lines.append("- calibration: none")
    qat = (r.recipe or {}).get("qat")
    if qat:
        data = qat["data"]
        lines.append(f"- quantization-aware fine-tuning: {qat['steps']} steps of {qat['batch_size']}, "
                     f"lr {qat['lr']:g}, seed {qat['seed']}, on {data['images']} images of {data['source']} (labels: "
                     f"{data['labels_from']}; sha256 {data['sha256'][:16]}), none of them an evaluation image; "
                     f"loss {qat['loss_first']:.4f} -> {qat['loss_last']:.4f}; activation ranges: "
                     f"{qat['activation_ranges']}")
    ev = r.eval or {}
    if ev:
        lines.append(f"- evaluation: {ev.get('images')} images in {ev.get('folder')} (labels: {ev.get('labels_from')})")
    columns = [("PTQ INT8", r.ptq_eval), ("QAT INT8", ev)] if r.ptq_eval else [("quantized", ev)]
    lines += ["", "| measure | fp32 | " + " | ".join(name for name, _ in columns) + " |",
              "|---|---:|" + "---:|" * len(columns)]
    lines += _quality_rows(r.size_mb, [e for _, e in columns])
    speed = r.speed or {}
    if speed.get("img_s"):
        base = speed.get("speedup", {})
        lines += ["", f"Speed, model only, batch {speed['batch_size']}, median of {speed['rounds']} interleaved rounds "
                      f"({speed.get('quiet_rounds')} of them on a quiet machine):", "",
                  "| runtime | img/s | x onnxruntime fp32 |", "|---|---:|---:|"]
        for name, v in speed["img_s"].items():
            lines.append(f"| {name} | {v:.1f} | {base.get(name, float('nan')):.2f}x |")
        if speed.get("vs_transformers_sdpa") is not None:
            lines.append(f"\nQuantized vs transformers sdpa fp32: **{speed['vs_transformers_sdpa']:.2f}x**.")
        for name, why in (speed.get("skipped") or {}).items():
            lines.append(f"\n{name}: not measured ({why}).")
    flips = ev.get("flips") or []
    if flips:
        lines += ["", "Top-1 changes (fp32's own logit margin between the two classes: small = a near-tie):", "",
                  "| image | fp32 | quantized | fp32 margin |" + (" true |" if "true" in flips[0] else ""),
                  "|---|---|---|---:|" + ("---|" if "true" in flips[0] else "")]
        for f in flips:
            lines.append(f"| {f['image']} | {f['fp32']} | {f['quantized']} | {f['fp32_margin']:.3f} |"
                         + (f" {f['true']} |" if "true" in f else ""))
    gate = r.gate
    if gate:
        lines += ["", f"Gate: {gate.get('measure')} drop {gate.get('drop_points')} points, limit {gate.get('max_drop')}"
                      f" -> **{'passed' if gate.get('passed') else 'REFUSED'}**"
                      + (" (forced)" if gate.get("forced") else "")
                      + (f"; written to {r.out}" if r.written else "; not written")]
    for note in r.notes:
        lines.append(f"\nNote: {note}")
    return "\n".join(lines) + "\n"
