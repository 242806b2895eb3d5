"""The HTTP routes: /v1 (classify one image or several, embed, search by image or text, embeddings of texts in
OpenAI's format, models, thumbnails; behind the optional API key),
/healthz, /readyz and /metrics. Each route decodes its upload in a thread pool (at most
`Limits.decode_concurrency` at once), hands the pixels to the shared `Engine` and awaits the result for at
most `Limits.timeout_s`; each failure it knows has its own status (see errors.py). In a classification of several
images, an image that cannot be read or decoded gets its own error entry and the others their labels. A search
hit names its file by the indexed folder's name and the path below it, never by the server's absolute path.

Try it:  curl -F file=@cat.jpg "localhost:8000/v1/classify?top_k=3"
"""

from __future__ import annotations

import asyncio
import base64
import threading
from dataclasses import dataclass, field

import torch
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from vitkit.data.decode import ImageDecodeError, ImageTooLarge
from vitkit.service.auth import require_key
from vitkit.service.engine import Engine, EngineBusy, EngineStopped, ModelFailure
from vitkit.service.errors import (
    BadRequest,
    Busy,
    ModelError,
    NotFound,
    PayloadTooLarge,
    ResultTimeout,
    Unprocessable,
    UnsupportedMediaType,
    documented,
)
from vitkit.service.schemas import (
    IMAGE_URI,
    MAX_K,
    MAX_TOP_K,
    ClassifyBatchResponse,
    ClassifyResponse,
    ClassifyResult,
    Embedding,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedResponse,
    IndexInfo,
    Label,
    ModelInfo,
    ModelsResponse,
    OpenAIErrorResponse,
    SearchHit,
    SearchResponse,
    Status,
    Usage,
)
from vitkit.service.thumbnails import thumbnail_jpeg
from vitkit.service.uploads import (
    CLASSIFY_BODY,
    IMAGE_BODY,
    SEARCH_BODY,
    image_bytes,
    item_bytes,
    parse_json,
    read_classify,
    read_image,
    read_search,
)

LABELS_SAMPLE = 10
MAX_LABELS_TEXT = 20_000  # characters of a zero-shot label list in a query string


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 20 * 2**20  # whole request body (base64 in JSON adds a third)
    timeout_s: float = 30.0  # for the body to arrive, and again for the model's answer
    decode_concurrency: int = 4  # uploads decoded at once: each may hold width * height * 3 bytes


@dataclass
class Service:
    """What the routes share, kept on `app.state.service`."""

    engine: Engine
    index: object | None  # vitkit.index.ImageIndex, or anything with its info / search_vectors / get
    api_key: str | None
    pool: str  # pooling of /v1/embed
    index_pool: str | None  # pooling the index's vectors were made with: /v1/search's
    limits: Limits
    text: object | None = None  # vitkit.image_text.TextEncoder of an image-text model: text search and embeddings
    decode_slots: asyncio.Semaphore = field(default_factory=asyncio.Semaphore)  # made again at each startup
    text_lock: threading.Lock = field(default_factory=threading.Lock)  # one text batch at a time
    zero_shot: dict = field(default_factory=dict)  # (labels, template) -> ZeroShotClassifier, oldest first

    @property
    def text_search(self) -> bool:
        return self.text is not None and self.index is not None and self.index.meta.text == self.text.fingerprint

    @property
    def model_id(self) -> str:
        return self.engine.model.source

    def describe(self) -> ModelsResponse:
        model = self.engine.model
        info = ModelInfo(id=self.model_id, family=model.config.family, input_size=model.spec.input_size,
                         num_classes=model.config.num_classes, embedding_dim=model.embedding_shape(self.pool)[0],
                         pool=self.pool, preprocess=model.spec.to_dict(),
                         labels_sample=list(model.labels[:LABELS_SAMPLE]), text=self.text is not None)
        index = None
        if self.index is not None:
            found = self.index.info  # one read of the index's state
            index = IndexInfo(**{key: found[key] for key in ("count", "model", "pool", "dim")},
                              text_search=self.text_search)
        return ModelsResponse(models=[info], index=index)


