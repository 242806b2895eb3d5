"""Errors of the OpenAI-compatible /v1/embeddings in OpenAI's shape, {"error": {"message", "type", "param", "code"}},
with 400 for every invalid request (OpenAI's API has no 422): the `openai` package's own client raises its own
errors (BadRequestError, NotFoundError, AuthenticationError, ...) carrying the message, the type and the field at
fault, whichever layer refused the request (validation, the route, the API key, the body limit). The other routes
keep vitkit's {"detail"}.

Run:  .venv/bin/python -m pytest tests/test_service_openai.py -q
"""

from __future__ import annotations

import base64

import pytest
from service_support import assert_error, image_bytes, load_digits, serve

from vitkit.service.routes import Limits

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.usefixtures("one_thread")

PICTURE = "data:image/png;base64," + base64.b64encode(image_bytes(0)).decode()


@pytest.fixture(scope="module")
def model():
    return load_digits()


def client_of(http, api_key: str = "unused"):
    return openai.OpenAI(base_url="http://testserver/v1", api_key=api_key, http_client=http, max_retries=0)


def refused(error, client, **request) -> dict:
    """The error body (OpenAI's "error" object) of an embeddings request the client raises `error` for."""
    with pytest.raises(error) as raised:
        client.embeddings.create(model="digits", encoding_format="float", **request)
    assert set(raised.value.body) == {"message", "type", "param", "code"}
    assert raised.value.body["message"] in raised.value.message  # what str(error) shows
    return raised.value.body


def test_the_openai_client_raises_its_own_errors_with_the_message(model):
    with serve(model) as http:
        client = client_of(http)
        assert refused(openai.BadRequestError, client, input=[PICTURE], dimensions=65) == {
            "message": "dimensions 65: this model's embeddings have 64", "type": "invalid_request_error",
            "param": "dimensions", "code": None}
        empty = refused(openai.BadRequestError, client, input=[])  # a validation error: 422 elsewhere
        assert "'input' holds no text" in empty["message"] and empty["param"] == "input"
        assert refused(openai.BadRequestError, client, input=[PICTURE], dimensions=0)["param"] == "dimensions"
        assert "not valid base64" in refused(openai.BadRequestError, client, input=["data:image/png;base64,@@"])[
            "message"]
        not_an_image = "data:image/png;base64," + base64.b64encode(b"hello").decode()
        assert "not an image" in refused(openai.BadRequestError, client, input=[not_an_image])["message"]
        no_text = refused(openai.NotFoundError, client, input=["a photo of a seven"])
        assert "no text tower" in no_text["message"] and no_text["type"] == "invalid_request_error"
        assert len(client.embeddings.create(model="digits", input=[PICTURE], encoding_format="float").data) == 1


def test_the_api_key_and_the_body_limit_answer_in_openais_shape_too(model):
    with serve(model, api_key="s3cret", limits=Limits(max_upload_bytes=8000)) as http:
        wrong = refused(openai.AuthenticationError, client_of(http, "wrong"), input=[PICTURE])
        assert wrong == {"message": "wrong API key", "type": "invalid_request_error", "param": None,
                         "code": "invalid_api_key"}
        client = client_of(http, "s3cret")
        big = "data:image/png;base64," + base64.b64encode(image_bytes(1, size=(64, 64))).decode()  # ~16 kB
        with pytest.raises(openai.APIStatusError) as raised:  # refused from its Content-Length, before any route
            client.embeddings.create(model="digits", input=[big], encoding_format="float")
        assert raised.value.status_code == 413 and "exceeds the limit of 8000 bytes" in raised.value.body["message"]
        raw = http.post("/v1/embeddings", content=b"x", headers={"Authorization": "Bearer s3cret"})
        assert raw.status_code == 415 and raw.json()["error"]["type"] == "invalid_request_error"
        assert "send application/json" in raw.json()["error"]["message"]
        assert_error(http.post("/v1/embed", content=b"x", headers={"Authorization": "Bearer wrong"}), 401,
                     "wrong API key")  # the other routes keep vitkit's {"detail"}
        assert_error(http.post("/v1/embed", content=b"x" * 9000, headers={"Authorization": "Bearer s3cret",
                                                                          "content-type": "image/png"}),
                     413, "exceeds the limit")
