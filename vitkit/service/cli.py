"""`vitkit serve`: the HTTP service (FastAPI + uvicorn) with micro-batching and a web page at /.

Try it:  vitkit serve --model vitkit/assets/digits-vit --port 8000   # then open http://127.0.0.1:8000/
"""

from __future__ import annotations

import argparse
import os
import sys

from vitkit import arguments as A
from vitkit.limits import MAX_PIXELS
from vitkit.choices import VECTOR_POOLS

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_commands(sub, model_args, runtime_args) -> None:
    serve = sub.add_parser("serve", help="HTTP service: classify, embed and search images; a web page at /",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model_args(serve)
    runtime_args(serve)
    serve.add_argument("--index", metavar="DB", help="an image index made with this model, for /v1/search")
    serve.add_argument("--pool", choices=VECTOR_POOLS,
                       help="pooling of /v1/embed (default: the index's, else the model's own)")
    serve.add_argument("--text", action=argparse.BooleanOptionalAction, default=True,
                       help="load an image-text model's text tower: /v1/embeddings, text search, zero-shot")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=A.PORT, default=8000)
    serve.add_argument("--max-batch", type=A.BATCH, default=32, help="most requests run as one model batch")
    serve.add_argument("--max-wait-ms", type=A.float_in(0.0, 10_000.0), default=10.0,
                       help="how long a batch waits for more requests once the first is there")
    serve.add_argument("--queue-size", type=A.int_in(1, 1_000_000), default=256,
                       help="requests waiting for the model beyond which the server answers 503")
    serve.add_argument("--threads", type=A.int_in(1, 1024), help="the model's CPU threads (default: all cores but one)")
    serve.add_argument("--timeout", type=A.SECONDS, default=30.0,
                       help="seconds for a request body to arrive, and again for the model's answer")
    serve.add_argument("--max-upload-mb", type=A.float_in(0.0, 4096.0, low_open=True), default=20.0, help="largest request body")
    serve.add_argument("--max-pixels", type=A.PIXELS, default=MAX_PIXELS,
                       help="refuse larger images (decompression-bomb guard)")
    serve.add_argument("--header-timeout", type=A.SECONDS, default=10.0,
                       help="seconds a client has to send each request's headers (slow clients are dropped)")
    serve.add_argument("--decode-concurrency", type=A.int_in(1, 1024), default=4, help="uploads decoded at once")
    serve.add_argument("--fast-decode", action="store_true", help="JPEG reduce-on-decode: faster on large photos")
    serve.add_argument("--api-key", default=os.environ.get("VITKIT_API_KEY"),
                       help="require this key (Authorization: Bearer KEY or X-API-Key); default: $VITKIT_API_KEY")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="allow browser pages from this origin to call the API (repeatable); default: none")
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    serve.set_defaults(handler=_cmd_serve)


def _cmd_serve(args) -> int:
    from vitkit.api import load
    from vitkit.image_text import text_tower_of
    from vitkit.service import connections
    from vitkit.service.app import create_app
    from vitkit.service.engine import Engine
    from vitkit.service.routes import Limits

    model = load(args.model, args.arch, image_size=args.image_size, device=args.device,
                 **A.load_options(args, batch_size=args.max_batch))
    index = _open_index(args.index) if args.index else None
    text = text_tower_of(model, index.meta.pool if index else args.pool) if args.text else None
    engine = Engine(model, args.max_batch, args.max_wait_ms, args.queue_size, args.threads, args.max_pixels,
                    args.fast_decode)
    limits = Limits(int(args.max_upload_mb * 2**20), args.timeout, args.decode_concurrency)
    app = create_app(engine, index, args.api_key, pool=args.pool, limits=limits,
                     cors_origins=tuple(args.cors_origin), text=text)
    if args.host not in LOOPBACK and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can use it",
              file=sys.stderr)
    connections.run(app, args.host, args.port, args.log_level, args.header_timeout)
    return 0


def _open_index(path: str):
    from vitkit.index import ImageIndex

    return ImageIndex.open(path)
