"""Optional API key: when the app has one, every /v1 route and /metrics need it, as
`Authorization: Bearer KEY` or `X-API-Key: KEY` (compared in constant time); 401 otherwise. Health probes
and the web page stay open (the page asks for the key and sends it with its requests).

Try it:  vitkit serve --model vitkit/assets/digits-vit --api-key secret & \
           curl -H "Authorization: Bearer secret" localhost:8000/v1/models
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from vitkit.service.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="the server's API key, when it was started with one")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the same key, as a header")


async def require_key(request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
                      header: Annotated[str | None, Depends(_header)]) -> None:
    expected: str | None = request.app.state.service.api_key
    if expected is None:
        return
    given = bearer.credentials if bearer else header
    if given is None:
        raise Unauthorized("this server needs an API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("wrong API key")
