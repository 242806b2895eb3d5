"""Several images in one /v1/classify request (multipart field `files`, JSON `images` of base64 or data URIs): one
result per image in the request's order, each equal to what the single-image route answers for that image; an
image that cannot be read gets its own error and the others their labels; the count and the bytes are bounded.

Run:  .venv/bin/python -m pytest tests/test_service_batch.py -q
"""

from __future__ import annotations

import base64

import pytest
from service_support import assert_error, bomb_png, image_bytes, load_digits, serve, upload

from vitkit.service.routes import Limits
from vitkit.service.schemas import MAX_IMAGES

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return load_digits()


def files(*images: bytes) -> dict:
    return {"files": [("files", (f"image{i}.png", data, "application/octet-stream")) for i, data in enumerate(images)]}


def assert_same_labels(got: list[dict], want: list[dict]) -> None:
    assert [(p["index"], p["label"]) for p in got] == [(p["index"], p["label"]) for p in want]
    assert [p["score"] for p in got] == pytest.approx([p["score"] for p in want], abs=1e-5)


def test_a_batch_answers_what_the_single_image_route_answers_one_by_one(model):
    pictures = [image_bytes(seed, size=(40 + 8 * seed, 30)) for seed in range(5)]
    encoded = [base64.b64encode(p).decode() for p in pictures]
    with serve(model) as client:
        singles = [client.post("/v1/classify?top_k=3", **upload(p)).json()["top_k"] for p in pictures]
        by_form = client.post("/v1/classify?top_k=3", **files(*pictures))
        by_json = client.post("/v1/classify?top_k=3", json={"images": [
            uri if i % 2 else f"data:image/png;base64,{uri}" for i, uri in enumerate(encoded)]})
    for answer in (by_form, by_json):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == model.source and [r["index"] for r in body["results"]] == list(range(5))
        for result, single, picture in zip(body["results"], singles, pictures):
            assert result["error"] is None
            assert_same_labels(result["top_k"], single)
            want = model.classify(picture, top_k=3)  # the Python API too
            assert [p["index"] for p in result["top_k"]] == [p.index for p in want]


def test_a_bad_image_gets_its_own_error_and_the_others_their_labels(model):
    good = [image_bytes(7), image_bytes(8)]
    with serve(model, engine={"max_pixels": 100_000}) as client:
        want = [client.post("/v1/classify?top_k=2", **upload(p)).json()["top_k"] for p in good]
        by_form = client.post("/v1/classify?top_k=2", **files(good[0], b"hello", bomb_png(1000, 1000), good[1]))
        by_json = client.post("/v1/classify?top_k=2", json={"images": [
            base64.b64encode(good[0]).decode(), "@@not base64@@", base64.b64encode(b"").decode(),
            base64.b64encode(good[1]).decode()]})
    form_results, json_results = by_form.json()["results"], by_json.json()["results"]
    assert by_form.status_code == by_json.status_code == 200
    for results in (form_results, json_results):
        assert [r["index"] for r in results] == [0, 1, 2, 3]
        assert results[0]["error"] is None and results[3]["error"] is None
        assert_same_labels(results[0]["top_k"], want[0])
        assert_same_labels(results[3]["top_k"], want[1])
        assert results[1]["top_k"] == results[2]["top_k"] == []
    assert "not an image" in form_results[1]["error"] and "image too large: 1000x1000" in form_results[2]["error"]
    assert "not valid base64" in json_results[1]["error"] and "empty file" in json_results[2]["error"]


def test_the_single_image_forms_answer_as_before(model):
    data = image_bytes(3)
    with serve(model) as client:
        for answer in (client.post("/v1/classify", **upload(data)),
                       client.post("/v1/classify", json={"image": base64.b64encode(data).decode()}),
                       client.post("/v1/classify", content=data, headers={"content-type": "image/png"})):
            assert answer.status_code == 200 and set(answer.json()) == {"model", "top_k"}
        one = client.post("/v1/classify", **files(data)).json()  # field 'files' with one file: a batch of one
        assert [r["index"] for r in one["results"]] == [0]


def test_a_batch_is_bounded_in_images_and_bytes(model):
    small = image_bytes(0, size=(8, 8))
    with serve(model, limits=Limits(max_upload_bytes=60_000)) as client:
        assert_error(client.post("/v1/classify", **files(*[small] * (MAX_IMAGES + 1))), 422,
                     f"more than {MAX_IMAGES} images in one request")
        assert_error(client.post("/v1/classify", **files(*[small] * (MAX_IMAGES + 5))), 422,
                     f"more than {MAX_IMAGES} images")
        as_text = base64.b64encode(small).decode()
        assert_error(client.post("/v1/classify", json={"images": [as_text] * (MAX_IMAGES + 1)}), 422,
                     f"body.images: List should have at most {MAX_IMAGES} items")
        assert client.post("/v1/classify", json={"images": [as_text] * MAX_IMAGES}).status_code == 200
        noise = image_bytes(1, size=(100, 100))  # ~30 kB each: two fit the limit alone, three do not
        assert client.post("/v1/classify", **files(noise)).status_code == 200
        assert_error(client.post("/v1/classify", **files(noise, noise, noise)), 413, "exceeds the limit of 60000 bytes")
        assert_error(client.post("/v1/classify", json={"images": []}), 422, "body.images: List should have at least 1")
        assert_error(client.post("/v1/classify", json={"image": as_text, "images": [as_text]}), 422,
                     "exactly one of 'image' and 'images'")
        both = {"files": [("file", ("a.png", small)), ("files", ("b.png", small))]}
        assert_error(client.post("/v1/classify", **both), 422, "not both")
        twice = {"files": [("file", ("a.png", small)), ("file", ("b.png", small))]}
        assert_error(client.post("/v1/classify", **twice), 422, "several images in field 'files'")
        assert_error(client.post("/v1/embed", **twice), 400, "Too many files")  # one image only, as before
