"""`vitkit explain IMAGE... --out DIR`: parses the flags and calls vitkit.explain.files.explain_files (per image
a PNG, `explain.jsonl`, with --sheet contact sheets). Imports nothing heavier than torch until the command runs.

Try it:  vitkit explain ../shared/images/imagenet-sample-100/n01440764_tench.JPEG --arch deit_tiny_patch16_224 \
           --model ../shared/weights/deit-tiny-patch16-224/model.safetensors --out explained/ --sheet
"""

from __future__ import annotations

import argparse
import sys

from vitkit import arguments as A
from vitkit.limits import MAX_PIXELS
from vitkit.explain.options import COLUMNS, HEAD_FUSIONS, METHODS, READOUTS

def add_commands(sub, model_args, runtime_args) -> None:
    parser = sub.add_parser("explain", help="attention rollout / attention maps as overlay PNGs (+ contact sheet)")
    parser.add_argument("paths", nargs="+", metavar="IMAGE", help="image files, folders (recursive), globs")
    model_args(parser)
    runtime_args(parser)
    parser.add_argument("--out", "-o", required=True, help="folder for the PNGs and explain.jsonl")
    parser.add_argument("--method", choices=METHODS, default="rollout",
                        help="rollout (Abnar & Zuidema 2020, blocks 0..--layer) or one block's attention")
    parser.add_argument("--layer", type=int, help="block index from 0 (negative from the end); default the last")
    parser.add_argument("--head", type=int, help="with --method attention: one head (default: heads fused)")
    parser.add_argument("--head-fusion", choices=HEAD_FUSIONS, default="mean", help="how heads are combined")
    parser.add_argument("--readout", choices=READOUTS, default="auto",
                        help="whose attention: auto = the tokens the classifier reads (class token; class + "
                             "distillation tokens for distilled DeiT; patch mean for BEiT)")
    parser.add_argument("--top-k", type=A.TOP_K, default=5)
    parser.add_argument("--sheet", action="store_true", help="also write contact sheets (sheet-001.png, ...)")
    parser.add_argument("--sheet-only", action="store_true", help="write the contact sheets, no per-image PNGs")
    parser.add_argument("--columns", type=A.int_in(1, 100), default=COLUMNS, help="contact sheet tiles per row")
    parser.add_argument("--batch-size", type=A.BATCH, default=4)
    parser.add_argument("--workers", type=A.WORKERS, default=1, help="decode processes beside the model (0: inline)")
    parser.add_argument("--max-pixels", type=A.PIXELS, default=MAX_PIXELS,
                        help="refuse larger images (decompression-bomb guard)")
    parser.add_argument("--fast-decode", action="store_true", help="JPEG reduce-on-decode (slightly different pixels)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from vitkit.api import load
    from vitkit.batch.job import Loader
    from vitkit.data.sources import expand_inputs
    from vitkit.explain.files import explain_files
    from vitkit.explain.maps import MapSpec, require_attention_maps

    spec = MapSpec(args.method, args.layer, args.head, args.head_fusion, args.readout)
    paths = expand_inputs(args.paths)
    if not paths:
        raise ValueError(f"no images found in {' '.join(args.paths)}")
    if args.fast:
        raise ValueError("--fast is not for explain: attention maps come from the PyTorch network (use --dtype)")
    model = load(args.model, args.arch, image_size=args.image_size, device=args.device, backend=args.backend,
                 dtype=args.dtype, resize_mode=args.resize_mode)
    if args.model is None:
        print(f"warning: {model.source}: random weights, the maps are meaningless", file=sys.stderr)
    require_attention_maps(model.net)
    spec.check(model.config)
    loader = Loader(args.batch_size, args.workers, args.max_pixels, args.fast_decode, not args.no_progress)
    rows, sheets = explain_files(model, paths, args.out, spec, args.top_k, loader, pngs=not args.sheet_only,
                                 sheets=args.sheet or args.sheet_only, columns=args.columns)
    errors = sum(row["error"] is not None for row in rows)
    written = sum(row["png"] is not None for row in rows)
    print(f"wrote {written} PNGs{f' and {len(sheets)} contact sheet(s)' if sheets else ''} to {args.out} "
          f"({spec.describe(model.config)}); {errors} of {len(rows)} inputs unreadable (see explain.jsonl)",
          file=sys.stderr)
    return 0
