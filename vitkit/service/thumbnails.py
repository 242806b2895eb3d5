"""A JPEG thumbnail of an indexed image, found by its id through the index's own rows: the client names
an id, never a path, so nothing it sends can select a file outside what the operator indexed, and no answer
names the file's path on the server.

Try it:  curl -o t.jpg localhost:8000/v1/thumbnail/<id of a /v1/search hit>
"""

from __future__ import annotations

import io

from vitkit.data.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, read_error
from vitkit.service.errors import NotFound

THUMBNAIL_SIDE = 256


def thumbnail_jpeg(index, hit_id: str, side: int = THUMBNAIL_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """JPEG bytes of the indexed image `hit_id`, at most side x side; NotFound when the id is unknown or
    the file can no longer be read."""
    row = index.get(hit_id)  # None for any string that is not a stored id
    if row is None:
        raise NotFound(f"no indexed image has the id {hit_id!r}")
    try:
        image = decode_image(row["path"], max_pixels=max_pixels, draft_size=side)
    except (OSError, ImageDecodeError) as err:
        raise NotFound(f"the indexed image {hit_id} can no longer be read: {read_error(err)}") from None
    image.thumbnail((side, side))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()
