"""The HTTP API of `vitkit serve` with the shipped digits model (TestClient): every endpoint gives what the
CLI's code path gives, and every error has its own status and a clear JSON message:
400 unparseable body, 401 API key, 404 no index / unknown id, 408 slow body, 413 bytes or pixels,
415 content type, 422 not an image, 503 queue full (Retry-After), 504 no answer in time; 500 only when the
model itself fails, and the server carries on.

Run:  .venv/bin/python -m pytest tests/test_service_api.py -q
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_support import (
    FakeIndex,
    Gated,
    assert_error,
    batches_of,
    bomb_png,
    image_bytes,
    load_digits,
    serve,
    upload,
    write_images,
)

from vitkit.api import Model
from vitkit.checkpoints.convert import Loaded
from vitkit.models.registry import arch
from vitkit.models.vit import VisionTransformer
from vitkit.service.app import create_app
from vitkit.service.engine import Engine
from vitkit.service.limits import BodyLimit
from vitkit.service.routes import Limits

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return load_digits()


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("indexed"), 6)


@pytest.fixture(scope="module")
def index(model, indexed):
    return FakeIndex(model, indexed, [f"picture {i}" for i in range(len(indexed))])


# -- what each endpoint answers ------------------------------------------------------------------------
def test_raw_image_bodies_are_accepted_and_other_types_refused(model):
    data = image_bytes(2, size=(40, 40))
    want = model.classify(data, top_k=3)
    with serve(model) as client:
        for media in ("image/png", "image/jpeg", "application/octet-stream"):  # curl --data-binary @photo
            answer = client.post("/v1/classify?top_k=3", content=data, headers={"Content-Type": media})
            assert answer.status_code == 200, answer.text
            assert [p["index"] for p in answer.json()["top_k"]] == [p.index for p in want]
        assert_error(client.post("/v1/classify", content=data, headers={"Content-Type": "text/plain"}), 415,
                     "image/jpeg, image/png")


def test_openai_client_embeds_images_with_dimensions_and_base64(model):
    """The `openai` package's own client against /v1/embeddings: images as data URIs, float and base64 (its
    default), `dimensions` truncating and renormalising; the vectors are the Python API's."""
    openai = pytest.importorskip("openai")
    pictures = [image_bytes(i, size=(48, 40)) for i in range(3)]
    uris = ["data:image/png;base64," + base64.b64encode(p).decode() for p in pictures]
    want = model.embed(pictures, pool="cls").numpy()  # (3, 64): the service's pool for this model
    with serve(model) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http)
        floats = client.embeddings.create(model="digits", input=uris, encoding_format="float")
        assert [d.index for d in floats.data] == [0, 1, 2] and floats.object == "list"
        assert np.abs(np.array([d.embedding for d in floats.data]) - want).max() <= 1e-5
        packed = client.embeddings.create(model="digits", input=uris[:1])  # the client asks for base64 itself
        assert np.abs(np.array(packed.data[0].embedding) - want[0]).max() <= 1e-5
        short = client.embeddings.create(model="digits", input=uris, dimensions=16, encoding_format="float")
        cut = want[:, :16] / np.linalg.norm(want[:, :16], axis=1, keepdims=True)
        assert np.abs(np.array([d.embedding for d in short.data]) - cut).max() <= 1e-5
        with pytest.raises(openai.BadRequestError) as err:
            client.embeddings.create(model="digits", input=uris[:1], dimensions=65, encoding_format="float")
        assert "this model's embeddings have 64" in err.value.message and err.value.param == "dimensions"
        with pytest.raises(openai.NotFoundError) as err:
            client.embeddings.create(model="digits", input=["a photo of a seven"], encoding_format="float")
        assert "no text tower" in err.value.message


