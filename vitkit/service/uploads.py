"""The image bytes of a POST: the raw body (Content-Type image/* or application/octet-stream), multipart/form-data
with the file in field `file`, or JSON {"image": base64} (a search may send JSON {"text": "..."} instead; a
classification several images: multipart field `files`, repeated, or JSON {"images": [base64, ...]}).
Anything else is refused with the status that says why: 415 (another content type), 400 (a body that does
not parse), 422 (a body that parses but holds no image field, or more than MAX_IMAGES). Size and time limits
are `limits.BodyLimit`'s.

Try it:  curl --data-binary @cat.jpg -H "Content-Type: image/jpeg" localhost:8000/v1/classify
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from vitkit.service.errors import BadRequest, Unprocessable, UnsupportedMediaType
from vitkit.service.schemas import MAX_IMAGES, ClassifyRequest, ImageRequest, SearchRequest

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

# /v1/classify: the same, or several images (multipart field "files", JSON {"images": [...]})
CLASSIFY_BODY = {"requestBody": {"required": True, "content": {
    **IMAGE_BODY["requestBody"]["content"],
    "multipart/form-data": {"schema": {
        "type": "object", "oneOf": [{"required": ["file"]}, {"required": ["files"]}],
        "properties": {"file": {"type": "string", "format": "binary", "description": "the image file"},
                       "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
                                 "maxItems": MAX_IMAGES, "description": "several image files: one result each"}}}},
    "application/json": {"schema": ClassifyRequest.model_json_schema()}}}}


async def read_search(request: Request) -> bytes | str:
    """A search's query: the image bytes (as read_image), or the text of a JSON {"text": ...} body."""
    if _media(request) != "application/json":
        return await read_image(request)
    payload = parse_json(SearchRequest, await request.body())
    return payload.text if payload.text is not None else image_bytes(payload.image)


async def read_classify(request: Request) -> bytes | list[bytes | str]:
    """One image's bytes (as read_image), or a list of several: the files of multipart field 'files', or the
    base64 texts of JSON {"images": [...]}, each turned into bytes by `item_bytes` on its own (so that one bad
    item fails alone)."""
    media = _media(request)
    if media == "multipart/form-data":
        return await _from_form(request, batch=True)
    if media == "application/json":
        payload = parse_json(ClassifyRequest, await request.body())
        return image_bytes(payload.image) if payload.image is not None else payload.images
    return await read_image(request)


def item_bytes(item: bytes | str) -> bytes:
    """An item of read_classify's list -> the image file's bytes; BadRequest when its text is not base64."""
    return item if isinstance(item, bytes) else image_bytes(item)


async def read_image(request: Request) -> bytes:
    media = _media(request)
    if media == "multipart/form-data":
        return await _from_form(request)
    if media == "application/json":
        return await _from_json(request)
    if media.startswith("image/") or media == "application/octet-stream":  # curl --data-binary @photo.jpg
        return await request.body()
    raise UnsupportedMediaType(f"send the image as the body (Content-Type: image/jpeg, image/png, ...), as "
                               f"multipart/form-data (field 'file') or as application/json ({{\"image\": BASE64}}), "
                               f"not {media or 'a body without Content-Type'}")


def _media(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _from_form(request: Request, batch: bool = False) -> bytes | list[bytes]:
    """The file of field 'file'; with `batch`, or the files of field 'files' (at most MAX_IMAGES)."""
    try:
        async with request.form(max_files=MAX_IMAGES if batch else 1, max_fields=16) as form:
            return await _form_files(form, batch)
    except HTTPException as err:  # malformed multipart: Starlette's 400, which says why
        if batch and str(err.detail).startswith("Too many files"):
            raise Unprocessable(f"more than {MAX_IMAGES} images in one request: send them in several") from None
        raise


async def _form_files(form, batch: bool) -> bytes | list[bytes]:
    fields = {name: form.getlist(name) for name in (("file", "files") if batch else ("file",)) if name in form}
    if not fields:
        raise Unprocessable("the multipart body has no field 'file': send the image as file=@IMAGE"
                            + (" (several: files=@IMAGE1 files=@IMAGE2 ...)" if batch else ""))
    if len(fields) > 1:
        raise Unprocessable("send one image in field 'file', or several in field 'files', not both")
    if len(fields.get("file", ())) > 1:
        raise Unprocessable("several files in field 'file': send several images in field 'files'")
    ((name, uploads),) = fields.items()
    if not all(isinstance(upload, UploadFile) for upload in uploads):
        raise Unprocessable(f"multipart field '{name}' must be a file upload (with a filename), not a text field")
    files = [await upload.read() for upload in uploads]
    return files[0] if name == "file" else files


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
