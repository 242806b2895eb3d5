"""`vitkit explain IMAGE... --out DIR`: per image a PNG (the image the model saw, the heatmap overlay, the
top-k labels), `explain.jsonl` (one row per input: path, png, top_k, error) and with --sheet contact sheets.
Imports nothing heavier than torch (which vitkit.cli has loaded already) until the command runs.

Try it:  vitkit explain ../shared/images/imagenet-sample-100/n01440764_tench.JPEG --arch deit_tiny_patch16_224 \
           --model ../shared/weights/deit-tiny-patch16-224/model.safetensors --out explained/ --sheet
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

from vitkit import arguments as A
from vitkit.data.decode import DEFAULT_MAX_PIXELS
from vitkit.explain.maps import HEAD_FUSIONS, METHODS, READOUTS
from vitkit.explain.sheet import COLUMNS

SHEET_NAME = re.compile(r"sheet-\d+")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
    parser.add_argument("--max-pixels", type=A.PIXELS, default=DEFAULT_MAX_PIXELS,
                        help="refuse larger images (decompression-bomb guard)")
    parser.add_argument("--fast-decode", action="store_true", help="JPEG reduce-on-decode (slightly different pixels)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=run)


def png_names(paths: list[str]) -> list[str]:
    """One distinct PNG name per input: its stem (control characters, which a file name may hold, replaced
    by "_"), with its position added where two inputs share a stem, where the stem is a contact sheet's
    name, or where that name is already taken by another input's."""
    stems = [CONTROL.sub("_", Path(p).stem) or "image" for p in paths]
    counts = Counter(stems)
    names, taken = [], set()
    for i, stem in enumerate(stems):
        name = f"{stem}-{i}.png" if counts[stem] > 1 or SHEET_NAME.fullmatch(stem) else f"{stem}.png"
        while name in taken:
            name = f"{Path(name).stem}-{i}.png"
        taken.add(name)
        names.append(name)
    return names


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vitkit.api import load
    from vitkit.checkpoints.io import write_atomic_text
    from vitkit.data.loader import iter_batches
    from vitkit.data.sources import expand_inputs
    from vitkit.explain.explanation import Explanation, Failed, explain_pixels
    from vitkit.explain.maps import MapSpec, require_attention_maps
    from vitkit.explain.overlay import render, save_png
    from vitkit.explain.sheet import write_sheets
    from vitkit.output import json_text
    from vitkit.tasks.job import PROGRESS_MIN_INPUTS

    spec = MapSpec(args.method, args.layer, args.head, args.head_fusion, args.readout)
    paths = expand_inputs(args.paths)
    if not paths:
        raise ValueError(f"no images found in {' '.join(args.paths)}")
    model = load(args.model, args.arch, image_size=args.image_size, device=args.device, backend=args.backend,
                 dtype=args.dtype)
    if args.model is None:
        print(f"warning: {model.source}: random weights, the maps are meaningless", file=sys.stderr)
    require_attention_maps(model.net)
    spec.check(model.config)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder for the PNGs")
    out.mkdir(parents=True, exist_ok=True)
    names = png_names(paths)
    rows: list[dict] = []

    def explained():
        """Every input in order, as an Explanation (its PNG written) or Failed; holds one batch at a time."""
        show = not args.no_progress and len(paths) >= PROGRESS_MIN_INPUTS
        with tqdm(total=len(paths), unit="img", disable=not show, file=sys.stderr, dynamic_ncols=True) as bar:
            for batch in iter_batches(paths, model.spec, args.batch_size, args.workers, args.max_pixels,
                                      args.fast_decode, pin_memory=model.device.type == "cuda"):
                good = explain_pixels(model, batch.pixels, [paths[i] for i in batch.indices], spec, args.top_k) \
                    if batch.indices else []
                found = dict(zip(batch.indices, good)) | {i: Failed(paths[i], e) for i, e in batch.errors.items()}
                for i in sorted(found):
                    item = found[i]
                    png = None
                    if isinstance(item, Explanation) and not args.sheet_only:
                        png = str(save_png(render(item), out / names[i]))
                    rows.append({"path": paths[i], "png": png,
                                 "top_k": [p.to_dict() for p in getattr(item, "predictions", [])],
                                 "error": getattr(item, "error", None)})
                    yield item
                bar.update(len(found))

    sheets: list[Path] = []
    if args.sheet or args.sheet_only:
        sheets = write_sheets(explained(), out, columns=args.columns)
    else:
        for _ in explained():  # writes the per-image PNGs and rows
            pass
    write_atomic_text("".join(json_text(row) + "\n" for row in rows), out / "explain.jsonl")
    errors = sum(row["error"] is not None for row in rows)
    written = sum(row["png"] is not None for row in rows)
    print(f"wrote {written} PNGs{f' and {len(sheets)} contact sheet(s)' if sheets else ''} to {out} "
          f"({spec.describe(model.config)}); {errors} of {len(rows)} inputs unreadable (see explain.jsonl)",
          file=sys.stderr)
    return 0