def test_classify_gives_the_clis_answer_for_multipart_json_and_data_urls(model):
    data = image_bytes(1, size=(64, 48))
    want = model.classify(data, top_k=5)  # the Python API / CLI path on the same bytes
    b64 = base64.b64encode(data).decode()
    with serve(model) as client:
        answers = [client.post("/v1/classify", **upload(data)),
                   client.post("/v1/classify", json={"image": b64}),
                   client.post("/v1/classify", json={"image": f"data:image/png;base64,{b64}"})]
    for response in answers:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == model.source
        assert [p["index"] for p in body["top_k"]] == [p.index for p in want]
        assert [p["label"] for p in body["top_k"]] == [p.label for p in want]
        assert [p["score"] for p in body["top_k"]] == pytest.approx([p.score for p in want], abs=1e-5)


def test_top_k_is_honoured_and_bounded(model):
    with serve(model) as client:
        three = client.post("/v1/classify?top_k=3", **upload(image_bytes(2))).json()["top_k"]
        assert len(three) == 3 and three == sorted(three, key=lambda p: -p["score"])
        for bad in ("0", "101", "five"):
            assert_error(client.post(f"/v1/classify?top_k={bad}", **upload(image_bytes(2))), 422, r"query\.top_k")


def test_embed_gives_the_clis_vector(model):
    data = image_bytes(3)
    with serve(model) as client:
        cls = client.post("/v1/embed", **upload(data)).json()
    with serve(model, pool="mean") as client:
        mean = client.post("/v1/embed", **upload(data)).json()
    for body, pool in ((cls, "cls"), (mean, "mean")):
        assert body["pool"] == pool and body["dim"] == 64
        want = model.embed(data, pool=pool).numpy()  # the path of `vitkit embed`
        np.testing.assert_allclose(body["embedding"], want, atol=1e-5)


