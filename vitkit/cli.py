"""`vitkit` command line: one subcommand per task. Parses flags and calls the task; holds no logic.

Try it:  vitkit --help
"""

from __future__ import annotations

import argparse
import difflib
import gc
import importlib
import json
import os
import re
import sys

from vitkit import arguments as A
from vitkit.limits import MAX_PIXELS
from vitkit.choices import BACKENDS, DTYPES, POOLS, SAVE_FORMATS
from vitkit.config import RESIZE_MODES
from vitkit.evaluate.layouts import LAYOUTS
from vitkit.output import FORMATS as OUTPUT_FORMATS
from vitkit.train import config as train_config


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", help="registry name (see `vitkit models`), hub id, local folder "
                        "or weights file; omit it and give --arch for random weights")
    parser.add_argument("--arch", help="architecture for a weights file without config, e.g. deit_tiny_patch16_224")
    parser.add_argument("--image-size", type=A.IMAGE_SIZE, help="run at this input side (positions are resampled)")
    parser.add_argument("--resize-mode", choices=RESIZE_MODES, default="crop",
                        help="crop: the checkpoint's centre crop (default); pad: the whole image letterboxed onto the "
                             "mean colour (wide photos, documents, panoramas); squash: the whole image stretched")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")


def _runtime_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="eager (oneDNN-packed kernels; default), compile (torch.compile, slow start), onnx")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="fp32 (default on CPU: exact), bf16 (several times faster on CPUs with bf16/AMX, "
                             "~99-100%% top-1 agreement), fp16 (GPU)")
    parser.add_argument("--fast", action="store_true",
                        help="the fastest runtime on this machine (fp32 packed, bf16, INT8, ...) whose top-1 agreement "
                             "with fp32 is >= 99%% and embedding cosine >= 0.999 on check images; measured once per "
                             "model and machine, then cached (see `vitkit doctor`)")
    parser.add_argument("--fast-images", nargs="+", metavar="PATH",
                        help="images to check --fast's candidates on (default: the job's first 32 inputs, or a "
                             "generated set)")


def _batch_args(parser: argparse.ArgumentParser) -> None:
    """Inputs and the decode pipeline, shared by every command that runs over many images."""
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive), globs")
    _model_args(parser)
    _runtime_args(parser)
    parser.add_argument("--batch-size", type=A.BATCH, default=16)
    parser.add_argument("--workers", type=A.WORKERS, default=1, help="decode processes beside the model (0: inline)")
    parser.add_argument("--chunk-size", type=A.CHUNK, default=256,
                        help="inputs per resumable part of a job with --output (a multiple of --batch-size)")
    parser.add_argument("--max-pixels", type=A.PIXELS, default=MAX_PIXELS,
                        help="refuse larger images (decompression-bomb guard)")
    parser.add_argument("--fast-decode", action="store_true",
                        help="JPEG reduce-on-decode: much faster on large photos, slightly different pixels")
    parser.add_argument("--no-progress", action="store_true")


