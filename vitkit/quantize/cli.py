"""`vitkit quantize`: the command line of vitkit.quantize (flags in, report out; no logic of its own).

Try it:  vitkit quantize --model ../shared/weights/deit-tiny-patch16-224/model.safetensors --arch deit_tiny_patch16_224 \
             --method dynamic --calib CALIB_DIR --eval EVAL_DIR --out deit-int8.onnx --report report.md
         (add --qat TUNE_DIR for quantization-aware fine-tuning, reported beside the post-training result)
"""

from __future__ import annotations

import argparse
import json
import sys

from vitkit import arguments as A

METHODS = ("dynamic", "static", "fp16")  # vitkit.quantize.pipeline.METHODS, without importing onnx at parse time


def add_commands(sub, model_args, runtime_args) -> None:
    parser = sub.add_parser("quantize", help="INT8 (or fp16) ONNX model, measured against fp32 and refused when it "
                                             "loses more accuracy than --max-drop")
    model_args(parser)
    parser.add_argument("--method", choices=METHODS, default="dynamic",
                        help="dynamic: INT8 activations ranged per image (default); static: ranges calibrated once "
                             "on --calib; fp16: an fp16 graph for GPUs")
    parser.add_argument("--recipe", help="a named recipe step (see docs/quantization-report.md), e.g. "
                                         "dynamic-per-channel; default: the measured best for --method")
    parser.add_argument("--calib", nargs="+", metavar="PATH",
                        help="calibration images (files, folders, globs); evaluation images among them are left out")
    parser.add_argument("--calib-views", type=A.int_in(1, 64), default=4, help="crops per calibration image (default 4)")
    parser.add_argument("--eval", dest="eval_folder", metavar="FOLDER",
                        help="evaluation images: labels.csv (file,class_index|label), class sub-folders, or "
                             "unlabelled (then top-1 agreement gates)")
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx",
                        help="onnx: onnxruntime INT8 graph (.onnx); torch: see docs/quantization-report.md")
    parser.add_argument("--out", help="the .onnx file to write (omit to measure only)")
    parser.add_argument("--max-drop", type=A.float_in(0.0, 100.0), default=1.0,
                        help="refuse when top-1 accuracy on --eval drops by more points than this (default 1.0)")
    parser.add_argument("--force", action="store_true", help="write the model even when the gate refuses it")
    parser.add_argument("--report", metavar="FILE.md", help="also write the report as markdown")
    parser.add_argument("--no-speed", action="store_true", help="skip the speed measurement")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--text-out", metavar="FILE.onnx",
                        help="image-text models (CLIP, SigLIP): quantize the text tower too, into this file; the gate "
                             "is then zero-shot top-1 on --eval's class folders (their names are the labels)")
    parser.add_argument("--qat", metavar="DATA",
                        help="quantization-aware fine-tuning on this folder of images (labels.csv or class "
                             "sub-folders add cross-entropy; evaluation images are left out) with the fp32 model as "
                             "teacher, then the INT8 graph of the tuned weights; the report shows post-training and "
                             "QAT side by side; without --calib it also calibrates")
    parser.add_argument("--qat-steps", type=A.COUNT, default=300, help="with --qat: optimiser steps (default 300)")
    parser.add_argument("--qat-lr", type=A.float_in(0.0, 1.0, low_open=True), default=1e-5,
                        help="with --qat: AdamW learning rate (default 1e-5)")
    parser.add_argument("--qat-batch-size", type=A.BATCH, default=16, help="with --qat: images per step (default 16)")
    parser.add_argument("--qat-ce-weight", type=A.float_in(0.0, 100.0), default=0.1,
                        help="with --qat and labelled DATA: weight of the cross-entropy beside the distillation from "
                             "fp32 (default 0.1; 0: distil only)")
    parser.add_argument("--seed", type=A.NON_NEGATIVE, default=0,
                        help="with --qat: the order and crops of the tuning images (default 0)")
    parser.add_argument("--template", action="append", metavar="PROMPT",
                        help="with --text-out: zero-shot prompt(s) (default: CLIP's 80 ImageNet templates)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vitkit.api import load, resolve_device
    from vitkit.quantize import RECIPES, QuantizationRefused, markdown, quantize
    from vitkit.quantize.qat import QATOptions

    if args.recipe and args.recipe not in RECIPES:
        raise ValueError(f"unknown recipe {args.recipe!r}: choose {', '.join(RECIPES)}")
    if args.qat and args.text_out:
        raise ValueError("--qat tunes an image classifier; it does not apply to --text-out")
    model = load(args.model, args.arch, image_size=args.image_size, device="cpu", resize_mode=args.resize_mode)
    say = (lambda msg: None) if args.json else (lambda msg: print(f"  {msg}", file=sys.stderr, flush=True))
    if args.text_out:
        return _image_text(args, model, say)
    qat = None if args.qat is None else QATOptions(args.qat, steps=args.qat_steps, lr=args.qat_lr,
                                                   batch_size=args.qat_batch_size, seed=args.seed,
                                                   ce_weight=args.qat_ce_weight,
                                                   device=str(resolve_device(args.device)))
    try:
        report = quantize(model, args.method, calib=args.calib, eval_folder=args.eval_folder, backend=args.backend,
                          out=args.out, max_drop=args.max_drop, force=args.force,
                          recipe=RECIPES[args.recipe] if args.recipe else None, calib_views=args.calib_views,
                          speed=not args.no_speed, report_md=args.report, qat=qat, log=say)
    except QuantizationRefused as refused:
        print(json.dumps(refused.report.to_dict()) if args.json else markdown(refused.report))
        print(f"vitkit quantize: {refused}", file=sys.stderr)
        return 3
    print(json.dumps(report.to_dict()) if args.json else markdown(report))
    return 0


def _image_text(args: argparse.Namespace, model, say) -> int:
    from vitkit.image_text import load_text
    from vitkit.quantize import QuantizationRefused
    from vitkit.quantize.image_text import quantize_image_text

    if not args.eval_folder:
        raise ValueError("--text-out needs --eval FOLDER (class sub-folders): the gate is zero-shot accuracy there")
    try:
        report = quantize_image_text(model, load_text(args.model, "cpu"), args.eval_folder, args.out, args.text_out,
                                     templates=args.template, calib=args.calib, max_drop=args.max_drop,
                                     force=args.force, log=say)
    except QuantizationRefused as refused:
        print(json.dumps(refused.report.to_dict()))
        print(f"vitkit quantize: {refused}", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        ev, gate = report.eval, report.gate
        accuracy = ev.get("accuracy")
        print(f"zero-shot on {ev['images']} images, {ev['labels']} labels: top-1 agreement {ev['top1_agreement']:.4f}"
              + (f", accuracy fp32 {accuracy['fp32']:.4f} -> INT8 {accuracy['quantized']:.4f}" if accuracy else "")
              + f"; image embedding cosine {ev['image_embedding_cosine']['mean']:.4f}, label embedding cosine "
              f"{ev['label_embedding_cosine']['mean']:.4f}; gate {'passed' if gate['passed'] else 'FORCED'} "
              f"({gate['drop_points']} <= {gate['max_drop']} points); sizes (MB) {report.size_mb}")
    return 0