def test_search_finds_the_indexed_image_and_serves_its_thumbnail(model, index, indexed):
    with serve(model, index) as client:
        body = client.post("/v1/search?k=3", **upload(indexed[2].read_bytes())).json()
        assert body["indexed"] == len(indexed) and len(body["hits"]) == 3
        best = body["hits"][0]
        assert (best["root"], best["path"], best["label"]) == (indexed[2].parent.name, indexed[2].name, "picture 2")
        assert best["score"] == pytest.approx(1.0, abs=1e-4)
        assert [h["score"] for h in body["hits"]] == sorted((h["score"] for h in body["hits"]), reverse=True)
        thumb = client.get(best["thumbnail"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        image = Image.open(io.BytesIO(thumb.content))
        assert image.format == "JPEG" and image.size == (48, 48)


def test_models_describes_the_model_and_index(model, index):
    with serve(model, index) as client:
        body = client.get("/v1/models").json()
    (info,) = body["models"]
    assert info["id"] == model.source and info["num_classes"] == 10 and info["input_size"] == 32
    assert info["embedding_dim"] == 64 and info["pool"] == "cls" and info["labels_sample"][:3] == ["0", "1", "2"]
    assert body["index"] == {"count": 6, "model": model.source, "pool": "cls", "dim": 64, "text_search": False}


def test_a_pooling_the_model_cannot_give_is_refused_at_startup(model):
    for pool in ("tokens", "max"):
        with pytest.raises(ValueError, match="one vector per image: pool must be one of cls, mean, cls_mean, prelogits"):
            create_app(Engine(model), pool=pool)


def test_probes(model):
    client = serve(model)
    assert_error(client.get("/readyz"), 503, "not running")  # no lifespan yet: the engine is not started
    assert client.get("/healthz").json() == {"status": "ok"}
    with client:
        assert client.get("/readyz").json() == {"status": "ready"}


def test_a_backbone_without_head_embeds_but_does_not_classify(model):
    backbone = Model(Loaded(VisionTransformer(arch("vitkit_digits_patch4_32").config.replace(num_classes=0)),
                            model.spec, "digits backbone", "vitkit"))
    with serve(backbone) as client:
        assert_error(client.post("/v1/classify", **upload(image_bytes(0))), 404, "no classifier head")
        assert client.post("/v1/embed", **upload(image_bytes(0))).json()["dim"] == 64


# -- errors -----------------------------------------------------------------------------------------------
def test_400_for_bodies_that_do_not_parse(model):
    with serve(model) as client:
        assert_error(client.post("/v1/classify", content=b"{not json", headers={"content-type": "application/json"}),
                     400, "not valid JSON")
        assert_error(client.post("/v1/classify", json={"image": "@@not base64@@"}), 400, "not valid base64")
        assert_error(client.post("/v1/classify", content=b"--x\r\n", headers={"content-type": "multipart/form-data"}),
                     400, "boundary")


def test_401_without_the_api_key(model):
    with serve(model, api_key="s3cret") as client:
        for path in ("/v1/models", "/metrics"):
            assert_error(client.get(path), 401, "needs an API key")
            assert client.get(path).headers["www-authenticate"] == "Bearer"
        assert_error(client.post("/v1/classify", **upload(image_bytes(0))), 401, "needs an API key")
        assert_error(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "wrong API key")
        assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.post("/v1/classify", headers={"X-API-Key": "s3cret"}, **upload(image_bytes(0))).status_code == 200
        for open_path in ("/healthz", "/readyz", "/"):  # probes and the page need no key
            assert client.get(open_path).status_code == 200


def test_404_for_search_without_index_and_unknown_thumbnails(model, indexed, tmp_path):
    with serve(model) as client:
        assert_error(client.post("/v1/search", **upload(image_bytes(0))), 404, "no image index")
        assert_error(client.get("/v1/thumbnail/abc"), 404, "no image index")
    moved = write_images(tmp_path / "moved", 2)
    index = FakeIndex(model, moved, ["a", "b"])
    moved[1].unlink()  # indexed, then deleted from disk
    with serve(model, index) as client:
        assert_error(client.get(f"/v1/thumbnail/{'0' * 64}"), 404, "no indexed image has the id")
        assert_error(client.get(f"/v1/thumbnail/{index.ids[1]}"), 404, "can no longer be read")
        assert client.get(f"/v1/thumbnail/{index.ids[0]}").status_code == 200


def test_nothing_a_client_sends_names_a_file(model, index):
    with serve(model, index) as client:
        for name in ("..%5C..%5Cwin.ini", "~root", "a.png", "%2E%2E"):  # an id has only letters, digits, - and _
            assert_error(client.get(f"/v1/thumbnail/{name}"), 422, r"path\.hit_id")
        for path in ("/v1/thumbnail/..%2F..%2Fetc%2Fpasswd", "/v1/thumbnail/../../etc/passwd", "/static/../app.py",
                     "/static/engine.py", "/etc/passwd"):
            assert client.get(path).status_code == 404


def test_408_when_the_body_arrives_too_slowly():
    async def app(scope, receive, send):  # an app that reads the whole body
        while (await receive()).get("more_body"):
            pass

    async def trickle():  # one chunk, then nothing more for longer than the limit
        await asyncio.sleep(0 if trickle.sent else 5)
        trickle.sent = True
        return {"type": "http.request", "body": b"x", "more_body": True}

    trickle.sent = False
    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "headers": [(b"content-type", b"application/json")]}
    limited = BodyLimit(app, max_bytes=1000, timeout_s=0.2)
    from vitkit.service.errors import RequestTimeout
    with pytest.raises(RequestTimeout, match="did not arrive within 0.2 s"):
        asyncio.run(limited(scope, trickle, send))


def test_413_for_too_many_bytes_declared_or_streamed(model):
    big = image_bytes(0, size=(200, 200))  # ~120 kB of noise PNG
    with serve(model, limits=Limits(max_upload_bytes=50_000)) as client:
        assert_error(client.post("/v1/classify", **upload(big)), 413, "exceeds the limit of 50000 bytes")
        chunks = (big[i:i + 8192] for i in range(0, len(big), 8192))  # no Content-Length: counted as it streams
        assert_error(client.post("/v1/classify", content=chunks, headers={"content-type": "application/json"}),
                     413, "exceeds the limit")
        assert client.post("/v1/classify", **upload(image_bytes(0))).status_code == 200


def test_413_for_too_many_pixels(model):
    with serve(model) as client:
        assert_error(client.post("/v1/classify", **upload(bomb_png(30_000, 30_000))), 413,
                     r"image too large: 30000x30000 = 900\.0 MP exceeds the 64\.0 MP limit")
    with serve(model, engine={"max_pixels": 1000}) as client:
        assert_error(client.post("/v1/embed", **upload(image_bytes(0, size=(40, 30)))), 413, "image too large: 40x30")


def test_415_for_other_content_types(model):
    with serve(model) as client:
        assert_error(client.post("/v1/classify", content=b"x", headers={"content-type": "text/plain"}), 415,
                     "multipart/form-data .* or as application/json")
        assert_error(client.post("/v1/embed", content=b"x"), 415, "without Content-Type")


def test_422_for_uploads_that_are_not_images(model):
    png = image_bytes(0)
    with serve(model) as client:
        for data, reason in ((b"hello", "not an image"), (png[: len(png) // 2], "truncated or corrupt"),
                             (b"", "empty file")):
            assert_error(client.post("/v1/classify", **upload(data)), 422, reason)
        assert_error(client.post("/v1/classify", json={"image": base64.b64encode(b"GIF89a").decode()}), 422,
                     "truncated or corrupt|not an image")
        assert_error(client.post("/v1/classify", files={"other": ("a.png", png)}), 422, "no field 'file'")
        assert_error(client.post("/v1/classify", data={"file": "text"}, files={"x": ("x", b"")}), 422,
                     "must be a file upload")
        assert_error(client.post("/v1/embed", json={"picture": "x"}), 422, r"body\.image: Field required")
        assert_error(client.post("/v1/classify", json={"picture": "x"}), 422, "exactly one of 'image' and 'images'")


def test_503_with_retry_after_when_the_queue_is_full(model):
    gated = Gated(model)
    engine = Engine(gated, max_batch=1, queue_size=1, threads=1)
    with TestClient(create_app(engine)) as client:
        pixels = engine.prepare(image_bytes(0))
        held = gated.hold(engine, pixels)  # the worker takes it and waits at the gate
        queued = engine.submit("classify", pixels, 1)  # fills the queue
        response = client.post("/v1/classify", **upload(image_bytes(0)))
        assert_error(response, 503, "already waiting for the model: retry shortly")
        assert response.headers["retry-after"] == "1"
        gated.gate.set()
        assert held.result(timeout=30) and queued.result(timeout=30)


def test_504_when_the_model_does_not_answer_in_time_and_the_request_is_dropped(model):
    gated = Gated(model)
    engine = Engine(gated, max_batch=1, threads=1)
    sizes = batches_of(engine)
    with TestClient(create_app(engine, limits=Limits(timeout_s=0.3))) as client:
        held = gated.hold(engine, engine.prepare(image_bytes(0)))
        assert_error(client.post("/v1/classify", **upload(image_bytes(1))), 504, "did not answer within 0.3 s")
        gated.gate.set()
        held.result(timeout=30)
        assert client.post("/v1/classify", **upload(image_bytes(2))).status_code == 200
    assert sizes == [1, 1]  # the held request and the last one: the timed-out request never ran


def test_500_only_when_the_model_itself_fails_and_the_server_carries_on(model):
    class Failing(Gated):
        def __call__(self, pixels):
            if len(self.calls) > 0:  # after the warm-up batch
                raise RuntimeError("out of memory")
            return super().__call__(pixels)

    with TestClient(create_app(Engine(Failing(model), threads=1))) as client:
        assert_error(client.post("/v1/classify", **upload(image_bytes(0))), 500,
                     "the model failed on a batch of 1: out of memory")
        assert client.post("/v1/embed", **upload(image_bytes(0))).status_code == 200  # still serving


# -- the rest of the surface ------------------------------------------------------------------------------
def test_cors_is_off_by_default_and_on_for_given_origins(model):
    preflight = {"Origin": "http://elsewhere.example", "Access-Control-Request-Method": "POST"}
    with serve(model) as client:
        assert "access-control-allow-origin" not in client.options("/v1/classify", headers=preflight).headers
        assert "access-control-allow-origin" not in client.get("/v1/models", headers=preflight).headers
    with serve(model, cors_origins=("http://elsewhere.example",)) as client:
        allowed = client.options("/v1/classify", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "http://elsewhere.example"


def test_metrics_count_requests_batches_and_queue(model):
    with serve(model) as client:
        client.post("/v1/classify", **upload(image_bytes(0)))
        client.post("/v1/classify", **upload(image_bytes(1)))
        client.post("/v1/classify", **upload(b"nope"))
        client.get("/v1/thumbnail/abc")
        text = client.get("/metrics").text
    assert 'vitkit_requests_total{route="/v1/classify",status="200"} 2.0' in text
    assert 'vitkit_requests_total{route="/v1/classify",status="422"} 1.0' in text
    assert 'vitkit_requests_total{route="/v1/thumbnail/{hit_id}",status="404"} 1.0' in text  # the template
    assert "vitkit_batch_size_count 2.0" in text and "vitkit_queue_depth 0.0" in text
    assert 'vitkit_request_seconds_count{route="/v1/classify"} 3.0' in text


def test_the_page_is_served_from_the_package_with_no_cdn(model):
    with serve(model) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        for asset, media in (("/static/app.js", "text/javascript"), ("/static/style.css", "text/css")):
            response = client.get(asset)
            assert response.status_code == 200 and response.headers["content-type"].startswith(media)
            assert asset in page.text
            assert not re.search(r"https?://", response.text), f"{asset} loads something from elsewhere"
        assert not re.search(r"(src|href)=\"https?://", page.text)
        assert client.get("/docs").status_code == 404  # FastAPI's docs page would load Swagger UI from a CDN


def test_openapi_documents_every_body_form_and_every_error(model):
    with serve(model) as client:
        schema = client.get("/openapi.json").json()
    classify = schema["paths"]["/v1/classify"]["post"]
    assert set(classify["requestBody"]["content"]) == {"image/*", "multipart/form-data", "application/json"}
    assert {"200", "400", "401", "404", "408", "413", "415", "422", "500", "503", "504"} <= set(classify["responses"])
    assert set(classify["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]) == {"file", "files"}
    assert {"image", "images"} <= set(classify["requestBody"]["content"]["application/json"]["schema"]["properties"])
    embeddings = schema["paths"]["/v1/embeddings"]["post"]["responses"]
    assert "422" not in embeddings and all(embeddings[s]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/OpenAIErrorResponse") for s in ("400", "401", "404", "413"))
    assert set(schema["paths"]) >= {"/v1/classify", "/v1/embed", "/v1/search", "/v1/models",
                                    "/v1/thumbnail/{hit_id}", "/healthz", "/readyz", "/metrics"}


# -- with the real image index ----------------------------------------------------------------------------
def test_search_with_a_real_image_index(model, indexed, tmp_path):
    from vitkit.index import ImageIndex

    folder = tmp_path / "photos"
    for path in indexed:
        (folder / ("odd" if int(path.stem[3:]) % 2 else "even")).mkdir(parents=True, exist_ok=True)
        (folder / ("odd" if int(path.stem[3:]) % 2 else "even") / path.name).write_bytes(path.read_bytes())
    index = ImageIndex.create(tmp_path / "db", model)
    index.add([str(folder)], model, class_folders=True)
    with serve(model, ImageIndex.open(tmp_path / "db")) as client:
        assert client.get("/v1/models").json()["index"]["count"] == len(indexed)
        body = client.post("/v1/search?k=2", **upload(indexed[3].read_bytes())).json()
        best = body["hits"][0]
        assert (best["root"], best["path"], best["label"]) == ("photos", f"odd/{indexed[3].name}", "odd")
        assert best["score"] == pytest.approx(1.0, abs=1e-4)
        assert Image.open(io.BytesIO(client.get(best["thumbnail"]).content)).size == (48, 48)
        assert_error(client.get("/v1/thumbnail/" + "f" * 64), 404, "no indexed image")


def test_an_index_of_another_model_is_refused(model, tmp_path):
    from vitkit.index import ImageIndex, IndexMismatch

    other = Model(Loaded(VisionTransformer(arch("vitkit_digits_patch4_32").config), model.spec, "other", "vitkit"))
    index = ImageIndex.create(tmp_path / "db", other)
    with pytest.raises(IndexMismatch, match="incomparable vectors"):
        create_app(Engine(model), index)