class _Parser(argparse.ArgumentParser):
    """argparse with two additions, both decided while parsing (argv is never rewritten):
    - values like `-1,-4` (block indices) are values, not options: no option of vitkit looks like a number;
    - `modes`: a first word that hands the rest to another parser (`vitkit eval retrieval FOLDER` is parsed by
      the eval-retrieval command, while `vitkit eval FOLDER` stays classification).
    Every subparser is a _Parser too (argparse makes subparsers of the parent's class)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.modes: dict[str, argparse.ArgumentParser] = {}
        self._negative_number_matcher = re.compile(r"^-\d+(,-?\d+)*$|^-\d*\.\d+$")

    def parse_known_args(self, args=None, namespace=None):
        if args and args[0] in self.modes:
            return self.modes[args[0]].parse_known_args(args[1:], namespace)
        return super().parse_known_args(args, namespace)

    def parse_args(self, args=None, namespace=None):
        """As argparse's, with "did you mean" for an unknown option of the chosen command."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            known = _option_strings(self, parsed)
            hints = []
            for extra in extras:
                close = difflib.get_close_matches(extra.split("=", 1)[0], known, 1, 0.6) if extra.startswith("-") else []
                hints.append(f"{extra} (did you mean {close[0]}?)" if close else extra)
            self.error(f"unrecognized arguments: {' '.join(hints)}")
        return parsed

    def error(self, message: str):
        """argparse's error, with "did you mean" for a mistyped command."""
        found = re.match(r"argument \S+: invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if found:
            choices = re.findall(r"'([^']*)'", found.group(2))
            close = difflib.get_close_matches(found.group(1), choices, 1, 0.6)
            if close:
                message += f"; did you mean '{close[0]}'?"
        super().error(message)


def _option_strings(parser: argparse.ArgumentParser, parsed: argparse.Namespace) -> list[str]:
    """The option strings of the command `parsed` chose (its sub-commands' too), else of `parser` itself."""
    found = list(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(parsed, action.dest, None) or "")
            if chosen is not None:
                found += _option_strings(chosen, parsed)
    return found


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vitkit", description="Vision Transformers: classify, convert, list.")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="list named models and architectures")
    models.add_argument("--json", action="store_true", help="machine-readable output")

    classify = sub.add_parser("classify", help="top-k labels for images, folders (recursive) and globs")
    _batch_args(classify)
    classify.add_argument("--top-k", type=A.TOP_K, default=None,
                          help="labels per image (default: 5; a multi-label model: every label over its threshold)")
    classify.add_argument("--format", choices=OUTPUT_FORMATS, default=None,
                          help="table: aligned columns with a header, to read; tsv: path<TAB>predictions, one line per "
                               "input, for scripts; jsonl; csv (default: from the --output suffix .jsonl/.csv/.tsv, "
                               "else table)")
    classify.add_argument("--output", "-o", help="write here (atomically; a re-run resumes) instead of stdout")
    _zero_shot_args(classify)

    embed = sub.add_parser("embed", help="embeddings of images into .npy, .safetensors or .parquet")
    _batch_args(embed)
    embed.add_argument("--pool", choices=POOLS, help="default: the checkpoint's own (mean for BEiT, else cls)")
    embed.add_argument("--layers", type=_int_list, help="blocks to take (raw hidden states), e.g. -1,-4")
    embed.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=True,
                       help="L2-normalize each vector (default on)")
    embed.add_argument("--output", "-o", required=True, help="a .npy, .safetensors or .parquet file; a re-run resumes")

    bench = sub.add_parser("bench", help="model-only or end-to-end speed: img/s, ms p50/p95, peak RSS")
    _model_args(bench)
    _runtime_args(bench)
    bench.add_argument("--batch-size", type=A.BATCH, default=1)
    bench.add_argument("--warmup", type=A.NON_NEGATIVE, default=3)
    bench.add_argument("--iters", type=A.COUNT, default=20)
    bench.add_argument("--e2e", metavar="FOLDER", help="end to end over these images: decode + preprocess + model")
    bench.add_argument("--workers", type=A.WORKERS, default=2, help="with --e2e: decode processes")
    bench.add_argument("--fast-decode", action="store_true", help="with --e2e: JPEG reduce-on-decode")
    bench.add_argument("--json", action="store_true", help="print the result as one JSON object (last line)")
    bench.add_argument("--no-progress", action="store_true")

    finetune = sub.add_parser("finetune", help="fit a model to a labelled image folder or manifest")
    finetune.add_argument("data", metavar="DATA", help="folder of class subfolders (optional train/ val/), "
                          "or a CSV/JSONL manifest with path,label")
    _model_args(finetune)
    finetune.add_argument("--out", required=True, help="output folder: a transformers model folder plus logs")
    train_config.add_arguments(finetune)
    finetune.add_argument("--resume", action="store_true", help="continue the interrupted run in --out exactly")
    finetune.add_argument("--overwrite", action="store_true", help="replace the run already in --out")

    distill = sub.add_parser("distill", help="train a (smaller) student to match a teacher's outputs on images, "
                             "labelled or not")
    distill.add_argument("data", metavar="DATA", help="a folder of images (any layout), or a labelled set whose "
                         "class names are among the teacher's labels")
    distill.add_argument("--student", dest="model", help="the student: anything vitkit.load accepts (with --arch "
                         "alone: a fresh network of that architecture)")
    distill.add_argument("--arch", help="the student's architecture")
    distill.add_argument("--image-size", type=A.IMAGE_SIZE, help="the student's input size")
    distill.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    distill.add_argument("--out", required=True, help="output folder: the student as a transformers model folder, "
                         "logs and report.json")
    train_config.add_arguments(distill, train_config.DistillConfig)
    distill.add_argument("--resume", action="store_true", help="continue the interrupted run in --out exactly")
    distill.add_argument("--overwrite", action="store_true", help="replace the run already in --out")

    evaluate = sub.add_parser("eval", help="top-1/top-5 on a labelled folder (ImageNet layouts too), beside "
                              "the checkpoint's published accuracy",
                              epilog="`vitkit eval retrieval FOLDER ...` scores retrieval instead (see "
                                     "`vitkit eval-retrieval --help`).")
    evaluate.add_argument("data", metavar="DATA", help="class folders (names, synsets n01440764/, numbers 0/), "
                          "its val/ when it has one, or a flat folder with a labels file")
    _model_args(evaluate)
    _runtime_args(evaluate)
    evaluate.add_argument("--labels", dest="labels_file", metavar="FILE",
                          help="ground truth for a flat folder: LOC_val_solution.csv, a CSV with path and "
                               "class_index / wnid / label columns, 'file index' lines, or ReaL's real.json")
    evaluate.add_argument("--layout", choices=LAYOUTS, default="auto", help="how DATA is laid out (default: detected)")
    evaluate.add_argument("--protocol", choices=("checkpoint", "published"), default="checkpoint",
                          help="preprocessing: the checkpoint's own (default), or the one its published figure used")
    evaluate.add_argument("--crop-pct", type=A.float_in(0.0, 2.0, low_open=True), help="override the centre-crop fraction, e.g. 0.875 or 1.0")
    evaluate.add_argument("--batch-size", type=A.BATCH, default=32)
    evaluate.add_argument("--workers", type=A.WORKERS, default=1)
    evaluate.add_argument("--out", help="folder for report.json, confusion.npy, confusion.png, predictions.jsonl")
    evaluate.add_argument("--json", action="store_true", help="print the JSON report")
    evaluate.add_argument("--no-progress", action="store_true")

    zero_shot = sub.add_parser("zero-shot", help="image-text models (CLIP, SigLIP): score labels given as words")
    zero_shot_sub = zero_shot.add_subparsers(dest="target", required=True)
    zs_eval = zero_shot_sub.add_parser("eval", help="zero-shot top-1/top-5 on a labelled folder (ImageNet layouts "
                                       "too), beside the published zero-shot figure")
    zs_eval.add_argument("data", metavar="DATA", help="class folders (their names are the labels), or an "
                         "ImageNet layout (synset or index folders, a flat folder with a labels file)")
    _model_args(zs_eval)
    _runtime_args(zs_eval)
    _zero_shot_args(zs_eval)
    zs_eval.add_argument("--truth", metavar="FILE", help="ground truth for a flat folder (as `vitkit eval --labels`)")
    zs_eval.add_argument("--layout", choices=LAYOUTS, default="auto", help="how DATA is laid out (default: detected)")
    zs_eval.add_argument("--batch-size", type=A.BATCH, default=32)
    zs_eval.add_argument("--workers", type=A.WORKERS, default=1)
    zs_eval.add_argument("--out", help="folder for report.json, confusion.npy, confusion.png, predictions.jsonl")
    zs_eval.add_argument("--json", action="store_true", help="print the JSON report")
    zs_eval.add_argument("--no-progress", action="store_true")
    zs_eval.set_defaults(handler=_cmd_zero_shot_eval)

    export = sub.add_parser("export", help="export to a runtime format: onnx")
    export_sub = export.add_subparsers(dest="target", required=True)
    onnx = export_sub.add_parser("onnx", help="ONNX graph with preprocessing and labels in its metadata, "
                                 "verified against PyTorch with onnxruntime before it is written")
    _model_args(onnx)
    onnx.add_argument("--out", required=True, help="the .onnx file")
    onnx.add_argument("--dynamic-batch", action="store_true", help="a symbolic batch axis (default: batch 1)")
    onnx.add_argument("--opset", type=A.int_in(14, 23), default=17)
    onnx.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="fp16: for GPU runtimes")
    onnx.add_argument("--json", action="store_true", help="print the export report as JSON")
    onnx.add_argument("--no-progress", action="store_true")

    onnx_text = export_sub.add_parser("onnx-text", help="ONNX graph of an image-text model's text tower (CLIP, "
                                      "SigLIP) with its tokenizer inside, verified against PyTorch")
    onnx_text.add_argument("--model", "-m", required=True, help="an image-text checkpoint: registry name, hub id or "
                           "folder")
    onnx_text.add_argument("--out", required=True, help="the .onnx file (`vitkit.load_text` reads it back)")
    onnx_text.add_argument("--opset", type=A.int_in(14, 23), default=17)
    onnx_text.add_argument("--json", action="store_true", help="print the export report as JSON")
    onnx_text.add_argument("--no-progress", action="store_true")
    onnx_text.set_defaults(handler=_cmd_export_text)

    convert = sub.add_parser("convert", help="write a model in another format (labels and preprocessing kept)")
    convert.add_argument("source", metavar="SRC", help="anything --model accepts")
    convert.add_argument("--arch", help="architecture for a weights file without config; --to timm: timm's name "
                         "for it, where the source does not say it")
    convert.add_argument("--to", choices=SAVE_FORMATS + ("onnx",), required=True,
                         help="hf: transformers folder; timm: state dict (.safetensors/.pth) or folder; "
                              "safetensors: vitkit file with config inside; jax: .npz; onnx: dynamic-batch graph")
    convert.add_argument("--out", required=True)
    convert.add_argument("--no-progress", action="store_true")

    doctor = sub.add_parser("doctor", help="this machine: CPU, GPU, measured GEMM peaks, and what --fast can "
                            "choose here and why")
    doctor.add_argument("--refresh", action="store_true", help="measure the GEMM peaks again")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")

    info = sub.add_parser("info", help="what a model is: config, preprocessing, labels")
    info.add_argument("source", metavar="SRC")
    info.add_argument("--arch")

    for name in FEATURE_CLIS:
        importlib.import_module(name).add_commands(sub, _model_args, _runtime_args)
    if "eval-retrieval" in sub.choices:  # the index's command, when its CLI is loaded
        evaluate.modes["retrieval"] = sub.choices["eval-retrieval"]
    _show_defaults(parser)
    return parser


