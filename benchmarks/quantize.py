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
CPU) of every recipe's graph, onnxruntime fp32, transformers (sdpa, fp32) and vitkit bf16, all in this one run;
speed-ups are medians of per-round ratios against onnxruntime fp32.

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
from vitkit.export.onnx import LOGITS  # noqa: E402
from vitkit.quantize import RECIPES, markdown, quantize  # noqa: E402
from vitkit.quantize.build import build_int8  # noqa: E402
from vitkit.quantize.data import calibration_pixels, load_pixels  # noqa: E402
from vitkit.quantize.onnx_int8 import fp32_graph  # noqa: E402
from vitkit.quantize.report import OrtRunner, compare, measure_speed, transformers_runner  # noqa: E402

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
                     folds: list[list[int]], ref: OrtRunner, views: int) -> tuple[dict, bytes]:
    """Build `name` once per fold (calibrated on the other fold), evaluate each on its own fold; pooled results."""
    recipe = RECIPES[name]
    ref_out, got_logits, got_pre, built, seconds = ref(pixels), [], [], None, 0.0
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
        out = OrtRunner(built_k.int8)(pixels[fold])
        got_logits.append(out[LOGITS])
        got_pre.append(out.get("pre_logits"))
        order += fold
    inverse = np.argsort(order)
    got = {LOGITS: np.concatenate(got_logits)[inverse], "pre_logits": np.concatenate(got_pre)[inverse]}
    result = compare(lambda x: ref_out, lambda x: got, pixels, targets)
    result.update(size_mb=round(len(built.int8) / 2**20, 2), build_s=round(seconds / len(folds), 1),
                  describe=recipe.describe(), int8_layers=len(built.quantized))
    return result, built.int8


def _bf16_row(model_path: str, arch: str, pixels: torch.Tensor, targets: list[int], ref: OrtRunner):
    bf16 = vitkit.load(model_path, arch, dtype="bf16")
    with torch.inference_mode():
        logits = torch.cat([bf16(pixels[i:i + 16]).float() for i in range(0, len(pixels), 16)]).numpy()
        pre = torch.cat([bf16.embed_pixels(pixels[i:i + 16], pool="prelogits").float()
                         for i in range(0, len(pixels), 16)]).numpy()
    result = compare(ref, lambda x: {LOGITS: logits, "pre_logits": pre}, pixels, targets)

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
    pixels = load_pixels(paths, model.spec)
    fp32 = fp32_graph(model.net, model.spec.input_size, True)
    ref = OrtRunner(fp32)

    quality, graphs = {}, {}
    for name in names:
        print(f"building {name} (twice: one per fold)", flush=True)
        quality[name], graphs[name] = _cross_validated(model, name, pixels, paths, targets, folds, ref, args.views)
    bf16_quality, bf16_run = _bf16_row(args.model, args.arch, pixels, targets, ref)

    x = pixels[:1]
    runners = {"onnxruntime fp32": lambda p: ref(p, [LOGITS])}
    for name in names:
        runner = OrtRunner(graphs[name])
        runners[f"INT8 {name}"] = lambda p, r=runner: r(p, [LOGITS])
    hf = transformers_runner(model.net, model.spec)
    if callable(hf):
        runners["transformers sdpa fp32"] = hf
    runners["vitkit bf16 (PyTorch)"] = bf16_run
    print(f"speed: {len(runners)} runtimes, {args.rounds} interleaved rounds, batch 1", flush=True)
    speed = measure_speed(runners, x, rounds=args.rounds, quiet_wait_s=args.quiet_wait, baseline="onnxruntime fp32")

    lines = _tables(names, quality, bf16_quality, speed, len(paths), args)
    print("\n".join(lines))
    if args.write:
        lines = [INTRO, *lines, *_cli_section(model, photos, rows)]
        write_atomic_text("\n".join(lines) + "\n", args.write)
        print(f"wrote {args.write}")
    return 0


def _tables(names, quality, bf16_quality, speed, n_photos, args) -> list[str]:
    fp32_acc = quality[names[0]]["accuracy"]["fp32"]
    up = speed["speedup"]
    vs_hf = up.get("transformers sdpa fp32")
    lines = ["| recipe | what it adds | top-1 agreement | accuracy (fp32 " + f"{fp32_acc:.0%})" +
             " | embedding cosine mean (min) | MB | img/s | x ort fp32 |" + (" x transformers |" if vs_hf else ""),
             "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if vs_hf else "")]
    for name in names:
        q = quality[name]
        key = f"INT8 {name}"
        c = q["embedding_cosine"]
        lines.append(f"| {name} | {q['describe']} | {q['top1_agreement']:.0%} | {q['accuracy']['quantized']:.0%} "
                     f"| {c['mean']:.4f} ({c['min']:.3f}) | {q['size_mb']} | {speed['img_s'][key]:.1f} "
                     f"| {up[key]:.2f}x |" + (f" {up[key] / vs_hf:.2f}x |" if vs_hf else ""))
    b = bf16_quality
    lines.append(f"| (vitkit bf16, PyTorch) | bf16 weights and activations, AMX | {b['top1_agreement']:.0%} | "
                 f"{b['accuracy']['quantized']:.0%} | - | - | {speed['img_s']['vitkit bf16 (PyTorch)']:.1f} | "
                 f"{up['vitkit bf16 (PyTorch)']:.2f}x |" + (f" {up['vitkit bf16 (PyTorch)'] / vs_hf:.2f}x |" if vs_hf
                                                             else ""))
    lines += ["", f"Reference speeds, same run: onnxruntime fp32 {speed['img_s']['onnxruntime fp32']:.1f} img/s"
              + (f", transformers sdpa fp32 {speed['img_s']['transformers sdpa fp32']:.1f} img/s "
                 f"({vs_hf:.2f}x onnxruntime fp32)" if vs_hf else "")
              + f". {n_photos} photos, each evaluated by the recipe calibrated on the other fold ({args.views} crops "
              f"per calibration photo). Batch 1, median of {speed['rounds']} interleaved rounds, "
              f"{speed['quiet_rounds']} of them on a quiet CPU (other load up to {speed['other_load_max']:.2f} "
              "cores)."]
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
    report["out"] = "deit-tiny-int8.onnx"
    page = markdown(report).splitlines()
    page[0] = "## What `vitkit quantize` prints (default recipe, " + page[0].removeprefix("# ") + ")"
    return ["", *page]


if __name__ == "__main__":
    raise SystemExit(main())