def _service(request: Request) -> Service:
    return request.app.state.service


async def _pixels(request: Request, service: Service) -> torch.Tensor:
    return await _image_pixels(await read_image(request), service)


async def _image_pixels(data: bytes, service: Service) -> torch.Tensor:
    async with service.decode_slots:
        try:
            return await run_in_threadpool(service.engine.prepare, data)
        except ImageTooLarge as err:
            raise PayloadTooLarge(str(err)) from None
        except ImageDecodeError as err:
            raise Unprocessable(str(err)) from None


async def _infer(service: Service, kind: str, pixels: torch.Tensor, option: int | str):
    try:
        future = service.engine.submit(kind, pixels, option)
    except (EngineBusy, EngineStopped) as err:
        raise Busy(f"{err}: retry shortly") from None
    try:
        async with asyncio.timeout(service.limits.timeout_s):  # on expiry the queued request is dropped
            return await asyncio.wrap_future(future)
    except TimeoutError:
        raise ResultTimeout(f"the model did not answer within {service.limits.timeout_s:g} s (server overloaded)"
                            ) from None
    except ModelFailure as err:
        raise ModelError(str(err)) from err
    except EngineStopped as err:  # the worker died while this request waited
        raise Busy(f"{err}: retry shortly") from None


async def _embed_texts(service: Service, texts: list[str]) -> tuple[torch.Tensor, int]:
    """(N, P) normalised text embeddings and the number of tokens read (up to each text's end token)."""
    if service.text is None:
        raise NotFound(f"{service.model_id} has no text tower here: serve an image-text model (CLIP, SigLIP) "
                       "with its tokenizer")
    text = service.text

    def run():
        with service.text_lock:
            ids = text.tokenizer(texts)  # (N, context_length), tokenized once for the vectors and the count
            ends = (ids == text.tokenizer.eos_id).int().argmax(dim=-1) + 1  # tokens up to the first end token
            return text.embed_ids(ids), int(ends.sum())

    try:
        async with asyncio.timeout(service.limits.timeout_s):
            return await run_in_threadpool(run)
    except TimeoutError:
        raise ResultTimeout(f"the text tower did not answer within {service.limits.timeout_s:g} s") from None


def _index(service: Service):
    if service.index is None:
        raise NotFound("this server has no image index: start it with --index DB to search")
    return service.index


IMAGE_ERRORS = documented(400, 401, 408, 413, 415, 422, 500, 503, 504)  # 500: the model itself failed
api = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])


ZERO_SHOT_TEMPLATE = "a photo of a {}."  # one prompt: a request's labels are embedded while it waits
MAX_ZERO_SHOT_SETS = 64  # label sets whose embeddings a server keeps


@api.post("/classify", response_model=ClassifyResponse | ClassifyBatchResponse,
          responses=IMAGE_ERRORS | documented(404), openapi_extra=CLASSIFY_BODY,
          summary="Top-k labels of one image, or of several (multipart 'files', JSON 'images'); zero-shot with "
                  "`labels`")
async def classify(request: Request, top_k: int = Query(5, ge=1, le=MAX_TOP_K),
                   labels: str | None = Query(None, min_length=1, max_length=MAX_LABELS_TEXT, description=
                                              "zero-shot: class names, comma-separated (an image-text model)"),
                   template: str | None = Query(None, min_length=2, max_length=500, description=
                                                "zero-shot: the prompt, with {} for the label (default "
                                                f"{ZERO_SHOT_TEMPLATE!r})")
                   ) -> ClassifyResponse | ClassifyBatchResponse:
    service = _service(request)
    if labels is None and template is not None:
        raise Unprocessable("template needs labels")
    classifier = None
    if labels is not None:
        classifier = await _zero_shot(service, labels, template or ZERO_SHOT_TEMPLATE)
    elif not service.engine.model.config.num_classes:
        raise NotFound(f"{service.model_id} has no classifier head: use /v1/embed or /v1/search")
    upload = await read_classify(request)
    if isinstance(upload, bytes):
        return ClassifyResponse(model=service.model_id,
                                top_k=await _top_k(service, await _image_pixels(upload, service), top_k, classifier))
    results = await asyncio.gather(*(_classify_one(service, i, item, top_k, classifier)
                                     for i, item in enumerate(upload)))  # decoded and batched together
    return ClassifyBatchResponse(model=service.model_id, results=list(results))