def _zero_shot_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", help='zero-shot class names, comma-separated: "cat,dog,a red car" (an '
                        "image-text model: CLIP, SigLIP)")
    parser.add_argument("--labels-file", help="zero-shot class names, one per line")
    parser.add_argument("--template", action="append", metavar="PROMPT",
                        help='zero-shot prompt with {} for the label, e.g. "a photo of a {}." (repeat it for an '
                             "ensemble; default: the CLIP paper's 80 ImageNet templates)")
    parser.add_argument("--text-model", metavar="SRC", help="zero-shot: where the text tower is, when --model does not "
                        "hold it (e.g. a text .onnx from `vitkit export onnx-text` or `vitkit quantize --text-out`)")


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every command's --help says each option's default."""
    for action in parser._actions:
        if action.option_strings and action.help is None and action.default not in (None, argparse.SUPPRESS):
            action.help = "default: %(default)s"
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.formatter_class = argparse.ArgumentDefaultsHelpFormatter
                _show_defaults(child)


# Commands that live beside their feature. Each module's add_commands(sub, model_args, runtime_args) adds its
# subparsers and sets `handler=` (a function args -> exit code) on each; it imports nothing heavy at module level.
FEATURE_CLIS = ("vitkit.quantize.cli", "vitkit.explain.cli", "vitkit.index.cli", "vitkit.service.cli")

# optional packages -> the pyproject extra that installs them, for a clear error when one is missing
EXTRAS = {"lancedb": "index", "fastapi": "serve", "uvicorn": "serve", "multipart": "serve",
          "prometheus_client": "serve", "onnx": "onnx", "onnxruntime": "onnx", "pyarrow": "parquet",
          "matplotlib": "train", "tokenizers": "text"}


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected block indices like -1,-4, got {text!r}") from err


def _load_for_batch(args, inputs: list[str]):
    """The model for a batch command over `inputs`, on this rank's device when started by torchrun."""
    from vitkit.api import load
    from vitkit.batch import distributed
    from vitkit.batch.job import check_output

    device = distributed.init_from_env(args.device) or args.device
    check_output(getattr(args, "output", None), args.chunk_size, args.batch_size)
    model = load(args.model, args.arch, image_size=args.image_size, device=device,
                 **A.load_options(args, inputs))
    if args.model is None:
        print(f"warning: {model.source}: outputs are meaningless", file=sys.stderr)
    return model


