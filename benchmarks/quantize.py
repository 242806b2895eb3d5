"""INT8 on a real classifier: what each step of the recipe buys, in agreement, accuracy, size and speed.

    .venv/bin/python benchmarks/quantize.py                     # every recipe step of vitkit.quantize.RECIPES
    .venv/bin/python benchmarks/quantize.py --quick             # plain dynamic INT8 and the default recipe only
    .venv/bin/python benchmarks/quantize.py --write docs/quantization-report.md

Data: the real DeiT-Tiny of ../shared/weights and the 100 labelled photos of ../shared/images. No photo is ever
both calibration and evaluation: the photos are split in two folds (even and odd rows of labels.csv); each recipe is
built twice, calibrated on one fold and evaluated on the other, so all 100 top-1 answers are out of sample.

Quality per recipe: top-1 agreement with the fp32 graph, top-1 accuracy of both on the true labels, cosine
similarity of the embeddings (pre-logits), file size. Speed: model only, batch 1 (an image at a time, as a service
sees it), median of interleaved rounds (vitkit.quantize.report.measure_speed, each round after waiting for a quiet
CPU) of every recipe's graph, onnxruntime fp32, transformers (sdpa, fp32) and vitkit bf16, all in this one run, once
per --threads value (default 2 and 1 intra-op threads per runtime); speed-ups are medians of per-round ratios against
onnxruntime fp32 with the same threads.

With --write, the page also holds the report `vitkit quantize` itself prints for the default recipe, calibrated on
the odd rows and evaluated on the even ones (the same call as the command line).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import vitkit  # noqa: E402
from vitkit.checkpoints.io import write_atomic_text  # noqa: E402
from vitkit.onnx.format import LOGITS  # noqa: E402
from vitkit.quantize import RECIPES, markdown, quantize  # noqa: E402
from vitkit.int8.build import build_int8  # noqa: E402
from vitkit.quantize.data import calibration_pixels  # noqa: E402
from vitkit.int8.onnx_int8 import fp32_graph  # noqa: E402
from vitkit.onnx.session import Session  # noqa: E402
from vitkit.quantize.report import compare, measure_speed, transformers_runner  # noqa: E402

SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "deit-tiny-patch16-224" / "model.safetensors"
PHOTOS = SHARED / "images" / "imagenet-sample-100"
QUICK = ("dynamic-plain", "default")
INTRO = """# INT8 quantization report: the real DeiT-Tiny on 100 real photos

Written by `benchmarks/quantize.py --write docs/quantization-report.md` (rerun it to reproduce every figure here).
Each row adds one step to the row before it (`vitkit quantize --recipe NAME` builds any of them); the default recipe
is what `vitkit quantize --method dynamic` makes. In every recipe LayerNorm, softmax and its inputs (q k^T), the
attention-weighted sum, GELU and the residual adds stay in float: only weight GEMMs become INT8.

- **dynamic-plain**: onnxruntime's dynamic INT8 as most people run it: per-tensor weights, one activation range per
  batch.
- **per-channel**: one weight scale per output channel.
- **per-image**: a batch-1 graph, so every image gets its own activation ranges (a dynamic-batch graph shares one
  range across the whole batch: an image's answer would depend on its neighbours).
- **islands**: the patch embedding and the first block stay in float (the layers whose INT8 error every later layer
  amplifies).
- **smooth**: SmoothQuant (alpha 0.7) moves activation outliers into the weights with per-channel scales folded into
  the LayerNorms and v, so the graph gains no operation.
- **default**: the same plus one fused onnxruntime `Attention` node per block, quantized as `QAttention`: the speed
  step.
- **static**: activation ranges calibrated once (QDQ); cannot use the fused attention op.

Top-1 agreement and accuracy are out of sample: the photos are split in two folds, each recipe is calibrated on one
fold and evaluated on the other, and the 100 answers are pooled. The bf16 row is vitkit's PyTorch bf16 path on the same
CPU, for comparison.

Threads matter on this CPU (2-core Xeon with AVX-512 VNNI and AMX). At batch 1, onnxruntime's INT8 kernels gain less
from a second thread than its fp32 kernels do: with one thread per runtime (one single-threaded session per core, the
throughput layout of a multi-core server) the default recipe runs 1.9-2.0x onnxruntime fp32 (runs differ); with both
cores on one image, about 1.5x. Both are measured below, in the same run. So the issue's target (>= 97% agreement at
>= 2x) is met on agreement (98%) but only at the edge of the speed target, and only single-threaded. The issue's own
figure of ~2.3x for plain dynamic INT8 came from other hardware: here plain dynamic INT8 is ~1.3x (2 threads) to ~1.7x
(1 thread), because fp32 on AVX-512 is relatively strong. On this CPU vitkit's bf16 (AMX) path is as fast as the best
INT8 graph, at 100% agreement.

