"""`vitkit doctor`: what this machine is, what it measures, and what vitkit will choose here and why.

    CPU, the instruction sets that decide the fast path, threads, GPU, torch / onnxruntime versions
    the measured GEMM peaks (vitkit.runtime.machine: probed once per machine, cached)
    the default (exact fp32, oneDNN-packed on a CPU) and the candidates `--fast` measures here, with the reason
    each one is or is not a candidate, and the best rate each could reach on ViT-B/16
    the `--fast` choices already cached on this machine (model weights, batch size, chosen runtime, agreement)

Try it:  vitkit doctor
"""

from __future__ import annotations

import json

import torch

from vitkit.cache import cache_dir
from vitkit.config import variant
from vitkit.runtime.backends import RuntimeUnavailable, resolve
from vitkit.runtime.fast import MIN_AGREEMENT, MIN_COSINE, candidates
from vitkit.runtime.machine import Machine, machine, model_flops

VIT_B16_GFLOP = model_flops(variant("B/16"), 224) / 1e9  # one 224 px image through ViT-B/16


def _why_not(runtime: str, here: Machine, device: torch.device) -> str:
    if runtime == "fp16":
        return "GPU only"
    if runtime == "bf16":  # the runtime's own reason
        try:
            resolve("eager", runtime, device)
        except RuntimeUnavailable as err:
            return str(err)
        return ""
    if runtime in ("int8", "onnx-fp32"):
        if here.onnxruntime is None:
            return "needs onnxruntime and onnx (pip install 'vitkit[onnx]')"
        return "CPU only here (onnxruntime's CPU kernels; on a GPU --backend onnx needs onnxruntime-gpu)"
    return ""


def _cached_choices() -> list[dict]:
    found = []
    for path in sorted(cache_dir("fast").glob("*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return found


def report(refresh: bool = False) -> dict:
    here = machine(refresh=refresh)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = candidates(device)
    rows = []
    kinds = {"fp32": "fp32_packed", "onnx-fp32": "fp32_onnx", "bf16": "bf16_packed", "fp16": None, "int8": "int8"}
    for runtime, kind in kinds.items():
        peak = here.peaks.get(kind) if device.type == "cpu" and kind else None
        rows.append({"runtime": runtime, "candidate": runtime in chosen, "why_not": "" if runtime in chosen
                     else _why_not(runtime, here, device), "peak_gflop_s": peak,
                     "vit_b16_limit_img_s": round(peak / VIT_B16_GFLOP, 1) if peak else None})
    mine = [c for c in _cached_choices() if c.get("machine") == here.cpu]
    return {"machine": here.to_dict(), "device": str(device), "default": "exact fp32 (oneDNN-packed linears on a CPU)",
            "fast_candidates": rows, "fast_gate": {"top1_agreement": MIN_AGREEMENT, "cosine": MIN_COSINE},
            "cached_choices": [{"runtime": c["runtime"], "batch_size": c["batch_size"], "key": c["key"],
                                "trials": c["trials"]} for c in mine]}


def text(found: dict) -> str:
    m = found["machine"]
    lines = [f"CPU        {m['cpu']} ({m['threads']} threads)",
             f"flags      {' '.join(m['flags']) or '(none of ' + 'AVX2, AVX-512, bf16, VNNI, AMX)'}",
             f"GPU        {m['gpu'] or 'none'}",
             f"software   torch {m['torch']}, onnxruntime {m['onnxruntime'] or 'not installed'}",
             f"GEMM peaks (measured in {m['probe_s']} s, cached): " + ", ".join(
                 f"{k} {v:.0f}" if v else f"{k} -" for k, v in m["peaks"].items()) + " GFLOP/s",
             "",
             f"default    {found['default']}: exact, within 1e-4 of the reference libraries",
             f"--fast     the fastest of these whose top-1 agreement with fp32 is >= "
             f"{100 * found['fast_gate']['top1_agreement']:.0f}% and embedding cosine >= {found['fast_gate']['cosine']} "
             "on check images, measured once per model, then cached:"]
    for row in found["fast_candidates"]:
        limit = f"ViT-B/16 at most ~{row['vit_b16_limit_img_s']} img/s" if row["vit_b16_limit_img_s"] else ""
        state = "candidate" if row["candidate"] else f"not here: {row['why_not']}"
        lines.append(f"  {row['runtime']:<9} {state:<60} {limit}")
    if found["cached_choices"]:
        lines.append("")
        lines.append("cached --fast choices on this machine:")
        for c in found["cached_choices"]:
            trials = ", ".join(f"{t['runtime']} {t['img_s']} img/s" for t in c["trials"] if t.get("img_s"))
            lines.append(f"  {c['key']}: {c['runtime']} at batch {c['batch_size']} ({trials})")
    return "\n".join(lines)