def _loader(args):
    from vitkit.batch.job import Loader

    return Loader(args.batch_size, args.workers, args.max_pixels, args.fast_decode, not args.no_progress)


def _inputs(args) -> list[str]:
    from vitkit.data.sources import scan_inputs

    scan = scan_inputs(args.paths)
    if scan.note():
        print(f"note: {scan.note()}", file=sys.stderr)
    if not scan.paths:
        raise ValueError(f"no images found in {' '.join(args.paths)}")
    return scan.paths


def _exit_code(count: int, errors: int) -> int:
    """1 when every input of the run failed (nothing useful came out), else 0."""
    if count and errors == count:
        print(f"every input failed ({errors} of {count}): see their error fields", file=sys.stderr)
        return 1
    return 0


def _cmd_models(args) -> int:
    from vitkit.assets import SHIPPED
    from vitkit.models.registry import ARCHS, MODELS

    if args.json:
        print(json.dumps({
            "shipped": {name: what for name, (_, what) in SHIPPED.items()},
            "models": {name: {"hub_id": m.hub_id, "layout": m.layout, "arch": m.arch, "labels": m.labels,
                              "family": ARCHS[m.arch].config.family, "licence": m.licence, "note": m.note,
                              "published_top1": m.published.top1 if m.published else None,
                              "zero_shot_top1": m.zero_shot.top1 if m.zero_shot else None}
                       for name, m in MODELS.items()},
            "archs": {name: {"config": a.config.to_dict(), "preprocess": a.preprocess.to_dict()}
                      for name, a in ARCHS.items()},
        }, indent=2))
        return 0
    print("Shipped with vitkit (offline, --model NAME):")
    for name, (_, what) in SHIPPED.items():
        print(f"  {name:<50} {what}")
    print("\nNamed models (--model NAME):")
    for name, m in MODELS.items():
        zero_shot = f" (zero-shot ImageNet top-1 {m.zero_shot.top1}% published)" if m.zero_shot else ""
        print(f"  {name:<50} {ARCHS[m.arch].config.family:<7} {m.layout:<5} {m.labels:<12} {m.licence:<13} "
              f"{m.note}{zero_shot}")
    print("\nArchitectures (--arch NAME, for weights files without config):")
    for name, a in ARCHS.items():
        c, p = a.config, a.preprocess
        print(f"  {name:<34} width {c.width:<5} depth {c.depth:<3} heads {c.heads:<3} patch {c.patch_size:<3} "
              f"input {p.input_size}  {c.family}")
    return 0