Why `--backend torch` is refused: PyTorch's INT8 paths were slower than fp32 here. torch.ao's dynamic INT8 linear
layers (built on quantized tensors, which PyTorch 2.13 deprecates) ran DeiT-Tiny at 82-91 img/s against 106-119 for
onnxruntime's INT8; torchao 0.18's `Int8DynamicActivationInt8WeightConfig` in eager mode ran it at 9.9 img/s against
26.4 for fp32 (measured by hand on this machine, batch 1, 2 threads). For a fast PyTorch path use `--dtype bf16`.

## What each step buys
"""


def _folds(photos: Path) -> tuple[list[dict], list[list[int]]]:
    with open(photos / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, [list(range(0, len(rows), 2)), list(range(1, len(rows), 2))]


def _cross_validated(model, name: str, pixels: torch.Tensor, paths: list[str], targets: list[int],
                     folds: list[list[int]], ref_out: dict, views: int) -> tuple[dict, bytes]:
    """Build `name` once per fold (calibrated on the other fold), evaluate each on its own fold; pooled results.
    `ref_out`: the fp32 graph's outputs on `pixels`."""
    recipe = RECIPES[name]
    got_logits, got_pre, built, seconds = [], [], None, 0.0
    order = []
    for k, fold in enumerate(folds):
        other = folds[1 - k]
        calibration = None
        if recipe.needs_calibration:
            calibration, _ = calibration_pixels([paths[i] for i in other], model.spec, views=views, max_images=None)
        start = time.perf_counter()
        built_k = build_int8(model.net, model.spec.input_size, recipe, calibration)
        seconds += time.perf_counter() - start
        built = built or built_k
        out = Session(built_k.int8)(pixels[fold])
        got_logits.append(out[LOGITS])
        got_pre.append(out.get("pre_logits"))
        order += fold
    inverse = np.argsort(order)
    got = {LOGITS: np.concatenate(got_logits)[inverse], "pre_logits": np.concatenate(got_pre)[inverse]}
    result = compare(lambda x: ref_out, lambda x: got, pixels, targets)
    result.update(size_mb=round(len(built.int8) / 2**20, 2), build_s=round(seconds / len(folds), 1),
                  describe=recipe.describe(), int8_layers=len(built.quantized))
    return result, built.int8


def _bf16_row(model_path: str, arch: str, pixels: torch.Tensor, targets: list[int], ref_out: dict):
    bf16 = vitkit.load(model_path, arch, dtype="bf16")
    with torch.inference_mode():
        logits = torch.cat([bf16(pixels[i:i + 16]).float() for i in range(0, len(pixels), 16)]).numpy()
        pre = torch.cat([bf16.embed_pixels(pixels[i:i + 16], pool="prelogits").float()
                         for i in range(0, len(pixels), 16)]).numpy()
    result = compare(lambda x: ref_out, lambda x: {LOGITS: logits, "pre_logits": pre}, pixels, targets)

    def run(x):
        with torch.inference_mode():
            return bf16(x)

    return result, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(WEIGHTS))
    parser.add_argument("--arch", default="deit_tiny_patch16_224")
    parser.add_argument("--photos", default=str(PHOTOS), help="a folder with labels.csv (file, class_index)")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), help="default: all")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--views", type=int, default=4, help="calibration crops per photo")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved speed rounds")
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="seconds to wait for a quiet CPU per round")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1],
                        help="intra-op threads of every runtime; one speed table per value (default: 2 1)")
    parser.add_argument("--write", metavar="FILE.md", help="write the page (tables + the CLI's report)")
    args = parser.parse_args(argv)
    if not Path(args.model).exists() or not (Path(args.photos) / "labels.csv").is_file():
        print(f"needs {args.model} and {args.photos}/labels.csv (../shared)", file=sys.stderr)
        return 2
    names = args.recipes or (list(QUICK) if args.quick else list(RECIPES))
    model = vitkit.load(args.model, args.arch)
    photos = Path(args.photos)
    rows, folds = _folds(photos)
    paths = [str(photos / r["file"]) for r in rows]
    targets = [int(r["class_index"]) for r in rows]
    pixels = model.preprocess(paths)
    fp32 = fp32_graph(model.net, model.spec.input_size, True)
    ref_out = Session(fp32)(pixels)  # the fp32 answers every row is compared with, computed once

    quality, graphs = {}, {}
    for name in names:
        print(f"building {name} (twice: one per fold)", flush=True)
        quality[name], graphs[name] = _cross_validated(model, name, pixels, paths, targets, folds, ref_out, args.views)
    quality["vitkit bf16 (PyTorch)"], bf16_run = _bf16_row(args.model, args.arch, pixels, targets, ref_out)
    hf = transformers_runner(model.net, model.spec)

    speeds, default_threads = {}, torch.get_num_threads()
    for threads in args.threads:
        torch.set_num_threads(threads)
        fp32_run = Session(fp32, threads=threads)
        runners = {"onnxruntime fp32": lambda p, r=fp32_run: r(p, [LOGITS])}
        for name in names:
            runners[name] = lambda p, r=Session(graphs[name], threads=threads): r(p, [LOGITS])
        if callable(hf):
            runners["transformers sdpa fp32"] = hf
        runners["vitkit bf16 (PyTorch)"] = bf16_run
        print(f"speed: {len(runners)} runtimes, {threads} thread(s) each, {args.rounds} interleaved rounds, batch 1",
              flush=True)
        speeds[threads] = measure_speed(runners, pixels[:1], rounds=args.rounds, quiet_wait_s=args.quiet_wait,
                                        baseline="onnxruntime fp32")

    torch.set_num_threads(default_threads)
    lines = _tables(names, quality, speeds, len(paths), args.views)
    print("\n".join(lines))
    if args.write:
        lines = [INTRO, *lines, *_cli_section(model, photos, rows)]
        write_atomic_text("\n".join(lines) + "\n", args.write)
        print(f"wrote {args.write}")
    return 0


