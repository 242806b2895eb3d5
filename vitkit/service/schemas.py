"""The service's request and response bodies, as pydantic models: they make the OpenAPI schema precise
(what `schemathesis` tests against, and what a client generator reads).

Try it:  python -c "from vitkit.service.schemas import ClassifyResponse; print(ClassifyResponse.model_json_schema())"
"""

from __future__ import annotations

import base64
import binascii

from pydantic import BaseModel, Field

MAX_TOP_K = 100
MAX_K = 100


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


class Label(BaseModel):
    index: int = Field(description="class index in the model's head")
    label: str
    score: float = Field(ge=0.0, le=1.0, description="softmax probability")


class ClassifyResponse(BaseModel):
    model: str
    top_k: list[Label] = Field(description="best first")


class EmbedResponse(BaseModel):
    model: str
    pool: str = Field(description="how tokens became one vector: cls, mean, cls_mean or prelogits")
    dim: int
    embedding: list[float] = Field(description="L2-normalised")


class SearchHit(BaseModel):
    id: str = Field(description="the indexed image's id; GET /v1/thumbnail/{id} gives a thumbnail of it")
    path: str = Field(description="the indexed file, as the index records it")
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


class IndexInfo(BaseModel):
    count: int
    model: str
    pool: str
    dim: int


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    index: IndexInfo | None = Field(description="the image index /v1/search looks in, if one is loaded")


class Status(BaseModel):
    status: str


class ErrorResponse(BaseModel):
    detail: str = Field(description="what went wrong, in plain words")
    errors: list[dict] | None = Field(default=None, description="per-field details of a validation error")