async def _classify_one(service: Service, index: int, item: bytes | str, top_k: int, classifier) -> ClassifyResult:
    """One image of a batch: its labels, or the reason its bytes give none (the model's own failures, a full
    queue or a timeout fail the whole request instead)."""
    try:
        pixels = await _image_pixels(item_bytes(item), service)
    except (BadRequest, PayloadTooLarge, Unprocessable) as err:
        return ClassifyResult(index=index, top_k=[], error=err.detail)
    return ClassifyResult(index=index, top_k=await _top_k(service, pixels, top_k, classifier), error=None)


async def _top_k(service: Service, pixels: torch.Tensor, top_k: int, classifier) -> list[Label]:
    """The top_k labels of one image: the model's head, or the zero-shot `classifier` when there is one."""
    if classifier is None:
        predictions = await _infer(service, "classify", pixels, top_k)
    else:
        vector = await _infer(service, "embed", pixels, "prelogits")
        predictions = classifier.top_k(classifier.logits(torch.from_numpy(vector)[None]), top_k)[0]  # from (1, D)
    return [Label(**p.to_dict()) for p in predictions]


async def _zero_shot(service: Service, labels: str, template: str):
    """The zero-shot classifier of these labels (their embeddings made once, then kept)."""
    from vitkit.image_text import ZeroShotClassifier, labels_from

    if service.text is None:
        raise NotFound(f"{service.model_id} has no text tower here: zero-shot needs an image-text model (CLIP, "
                       "SigLIP) served with its tokenizer")
    try:
        names = labels_from(labels, None)
        key = (names, template)
        if key not in service.zero_shot:

            def build():
                with service.text_lock:
                    return ZeroShotClassifier(service.engine.model, service.text, names, [template])

            async with asyncio.timeout(service.limits.timeout_s):
                classifier = await run_in_threadpool(build)
            while len(service.zero_shot) >= MAX_ZERO_SHOT_SETS:
                service.zero_shot.pop(next(iter(service.zero_shot)))  # the oldest label set
            service.zero_shot[key] = classifier
    except ValueError as err:
        raise Unprocessable(str(err)) from None
    except TimeoutError:
        raise ResultTimeout(f"embedding {labels.count(',') + 1} labels took more than {service.limits.timeout_s:g} s"
                            ) from None
    return service.zero_shot[key]


@api.post("/embed", response_model=EmbedResponse, responses=IMAGE_ERRORS, openapi_extra=IMAGE_BODY,
          summary="The embedding of one image")
async def embed(request: Request) -> EmbedResponse:
    service = _service(request)
    vector = await _infer(service, "embed", await _pixels(request, service), service.pool)
    return EmbedResponse(model=service.model_id, pool=service.pool, dim=len(vector), embedding=vector.tolist())


@api.post("/search", response_model=SearchResponse, responses=IMAGE_ERRORS | documented(404),
          openapi_extra=SEARCH_BODY, summary="The indexed images most similar to one image, or to a text")
async def search(request: Request, k: int = Query(10, ge=1, le=MAX_K)) -> SearchResponse:
    service = _service(request)
    index = _index(service)
    query = await read_search(request)
    if isinstance(query, str):
        if not service.text_search:
            raise NotFound("this index cannot be searched by text: it needs an image-text model (CLIP, SigLIP) "
                           "indexed with its projected embedding, served with the same model")
        vector = (await _embed_texts(service, [query]))[0][0].numpy()  # (D,)
    else:
        vector = await _infer(service, "embed", await _image_pixels(query, service), service.index_pool)

    def look_up():
        hits = index.search_vectors(vector[None], k)[0]  # vector (D,) -> queries (1, D)
        return [SearchHit(id=h.id, **index.place(h.path)._asdict(), label=h.label, score=h.score,
                          thumbnail=f"/v1/thumbnail/{h.id}") for h in hits], index.info["count"]

    hits, count = await run_in_threadpool(look_up)  # the search, and the roots file read for the hits' places
    return SearchResponse(model=service.model_id, indexed=count, hits=hits)