def _tables(names, quality, speeds, n_photos, views) -> list[str]:
    """Quality per recipe (out of sample), then speed per thread count."""
    fp32_acc = quality[names[0]]["accuracy"]["fp32"]
    lines = [f"| recipe | what it adds | top-1 agreement | accuracy (fp32 {fp32_acc:.0%}) | embedding cosine mean (min) "
             "| MB |", "|---|---|---:|---:|---:|---:|"]
    for name, q in quality.items():
        c = q.get("embedding_cosine", {"mean": float("nan"), "min": float("nan")})
        lines.append(f"| {name} | {q.get('describe', 'bf16 weights and activations, on AMX')} "
                     f"| {q['top1_agreement']:.0%} | {q['accuracy']['quantized']:.0%} | {c['mean']:.4f} ({c['min']:.3f}) "
                     f"| {q.get('size_mb', '-')} |")
    lines += ["", f"{n_photos} photos, each evaluated by the recipe calibrated on the other fold ({views} crops per "
                  "calibration photo). Accuracy is top-1 on the true labels.", "",
              "Speed, model only, batch 1 (img/s, and the ratio to onnxruntime fp32 with the same threads):", ""]
    header = "| runtime |" + "".join(f" {t} thread{'s' if t > 1 else ''}: img/s | x ort fp32 |" for t in speeds)
    lines += [header, "|---|" + "---:|---:|" * len(speeds)]
    for name in speeds[next(iter(speeds))]["img_s"]:
        lines.append(f"| {name} |" + "".join(f" {sp['img_s'][name]:.1f} | {sp['speedup'][name]:.2f}x |"
                                           for sp in speeds.values()))
    for threads, sp in speeds.items():
        lines.append(f"\n{threads} thread(s): median of {sp['rounds']} interleaved rounds, {sp['quiet_rounds']} of them "
                     f"on a quiet CPU (other load up to {sp['other_load_max']:.2f} cores).")
    return lines


def _cli_section(model, photos: Path, rows: list[dict]) -> list[str]:
    """The default recipe through quantize() (what `vitkit quantize` runs): calibrated on the odd rows, gated on the
    even rows."""
    with tempfile.TemporaryDirectory() as tmp:
        ev = Path(tmp) / "eval"
        ev.mkdir()
        with open(ev / "labels.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({**r, "file": str(photos / r["file"])} for r in rows[0::2])
        calib = [str(photos / r["file"]) for r in rows[1::2]]
        report = quantize(model, "dynamic", calib=calib, eval_folder=str(ev), out=str(Path(tmp) / "deit-int8.onnx"),
                          log=lambda msg: print(f"  {msg}", flush=True))
    report["eval"]["folder"] = "50 held-out photos (even rows of ../shared/images labels.csv)"
    report["calibration"]["source"] = "the 50 other photos (odd rows)"
    report.out = "deit-tiny-int8.onnx"
    report.model = f"DeiT-Tiny ({Path(report.model).parent.name})"
    page = markdown(report).splitlines()
    page[0] = "## What `vitkit quantize` prints (default recipe, " + page[0].removeprefix("# ") + ")"
    return ["", *page]


if __name__ == "__main__":
    raise SystemExit(main())
