"""Command line of the image index: `vitkit index add|search|remove|stats|dups` and `vitkit eval retrieval`.

Parses flags and calls vitkit.index; imports nothing heavy until a command runs.

Try it:  vitkit index add digits.db digits/ --model vitkit/assets/digits-vit --class-folders
         vitkit index search digits.db query.png --k 5 --format jsonl
"""

from __future__ import annotations

import json
import sys

from vitkit import arguments as A
from vitkit.limits import MAX_PIXELS
from vitkit.choices import VECTOR_POOLS

FORMATS = ("table", "jsonl")


def add_commands(sub, model_args, runtime_args) -> None:
    index = sub.add_parser("index", help="image index: add images, search by image, near-duplicates, stats")
    commands = index.add_subparsers(dest="index_command", required=True)

    add = commands.add_parser("add", help="embed images into an index folder (created on first use); "
                              "only new or changed files are embedded")
    add.add_argument("db", metavar="DB", help="index folder")
    add.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders (recursive), globs")
    _model_options(add, model_args, runtime_args)
    add.add_argument("--pool", choices=VECTOR_POOLS,
                     help="for a new index (default: the model's own); an existing index keeps its own")
    add.add_argument("--class-folders", action="store_true",
                     help="each FOLDER holds one subfolder per class: label its images with that name")
    add.add_argument("--prune", action="store_true", help="also remove indexed files gone from the FOLDERs")
    add.add_argument("--chunk-size", type=A.CHUNK, default=256, help="files per atomic commit")
    add.add_argument("--ann-threshold", type=A.NON_NEGATIVE, default=None,
                     help="build the ANN index once the index has this many images (default 50000)")
    add.add_argument("--json", action="store_true", help="print the report as JSON")
    add.set_defaults(handler=_cmd_add)

    search = commands.add_parser("search", help="the most similar indexed images to each query image, or to "
                                 "each --text query (an index built with CLIP or SigLIP)")
    search.add_argument("db", metavar="DB")
    search.add_argument("queries", nargs="*", metavar="QUERY", help="image files, folders, globs")
    search.add_argument("--text", action="append", metavar="TEXT", help='a text query, e.g. "a dog on a beach" '
                        "(repeat it for several)")
    _model_options(search, model_args, runtime_args)
    search.add_argument("--k", type=A.int_in(1, 10_000), default=10, help="results per query")
    search.add_argument("--exact", action="store_true", help="exact search even when an ANN index exists")
    search.add_argument("--format", choices=FORMATS, default="table")
    search.set_defaults(workers=0)  # a few queries: starting decode processes would cost more than it saves
    search.set_defaults(handler=_cmd_search)

    remove = commands.add_parser("remove", help="remove files (folders: every file below) from an index")
    remove.add_argument("db", metavar="DB")
    remove.add_argument("paths", nargs="*", metavar="PATH")
    remove.add_argument("--missing", action="store_true",
                        help="only files gone from disk (below PATHs, or anywhere without PATH)")
    remove.set_defaults(handler=_cmd_remove)

    stats = commands.add_parser("stats", help="what an index holds: count, model, pooling, ANN index")
    stats.add_argument("db", metavar="DB")
    stats.add_argument("--check", action="store_true",
                       help="check the table's integrity and measure the ANN index's recall@10 against exact")
    stats.add_argument("--samples", type=A.int_in(1, 100_000), default=100, help="queries for the recall check")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(handler=_cmd_stats)

    dups = commands.add_parser("dups", help="pairs of near-duplicate (and identical) images")
    dups.add_argument("db", metavar="DB")
    dups.add_argument("--threshold", type=A.float_in(-1.0, 1.0), default=0.95, help="cosine similarity from which a pair is listed")
    dups.add_argument("--format", choices=FORMATS, default="table")
    dups.set_defaults(handler=_cmd_dups)

    evaluate = sub.add_parser("eval-retrieval", help="leave-one-out retrieval quality (recall@1/5/10, mAP) on "
                              "a folder of class subfolders; `vitkit eval retrieval FOLDER ...`")
    evaluate.add_argument("folder", metavar="FOLDER", help="one subfolder per class (or a manifest)")
    model_args(evaluate)
    runtime_args(evaluate)
    evaluate.add_argument("--pool", choices=VECTOR_POOLS, help="default: the model's own")
    _loader_options(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.set_defaults(handler=_cmd_eval_retrieval)


def _model_options(parser, model_args, runtime_args) -> None:
    model_args(parser)
    runtime_args(parser)
    parser.epilog = "Without --model/--arch, the model the index was built with is loaded."
    _loader_options(parser)


def _loader_options(parser) -> None:
    parser.add_argument("--batch-size", type=A.BATCH, default=32)
    parser.add_argument("--workers", type=A.WORKERS, default=1, help="decode processes beside the model (0: inline)")
    parser.add_argument("--max-pixels", type=A.PIXELS, default=MAX_PIXELS,
                        help="refuse larger images (decompression-bomb guard)")
    parser.add_argument("--no-progress", action="store_true")


def _load(args, meta=None):
    """The model of --model/--arch, else the one recorded in the index's metadata."""
    from vitkit.api import load

    options = {"device": args.device, **A.load_options(args, getattr(args, "paths", None))}
    if args.model or args.arch:
        return load(args.model, args.arch, image_size=args.image_size, **options)
    if meta is None:
        raise ValueError("give --model (or --arch): there is no index yet to take the model from")
    try:
        return load(meta.model, meta.arch, image_size=meta.preprocess["input_size"], **options)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot reload the index's model {meta.model} ({err}): give --model") from err


def _open(db):
    from vitkit.index.image_index import ImageIndex

    return ImageIndex.open(db)


def _cmd_add(args) -> int:
    from vitkit.image_text import text_tower_of
    from vitkit.index.image_index import ImageIndex

    try:
        index = ImageIndex.open(args.db)
    except FileNotFoundError:
        index = None
    model = _load(args, index.meta if index else None)
    if index is None:
        index = ImageIndex.create(args.db, model, args.pool, args.arch, text_tower_of(model, args.pool))
    threshold = {} if args.ann_threshold is None else {"ann_threshold": args.ann_threshold}
    report = index.add(args.paths, model, pool=args.pool, class_folders=args.class_folders, prune=args.prune,
                       batch_size=args.batch_size, workers=args.workers, chunk_size=args.chunk_size,
                       max_pixels=args.max_pixels, progress=not args.no_progress, **threshold)
    for path, reason in report.errors:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    count = index.info["count"]
    if args.json:
        print(json.dumps({**vars(report), "errors": [{"path": p, "error": e} for p, e in report.errors],
                          "count": count}))
    else:
        print(f"{args.db}: {report.summary()}; {count} images indexed")
    return 0


def _cmd_search(args) -> int:
    from vitkit.data.sources import expand_inputs
    from vitkit.image_text import load_text
    from vitkit.index.embedding import embed_files

    index = _open(args.db)
    if args.text:
        if args.queries:
            raise ValueError("give query images or --text queries, not both")
        if index.meta.text is None:
            index.check_text(None)  # says why this index cannot be searched by text
        text = load_text(args.model or index.meta.model, args.device)
        for query, hits in zip(args.text, index.search_text(text, args.text, args.k, args.exact)):
            _write_query(query, [{"id": h.id, "path": h.path, "score": h.score, "label": h.label} for h in hits],
                         None, args.format)
        return 0
    if not args.queries:
        raise ValueError("give query images (files, folders, globs) or --text queries")
    model = _load(args, index.meta)
    index.check_model(model)
    paths = expand_inputs(args.queries)
    if not paths:
        raise ValueError(f"no images found in {' '.join(args.queries)}")
    for positions, vectors, failed in embed_files(model, paths, index.meta.pool, args.batch_size, args.workers,
                                                  args.max_pixels, progress=False):
        found = dict(zip(positions, index.search_vectors(vectors, args.k, args.exact) if positions else []))
        for position in sorted([*positions, *failed]):
            results = [{"id": h.id, "path": h.path, "score": h.score, "label": h.label}
                       for h in found.get(position, [])]
            _write_query(paths[position], results, failed.get(position), args.format)
    return 0


def _write_query(query: str, results: list[dict], error: str | None, fmt: str) -> None:
    if fmt == "jsonl":
        print(json.dumps({"query": query, "results": results, "error": error}, ensure_ascii=False))
        return
    print(f"{query}" + (f"\tERROR: {error}" if error else ""))
    for rank, r in enumerate(results, 1):
        print(f"  {rank:>3}  {r['score']:.4f}  {r['path']}" + (f"  [{r['label']}]" if r["label"] else ""))


def _cmd_remove(args) -> int:
    if not args.paths and not args.missing:
        raise ValueError("name the files or folders to remove, or give --missing")
    index = _open(args.db)
    removed = index.remove(args.paths or None, missing_only=args.missing)
    print(f"{args.db}: removed {removed} files; {index.info['count']} images indexed")
    return 0


def _cmd_stats(args) -> int:
    stats = _open(args.db).stats(check=args.check, samples=args.samples)
    if args.json:
        print(json.dumps(stats))
        return 0
    ann = stats["ann"]
    print(f"{stats['path']}: {stats['count']} images ({stats['files']} files, {stats['labels']} labels), "
          f"{stats['bytes'] / 1e6:.1f} MB\n  model {stats['model']}" + (f" ({stats['arch']})" if stats["arch"] else "")
          + f", pool {stats['pool']}, {stats['dim']}-d, input {stats['preprocess']['input_size']}\n  "
          + (f"ANN index {ann['type']}: {ann['indexed_rows']} rows indexed, {ann['unindexed_rows']} searched exactly"
             if ann else "no ANN index: every search is exact"))
    if args.check:
        check = stats["check"]
        print(f"  check: {check['repeated_ids']} repeated ids, {check['repeated_paths']} paths in two rows, "
              f"{check['rows_without_files']} rows without files, max |norm - 1| {check['max_norm_error']:.1e}")
        if check["ann_recall@10"] is not None:
            print(f"  ANN recall@10 against exact search: {check['ann_recall@10']:.3f} "
                  f"({check['ann_recall_queries']} stored images as queries)")
    return 0


def _cmd_dups(args) -> int:
    pairs = _open(args.db).duplicates(args.threshold)
    for p in pairs:
        if args.format == "jsonl":
            print(json.dumps({"a": p.a, "b": p.b, "score": p.score, "identical": p.identical}, ensure_ascii=False))
        else:
            print(f"{p.score:.4f}\t{p.a}\t{p.b}" + ("\t(identical files)" if p.identical else ""))
    print(f"{len(pairs)} pairs at cosine >= {args.threshold}", file=sys.stderr)
    return 0


def _cmd_eval_retrieval(args) -> int:
    from vitkit.index.retrieval import evaluate_retrieval

    report = evaluate_retrieval(args.folder, _load(args), args.pool, args.batch_size, args.workers,
                                args.max_pixels, progress=not args.no_progress)
    for error in report["errors"]:
        print(f"skipped {error['path']}: {error['error']}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
        return 0
    chance = report["chance"]
    print(f"{report['model']} (pool {report['pool']}): {report['images']} images, {report['classes']} classes, "
          f"{report['queries']} queries (leave-one-out)")
    for name in [k for k in report if k.startswith("recall@")] + ["mAP"]:
        print(f"  {name:<10} {report[name]:.4f}   (chance {chance[name]:.4f})")
    return 0