def _zero_shot_labels(args, from_data: bool = False):
    """The --labels / --labels-file class names (None: none given), checked before any model is loaded.
    from_data: the command finds class names in its data when none are given (zero-shot eval)."""
    from vitkit.image_text import check_templates, labels_from

    labels = labels_from(args.labels, args.labels_file)
    if args.template:
        check_templates(args.template)
        if labels is None and not from_data:
            raise ValueError("--template needs --labels or --labels-file")
    return labels


def _zero_shot(args, model, labels):
    """`model` as a zero-shot classifier of `labels`, or `model` itself when there are none."""
    from vitkit.image_text import ZeroShotClassifier, load_text

    if labels is None:
        return model
    source = args.text_model or args.model
    if source is None:
        raise ValueError("zero-shot needs an image-text checkpoint (--model): random weights have no text tower")
    return ZeroShotClassifier(model, load_text(source, model.device), labels, args.template)


SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv"}


def _cmd_classify(args) -> int:
    from vitkit.output import write_rows
    from vitkit.tasks.classify import classify_paths, classify_to_file

    labels = _zero_shot_labels(args)
    inputs = _inputs(args)
    model = _zero_shot(args, _load_for_batch(args, inputs), labels)
    if args.top_k is None:
        args.top_k = model.config.num_classes if getattr(model.config, "multi_label", False) else 5
    if args.format is None:
        args.format = SUFFIX_FORMATS.get(os.path.splitext(args.output or "")[1].lower(), "table")
    if args.output:  # a resumable job, merged into the file at the end
        stats = classify_to_file(model, inputs, args.output, args.top_k, args.format, args.chunk_size,
                                 _loader(args), args.arch)
        return _exit_code(stats.processed, stats.errors)
    rows = classify_paths(model, inputs, args.top_k, _loader(args))
    count, errors = write_rows(rows, args.format, sys.stdout, args.top_k, inputs, model.labels)
    if errors and errors < count:
        print(f"{errors} of {count} inputs could not be classified (see their error field)", file=sys.stderr)
    return _exit_code(count, errors)


