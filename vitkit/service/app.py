"""`create_app(engine, index=None, api_key=None, ...)`: the FastAPI app of `vitkit serve`.

It starts the engine when the server starts (warm-up included, so /readyz turns 200 only when the model
answers) and stops it at shutdown; serves the API (routes.py), the web page at / (static/, package data,
no CDN: it works offline), and the OpenAPI schema at /openapi.json. CORS is off unless origins are given.

Try it:  python -c "import vitkit, uvicorn; from vitkit.service.engine import Engine; \
from vitkit.service.app import create_app; \
uvicorn.run(create_app(Engine(vitkit.load('vitkit/assets/digits-vit'))))"
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from importlib.resources import files

import torch
from fastapi import FastAPI, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware

from vitkit.api import VECTOR_POOLS
from vitkit.service import errors
from vitkit.service.engine import Engine
from vitkit.service.limits import BodyLimit
from vitkit.service.metrics import CountRequests, Metrics
from vitkit.service.routes import Limits, Service, api, probes
from vitkit.version import VERSION

# the page's files: a fixed table, so no part of a request URL ever names a file
PAGE = {"/": ("index.html", "text/html; charset=utf-8"),
        "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
        "/static/style.css": ("style.css", "text/css; charset=utf-8")}
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def create_app(engine: Engine, index=None, api_key: str | None = None, *, pool: str | None = None,
               limits: Limits | None = None, cors_origins: tuple[str, ...] = (), text=None) -> FastAPI:
    """index: a vitkit.index.ImageIndex made with this model (checked: IndexMismatch otherwise), for
    /v1/search. pool: pooling of /v1/embed (default: the index's, else the model's own). text: the model's
    vitkit.image_text.TextEncoder, for /v1/embeddings and text queries of /v1/search (checked against the
    index's text tower when the index records one)."""
    limits = limits or Limits()
    index_pool = None
    if index is not None:
        index.check_model(engine.model)
        index_pool = index.info["pool"]
        if text is not None and index.meta.text is not None:
            index.check_text(text)
    pool = pool or index_pool or engine.model.default_pool
    _check_pooling(engine.model, pool)
    service = Service(engine, index, api_key, pool, index_pool, limits, text)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        service.decode_slots = asyncio.Semaphore(limits.decode_concurrency)
        await run_in_threadpool(engine.start)
        yield
        await run_in_threadpool(engine.close)

    app = FastAPI(title="vitkit", version=VERSION, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Classify, embed and search images with a Vision Transformer.")
    app.state.service = service
    app.state.metrics = Metrics(engine)
    errors.install(app)
    app.include_router(api)
    app.include_router(probes)
    for url, (name, media_type) in PAGE.items():
        app.add_api_route(url, _page_file(name, media_type), methods=["GET"], include_in_schema=False)
    # middleware: the last added is the outermost; requests are counted whatever refuses them
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes, timeout_s=limits.timeout_s)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(CountRequests, metrics=app.state.metrics)
    return app


def _check_pooling(model, pool: str) -> None:
    """A model that cannot pool this way (e.g. an ONNX graph without that output) fails here, not per request."""
    if pool not in VECTOR_POOLS:
        raise ValueError(f"/v1/embed gives one vector per image: pool must be one of {', '.join(VECTOR_POOLS)}")
    size = model.spec.input_size
    model.embed_pixels(torch.zeros(1, 3, size, size), pool)


def _page_file(name: str, media_type: str):
    body = files("vitkit.service").joinpath("static", name).read_bytes()

    async def page_file() -> Response:
        return Response(body, media_type=media_type, headers={"Content-Security-Policy": PAGE_POLICY,
                                                              "X-Content-Type-Options": "nosniff"})

    return page_file
