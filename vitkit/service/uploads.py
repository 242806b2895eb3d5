"""The image bytes of a POST: the raw body (Content-Type image/* or application/octet-stream), multipart/form-data
with the file in field `file`, or JSON {"image": base64} (a search may send JSON {"text": "..."} instead).
Anything else is refused with the status that says why: 415 (another content type), 400 (a body that does
not parse), 422 (a body that parses but holds no image field). Size and time limits are `limits.BodyLimit`'s.

Try it:  curl --data-binary @cat.jpg -H "Content-Type: image/jpeg" localhost:8000/v1/classify
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from vitkit.service.errors import BadRequest, Unprocessable, UnsupportedMediaType
from vitkit.service.schemas import ImageRequest, SearchRequest

# the OpenAPI requestBody of every route that takes an image
IMAGE_BODY = {"requestBody": {"required": True, "content": {
    "image/*": {"schema": {"type": "string", "format": "binary", "description": "the image file itself"}},
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary", "description": "the image file"}}}},
    "application/json": {"schema": ImageRequest.model_json_schema()},
}}}


# /v1/search: the same, or JSON {"text": "..."}
SEARCH_BODY = {"requestBody": {"required": True, "content": {
    **IMAGE_BODY["requestBody"]["content"], "application/json": {"schema": SearchRequest.model_json_schema()}}}}


async def read_search(request: Request) -> bytes | str:
    """A search's query: the image bytes (as read_image), or the text of a JSON {"text": ...} body."""
    if request.headers.get("content-type", "").split(";", 1)[0].strip().lower() != "application/json":
        return await read_image(request)
    payload = parse_json(SearchRequest, await request.body())
    return payload.text if payload.text is not None else image_bytes(payload.image)


async def read_image(request: Request) -> bytes:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "multipart/form-data":
        return await _from_form(request)
    if media == "application/json":
        return await _from_json(request)
    if media.startswith("image/") or media == "application/octet-stream":  # curl --data-binary @photo.jpg
        return await request.body()
    raise UnsupportedMediaType(f"send the image as the body (Content-Type: image/jpeg, image/png, ...), as "
                               f"multipart/form-data (field 'file') or as application/json ({{\"image\": BASE64}}), "
                               f"not {media or 'a body without Content-Type'}")


async def _from_form(request: Request) -> bytes:
    async with request.form(max_files=1, max_fields=16) as form:  # malformed multipart: Starlette answers 400
        upload = form.get("file")
        if upload is None:
            raise Unprocessable("the multipart body has no field 'file': send the image as file=@IMAGE")
        if not isinstance(upload, UploadFile):
            raise Unprocessable("multipart field 'file' must be a file upload (with a filename), not a text field")
        return await upload.read()


async def _from_json(request: Request) -> bytes:
    return image_bytes(parse_json(ImageRequest, await request.body()).image)


def parse_json(schema, body: bytes):
    """`body` validated as `schema`: 400 for JSON that does not parse, 422 (field details) for the rest."""
    try:
        return schema.model_validate_json(body)
    except ValidationError as err:
        if any(e["type"] == "json_invalid" for e in err.errors()):
            raise BadRequest(f"the body is not valid JSON: {err.errors()[0]['msg']}") from None
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in err.errors()]) from None


def image_bytes(image: str) -> bytes:
    """Base64 (or a data URI) -> the image file's bytes; 400 when it is not base64."""
    try:
        return ImageRequest(image=image).image_bytes()
    except ValueError as err:
        raise BadRequest(str(err)) from None