def _cmd_embed(args) -> int:
    from vitkit.embedding_files import check_suffix
    from vitkit.tasks.embed import embed_to_file

    check_suffix(args.output)
    inputs = _inputs(args)
    model = _load_for_batch(args, inputs)
    stats = embed_to_file(model, inputs, args.output, args.pool, args.layers, args.normalize, args.chunk_size,
                          _loader(args), args.arch)
    return _exit_code(stats.processed, stats.errors)


def _cmd_bench(args) -> int:
    from vitkit.api import load
    from vitkit.progress import spinner
    from vitkit.tasks.bench import bench_end_to_end, bench_model, with_peak_fraction

    model = load(args.model, args.arch, image_size=args.image_size, device=args.device,
                 **A.load_options(args, [args.e2e] if args.e2e else None))
    progress = not args.no_progress
    if args.e2e:
        result = bench_end_to_end(model, args.e2e, args.batch_size, args.workers, draft=args.fast_decode,
                                  progress=progress)
    else:
        result = bench_model(model, args.batch_size, backend=None, warmup=args.warmup, iters=args.iters,
                             progress=progress)
    with spinner("this machine's GEMM peaks (measured once, then cached)", progress):
        result = with_peak_fraction(result, model.config, model.spec.input_size)
    result["model"] = model.source
    if args.json:
        print(json.dumps(result))
    else:
        peak = (f", {result['gflop_s']:.0f} GFLOP/s = {100 * result['peak_fraction']:.0f}% of this machine's "
                f"{result['dtype']} GEMM peak ({result['peak_gflop_s']:.0f})" if result["peak_fraction"] else "")
        print(f"{model.source}: {result['img_s']:.1f} img/s, {result['ms_p50']:.1f} ms p50, {result['ms_p95']:.1f} ms "
              f"p95 per batch of {result['batch_size']}, peak RSS {result['peak_rss_mb']:.0f} MB "
              f"({result['backend']} {result['dtype']}){peak}")
    return 0


