"""The service's request and response bodies, as pydantic models: they make the OpenAPI schema precise
(what `schemathesis` tests against, and what a client generator reads).

Try it:  python -c "from vitkit.service.schemas import ClassifyResponse; print(ClassifyResponse.model_json_schema())"
"""

from __future__ import annotations

import base64
import binascii

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from vitkit.limits import MAX_TEXT_CHARS

MAX_TOP_K = 100
MAX_K = 100
MAX_INPUTS = 2048  # texts in one /v1/embeddings request (OpenAI's limit too)
MAX_IMAGES = 32  # images in one /v1/classify request (their bytes together within the body limit)


class ImageRequest(BaseModel):
    """The JSON form of an upload: the encoded image file (JPEG, PNG, WebP, ...) as base64."""

    image: str = Field(description="the image file's bytes in base64; a data URL (data:image/png;base64,...) "
                                   "is accepted too", examples=["iVBORw0KGgo..."],
                       json_schema_extra={"contentEncoding": "base64"})

    def image_bytes(self) -> bytes:
        """The decoded bytes; ValueError when `image` is not base64."""
        text = self.image.split(",", 1)[1] if self.image.startswith("data:") else self.image
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as err:
            raise ValueError(f"field 'image' is not valid base64: {err}") from err


class ClassifyRequest(BaseModel):
    """The JSON form of /v1/classify: one image (as ImageRequest), or several, each answered in its own result."""

    image: str | None = Field(default=None, description="the image file's bytes in base64 (or a data URL)",
                              json_schema_extra={"contentEncoding": "base64"})
    images: list[str] | None = Field(default=None, min_length=1, max_length=MAX_IMAGES,
                                     description="several images, each in base64 or a data URL "
                                     "(data:image/png;base64,...), as the inputs of /v1/embeddings")

    @model_validator(mode="after")
    def _one_form(self):
        if (self.image is None) == (self.images is None):
            raise ValueError("give exactly one of 'image' and 'images'")
        return self


class SearchRequest(BaseModel):
    """The JSON form of a search: an image (base64, as ImageRequest) or a text query (an index built with an
    image-text model: CLIP, SigLIP)."""

    image: str | None = Field(default=None, description="the image file's bytes in base64 (or a data URL)",
                              json_schema_extra={"contentEncoding": "base64"})
    text: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT_CHARS,
                             description="a text query, e.g. 'a dog on a beach'", examples=["a dog on a beach"])

    @model_validator(mode="after")
    def _one_query(self):
        if (self.image is None) == (self.text is None):
            raise ValueError("give exactly one of 'image' and 'text'")
        return self


IMAGE_URI = "data:image/"  # an `input` of /v1/embeddings that starts so is an image (a data URI), not a text


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request: texts and images in, vectors out. A text needs an image-text model's text tower;
    an image is a data URI (data:image/jpeg;base64,...), embedded by the image tower with the service's pooling."""

    input: str | list[str] = Field(description="one input or a list: texts, and images as data URIs "
                                   "(data:image/png;base64,...)", examples=["a dog on a beach"])
    model: str | None = Field(default=None, description="ignored beyond a check: this server serves one model")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="float: lists of numbers; base64: little-endian float32 bytes, as OpenAI's")
    dimensions: int | None = Field(default=None, ge=1, description="keep the first N dimensions and L2-normalise "
                                   "again (at most the model's dimension)")
    user: str | None = Field(default=None, max_length=256, description="accepted and ignored")

    @field_validator("input")
    @classmethod
    def _bounded(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts:
            raise ValueError("'input' holds no text")
        if len(texts) > MAX_INPUTS:
            raise ValueError(f"'input' holds {len(texts)} texts, more than {MAX_INPUTS}")
        if any(len(t) > MAX_TEXT_CHARS and not t.startswith(IMAGE_URI) for t in texts):
            raise ValueError(f"a text of 'input' is longer than {MAX_TEXT_CHARS} characters (images: send them as "
                             "data URIs, data:image/...;base64,...)")
        return value

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="L2-normalised; a base64 string with encoding_format base64")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class Label(BaseModel):
    index: int = Field(description="class index in the model's head")
    label: str
    score: float = Field(ge=0.0, le=1.0, description="softmax probability (zero-shot SigLIP: sigmoid)")


class ClassifyResponse(BaseModel):
    model: str
    top_k: list[Label] = Field(description="best first")


class ClassifyResult(BaseModel):
    index: int = Field(description="the image's position in the request")
    top_k: list[Label] = Field(description="best first; empty when the image failed")
    error: str | None = Field(description="why this image could not be classified (the others are)")


class ClassifyBatchResponse(BaseModel):
    model: str
    results: list[ClassifyResult] = Field(description="one per image, in the request's order")


class EmbedResponse(BaseModel):
    model: str
    pool: str = Field(description="how tokens became one vector: cls, mean, cls_mean or prelogits")
    dim: int
    embedding: list[float] = Field(description="L2-normalised")


class SearchHit(BaseModel):
    id: str = Field(description="the indexed image's id; GET /v1/thumbnail/{id} gives a thumbnail of it")
    root: str = Field(description="the name of the indexed folder the file lies in (the server's paths stay private)")
    path: str = Field(description="the file's path below that folder, '/'-separated")
    label: str | None
    score: float = Field(description="cosine similarity")
    thumbnail: str = Field(description="URL path of the hit's thumbnail")


class SearchResponse(BaseModel):
    model: str
    indexed: int = Field(description="images in the index")
    hits: list[SearchHit] = Field(description="most similar first")


class ModelInfo(BaseModel):
    id: str
    family: str
    input_size: int
    num_classes: int
    embedding_dim: int
    pool: str = Field(description="pooling of /v1/embed")
    preprocess: dict
    labels_sample: list[str] = Field(description="the first few class names")
    text: bool = Field(default=False, description="a text tower is loaded: /v1/embeddings takes texts")


class IndexInfo(BaseModel):
    count: int
    model: str
    pool: str
    dim: int
    text_search: bool = Field(default=False, description="/v1/search takes text queries")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    index: IndexInfo | None = Field(description="the image index /v1/search looks in, if one is loaded")


class Status(BaseModel):
    status: str


class ErrorResponse(BaseModel):
    detail: str = Field(description="what went wrong, in plain words")
    errors: list[dict] | None = Field(default=None, description="per-field details of a validation error")


class OpenAIError(BaseModel):
    message: str = Field(description="what went wrong, in plain words")
    type: Literal["invalid_request_error", "server_error"]
    param: str | None = Field(description="the request field at fault, when one is")
    code: str | None = Field(description="invalid_api_key for a missing or wrong API key")


class OpenAIErrorResponse(BaseModel):
    """The error body of the OpenAI-compatible route, in OpenAI's shape."""

    error: OpenAIError