@api.post("/embeddings", response_model=EmbeddingsResponse,
          responses=documented(400, 401, 404, 408, 413, 415, 500, 503, 504, model=OpenAIErrorResponse),
          summary="Embeddings of texts and images (data URIs), in OpenAI's format (errors too)",
          openapi_extra={"requestBody": {"required": True, "content": {
              "application/json": {"schema": EmbeddingsRequest.model_json_schema()}}}})
async def embeddings(request: Request) -> EmbeddingsResponse:
    service = _service(request)
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(f"send application/json ({{\"input\": [TEXT, ...]}}), not {media or 'no type'}")
    body = parse_json(EmbeddingsRequest, await request.body())
    items = body.texts
    images = [i for i, item in enumerate(items) if item.startswith(IMAGE_URI)]
    texts = sorted(set(range(len(items))) - set(images))
    found: dict[int, torch.Tensor] = {}
    tokens = 0
    if texts:
        text_vectors, tokens = await _embed_texts(service, [items[i] for i in texts])
        found.update(zip(texts, text_vectors))
    if images:  # submitted together: the engine batches them
        pixels = [await _image_pixels(image_bytes(items[i]), service) for i in images]
        vectors = await asyncio.gather(*(_infer(service, "embed", p, service.pool) for p in pixels))
        found.update(zip(images, (torch.as_tensor(v).float() for v in vectors)))
    if len({vector.shape[0] for vector in found.values()}) > 1:
        raise Unprocessable("the texts and images of this request embed to different sizes: send them apart")
    vectors = torch.stack([found[i] for i in range(len(items))])  # (N, D)
    if body.dimensions is not None:
        if body.dimensions > vectors.shape[1]:
            raise Unprocessable(f"dimensions {body.dimensions}: this model's embeddings have {vectors.shape[1]}",
                                param="dimensions")
        vectors = torch.nn.functional.normalize(vectors[:, :body.dimensions], dim=-1)  # truncated, unit length
    as_base64 = body.encoding_format == "base64"
    data = [Embedding(index=i, embedding=base64.b64encode(v.numpy().astype("<f4").tobytes()).decode() if as_base64
                      else v.tolist()) for i, v in enumerate(vectors)]
    return EmbeddingsResponse(data=data, model=service.model_id, usage=Usage(prompt_tokens=tokens, total_tokens=tokens))


@api.get("/models", response_model=ModelsResponse, responses=documented(401), summary="The served model")
async def models(request: Request) -> ModelsResponse:
    return await run_in_threadpool(_service(request).describe)


@api.get("/thumbnail/{hit_id}", response_class=Response, responses={
    200: {"content": {"image/jpeg": {}}, "description": "a JPEG of at most 256 x 256"}, **documented(401, 404, 422)},
    summary="Thumbnail of an indexed image, by the id a search hit gave")
async def thumbnail(request: Request, hit_id: str = Path(pattern=r"^[A-Za-z0-9_-]{1,128}$")) -> Response:
    service = _service(request)
    data = await run_in_threadpool(thumbnail_jpeg, _index(service), hit_id, max_pixels=service.engine.max_pixels)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


probes = APIRouter()


@probes.get("/healthz", response_model=Status, summary="The process is up")
async def healthz() -> Status:
    return Status(status="ok")


@probes.get("/readyz", response_model=Status, responses=documented(503), summary="The model is loaded and running")
async def readyz(request: Request) -> Status:
    if not _service(request).engine.ready:
        raise Busy("the model is not running (starting up or shutting down)")
    return Status(status="ready")


@probes.get("/metrics", response_class=Response, dependencies=[Depends(require_key)],
            responses={200: {"content": {"text/plain": {}}}, **documented(401)}, summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics
    return Response(registry.render(), media_type=registry.content_type)