def _cmd_finetune(args) -> int:
    from vitkit.train.trainer import Trainer

    if args.resize_mode != "crop":
        raise ValueError("--resize-mode is for inference (classify, embed, eval, index, serve, export): fine-tuning "
                         "trains on random crops inside the checkpoint's own view")
    Trainer(train_config.from_arguments(args), resume=args.resume, overwrite=args.overwrite).fit()
    return 0


def _cmd_distill(args) -> int:
    from vitkit.train.distill import Distiller

    Distiller(train_config.from_arguments(args, train_config.DistillConfig), resume=args.resume,
              overwrite=args.overwrite).fit()
    return 0


def _cmd_eval(args) -> int:
    import dataclasses

    from vitkit.api import load
    from vitkit.evaluate import report
    from vitkit.evaluate.run import evaluate_folder, published_protocol

    model = load(args.model, args.arch, image_size=args.image_size, device=args.device,
                 **A.load_options(args, [args.data]))
    if model.config.multi_label:
        return _eval_multi_label(args, model)
    if args.protocol == "published":
        model.spec = published_protocol(model.spec, args.model, args.arch)
    if args.crop_pct:
        model.spec = dataclasses.replace(model.spec, crop_pct=args.crop_pct)
    evaluation = evaluate_folder(model, args.data, args.labels_file, args.layout, args.batch_size, args.workers,
                                 not args.no_progress, args.model, args.arch)
    print(json.dumps(report.to_dict(evaluation, model.source)) if args.json else report.summary(evaluation))
    if args.out:
        written = report.write(evaluation, model.source, args.out)
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


def _eval_multi_label(args, model) -> int:
    from vitkit.checkpoints.io import write_atomic_text
    from vitkit.evaluate.multi_label import evaluate_tagged, summary

    result = evaluate_tagged(model, args.data, args.batch_size, args.workers, not args.no_progress)
    print(json.dumps(result) if args.json else summary(result))
    if args.out:
        target = os.path.join(args.out, "report.json")
        os.makedirs(args.out, exist_ok=True)
        write_atomic_text(json.dumps(result, indent=2) + "\n", target)
        print(f"wrote {target}", file=sys.stderr)
    return 0


def _cmd_zero_shot_eval(args) -> int:
    from vitkit.api import load
    from vitkit.evaluate import report
    from vitkit.evaluate.zero_shot import class_names, evaluate_zero_shot

    labels = _zero_shot_labels(args, from_data=True)
    imagenet = False
    if labels is None:
        labels, imagenet = class_names(args.data, args.truth)
    model = load(args.model, args.arch, image_size=args.image_size, device=args.device,
                 **A.load_options(args, [args.data]))
    classifier = _zero_shot(args, model, labels)
    evaluation = evaluate_zero_shot(classifier, args.data, args.truth, args.layout, args.batch_size, args.workers,
                                    not args.no_progress, args.model, imagenet)
    print(json.dumps(report.to_dict(evaluation, model.source)) if args.json else report.summary(evaluation))
    if args.out:
        written = report.write(evaluation, model.source, args.out)
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


def _cmd_convert(args) -> int:
    from vitkit.api import load
    from vitkit.checkpoints.save import what_is_lost
    from vitkit.progress import spinner

    model = load(args.source, args.arch, device="cpu")
    verified = ": export, then verification with onnxruntime" if args.to == "onnx" else ""
    with spinner(f"converting to {args.to}{verified}", not args.no_progress):
        written = model.save(args.out, args.to, args.arch)
    print(f"wrote {written} ({args.to}, {model.config.num_classes} classes, input {model.spec.input_size})")
    for note in what_is_lost(args.to, args.out, model.spec):
        print(f"note: {note}", file=sys.stderr)
    return 0


