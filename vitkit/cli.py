"""`vitkit` command line: one subcommand per task. Parses flags and calls the task; holds no logic.

Try it:  vitkit --help
"""

from __future__ import annotations

import argparse
import json
import sys

from vitkit.checkpoints.io import CheckpointError
from vitkit.checkpoints.save import FORMATS as SAVE_FORMATS
from vitkit.data.decode import DEFAULT_MAX_PIXELS
from vitkit.output import FORMATS as OUTPUT_FORMATS


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", "-m", help="registry name (see `vitkit models`), hub id, local folder "
                        "or weights file; omit it and give --arch for random weights")
    parser.add_argument("--arch", help="architecture for a weights file without config, e.g. deit_tiny_patch16_224")
    parser.add_argument("--image-size", type=int, help="run at this input side (positions are resampled)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitkit", description="Vision Transformers: classify, convert, list.")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="list named models and architectures")
    models.add_argument("--json", action="store_true", help="machine-readable output")

    classify = sub.add_parser("classify", help="top-k labels for images, folders (recursive) and globs")
    classify.add_argument("paths", nargs="+", metavar="PATH")
    _model_args(classify)
    classify.add_argument("--top-k", type=int, default=5)
    classify.add_argument("--batch-size", type=int, default=16)
    classify.add_argument("--workers", type=int, default=1, help="decode processes beside the model (0: inline)")
    classify.add_argument("--format", choices=OUTPUT_FORMATS, default="table")
    classify.add_argument("--output", "-o", help="write here (atomically) instead of stdout")
    classify.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                          help="refuse larger images (decompression-bomb guard)")
    classify.add_argument("--fast-decode", action="store_true",
                          help="JPEG reduce-on-decode: much faster on large photos, slightly different pixels")
    classify.add_argument("--no-progress", action="store_true")

    convert = sub.add_parser("convert", help="write a model in another format (labels and preprocessing kept)")
    convert.add_argument("source", metavar="SRC", help="anything --model accepts")
    convert.add_argument("--arch", help="architecture for a weights file without config")
    convert.add_argument("--to", choices=SAVE_FORMATS, required=True,
                         help="hf: transformers folder; timm: state dict (.safetensors/.pth) or folder; "
                              "safetensors: vitkit file with config inside; jax: .npz")
    convert.add_argument("--out", required=True)

    info = sub.add_parser("info", help="what a model is: config, preprocessing, labels")
    info.add_argument("source", metavar="SRC")
    info.add_argument("--arch")
    return parser


def _cmd_models(args) -> int:
    from vitkit.models.registry import ARCHS, MODELS

    if args.json:
        print(json.dumps({
            "models": {name: {"hub_id": m.hub_id, "layout": m.layout, "arch": m.arch, "labels": m.labels,
                              "licence": m.licence, "note": m.note} for name, m in MODELS.items()},
            "archs": {name: {"config": a.config.to_dict(), "preprocess": a.preprocess.to_dict()}
                      for name, a in ARCHS.items()},
        }, indent=2))
        return 0
    print("Named models (--model NAME):")
    for name, m in MODELS.items():
        print(f"  {name:<50} {m.layout:<5} {m.labels:<12} {m.licence:<11} {m.note}")
    print("\nArchitectures (--arch NAME, for weights files without config):")
    for name, a in ARCHS.items():
        c, p = a.config, a.preprocess
        print(f"  {name:<34} width {c.width:<5} depth {c.depth:<3} heads {c.heads:<3} patch {c.patch_size:<3} "
              f"input {p.input_size}  {c.family}")
    return 0


def _cmd_classify(args) -> int:
    from vitkit.api import load
    from vitkit.data.sources import expand_inputs
    from vitkit.output import open_output, write_rows
    from vitkit.tasks.classify import classify_paths

    paths = expand_inputs(args.paths)
    model = load(args.model, args.arch, image_size=args.image_size, device=args.device)
    if model.layout == "vitkit" and args.model is None:
        print(f"warning: {model.source}: predictions are meaningless", file=sys.stderr)
    rows = classify_paths(model, paths, args.top_k, args.batch_size, args.workers, args.max_pixels,
                          args.fast_decode, progress=not args.no_progress)
    with open_output(args.output) as out:
        count, errors = write_rows(rows, args.format, out, args.top_k)
    if errors:
        print(f"{errors} of {count} inputs could not be classified (see their error field)", file=sys.stderr)
    return 0


def _cmd_convert(args) -> int:
    from vitkit.api import load

    model = load(args.source, args.arch, device="cpu")
    written = model.save(args.out, args.to, args.arch)
    print(f"wrote {written} ({args.to}, {model.config.num_classes} classes, input {model.spec.input_size})")
    return 0


def _cmd_info(args) -> int:
    from vitkit.api import load

    model = load(args.source, args.arch, device="cpu")
    labels = model.labels
    print(json.dumps({"source": model.source, "layout": model.layout, "config": model.config.to_dict() | {
        "labels": list(labels[:5]) + (["..."] if len(labels) > 5 else [])},
        "preprocess": model.spec.to_dict(), "parameters": sum(p.numel() for p in model.net.parameters())},
        indent=2))
    return 0


COMMANDS = {"models": _cmd_models, "classify": _cmd_classify, "convert": _cmd_convert, "info": _cmd_info}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (CheckpointError, FileNotFoundError, KeyError, ValueError, RuntimeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"vitkit {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