def _cmd_export(args) -> int:
    from vitkit.api import load
    from vitkit.onnx import export_onnx
    from vitkit.progress import spinner

    model = load(args.model, args.arch, device="cpu", resize_mode=args.resize_mode)
    with spinner("ONNX export, then verification with onnxruntime", not args.no_progress):
        report = export_onnx(model, args.out, image_size=args.image_size, dynamic_batch=args.dynamic_batch,
                             opset=args.opset, dtype=args.dtype)
    print(json.dumps(report.to_dict()) if args.json else f"wrote {report.summary()}")
    return 0


def _cmd_export_text(args) -> int:
    from vitkit.image_text import load_text
    from vitkit.onnx.text import export_text_onnx
    from vitkit.progress import spinner

    text = load_text(args.model, "cpu")
    with spinner("ONNX export of the text tower, then verification with onnxruntime", not args.no_progress):
        report = export_text_onnx(text.net, text.tokenizer, args.out, source=text.source, opset=args.opset)
    print(json.dumps(report.to_dict()) if args.json else f"wrote {report.summary()}")
    return 0


def _cmd_doctor(args) -> int:
    from vitkit.tasks import doctor

    found = doctor.report(args.refresh)
    print(json.dumps(found, indent=2) if args.json else doctor.text(found))
    return 0


def _cmd_info(args) -> int:
    from vitkit.api import load

    from vitkit.image_text import text_tower_of

    model = load(args.source, args.arch, device="cpu")
    labels = model.labels
    text = text_tower_of(model) if model.layout != "onnx" else None
    exported_from = None
    if model.layout == "onnx":  # the weights the graph was exported from
        props = model.net.session.get_modelmeta().custom_metadata_map
        exported_from = json.loads(props["vitkit_provenance"]) if "vitkit_provenance" in props else None
    print(json.dumps({"source": model.source, "layout": model.layout, "config": model.config.to_dict() | {
        "labels": list(labels[:5]) + (["..."] if len(labels) > 5 else [])},
        "preprocess": model.spec.to_dict(), "parameters": sum(t.numel() for t in model.net.state_dict().values()),
        "provenance": model.provenance, **({"exported_from": exported_from} if exported_from else {}),
        "text": None if text is None else {"config": text.net.config.to_dict(), "tokenizer": text.tokenizer.kind,
                                           "context_length": text.tokenizer.context_length,
                                           "parameters": sum(t.numel() for t in text.net.state_dict().values())}},
        indent=2))
    return 0


COMMANDS = {"models": _cmd_models, "classify": _cmd_classify, "embed": _cmd_embed, "bench": _cmd_bench,
            "finetune": _cmd_finetune, "distill": _cmd_distill, "eval": _cmd_eval, "convert": _cmd_convert, "export": _cmd_export,
            "info": _cmd_info, "doctor": _cmd_doctor}


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `vitkit` process itself (not a caller's process, whose garbage this would keep):
        # torch's import leaves ~10^6 objects that every full garbage collection walks (~60 ms each here); they
        # live as long as the process, so they are moved out of the collector's reach
        gc.freeze()
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    handler = getattr(args, "handler", None) or COMMANDS[args.command]
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 are printed as their bytes
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape" if stream is sys.stdout else "backslashreplace")
    try:
        return handler(args)
    except BrokenPipeError:  # `vitkit ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (OSError, KeyError, ValueError, RuntimeError, NotImplementedError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"vitkit {args.command}: error: {message}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        extra = EXTRAS.get((err.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"vitkit {args.command}: error: this needs the optional package {err.name!r}: "
              f"pip install 'vitkit[{extra}]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (a job with --output resumes where it stopped when run again)", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:  # only a command that imported torch can have joined a group
            from vitkit.batch import distributed

            distributed.shutdown()
