"""Every error the service answers, each with its own HTTP status and a plain-words message, as JSON
{"detail": "...", "errors": [...] for validation errors}. Routes raise these for the cases they know; an
unexpected exception is a JSON 500 too (logged with its traceback), never a text page.

The OpenAI-compatible route (/v1/embeddings) answers in OpenAI's shape instead, {"error": {"message", "type",
"param", "code"}}, and with 400 where the others say 422 (OpenAI's API has no 422), so that OpenAI's clients raise
their own errors (openai.BadRequestError, AuthenticationError, ...) with the message.

Try it:  python -m pytest tests/test_service_api.py -q -k error
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from vitkit.service.schemas import ErrorResponse

OPENAI_PATHS = frozenset({"/v1/embeddings"})  # the routes whose errors take OpenAI's shape


def error_response(path: str, status: int, message: str, headers: dict[str, str] | None = None, *,
                   param: str | None = None, errors: list[dict] | None = None) -> JSONResponse:
    """The JSON answer of an error on the route at `path`: vitkit's {"detail"} or, on OPENAI_PATHS, OpenAI's."""
    if path in OPENAI_PATHS:
        kind = "server_error" if status >= 500 else "invalid_request_error"
        code = "invalid_api_key" if status == 401 else None
        return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                            400 if status == 422 else status, headers=headers)
    return JSONResponse({"detail": message} if errors is None else {"detail": message, "errors": errors}, status,
                        headers=headers)


class ServiceError(Exception):
    status = 400

    def __init__(self, detail: str, headers: dict[str, str] | None = None, param: str | None = None):
        super().__init__(detail)
        self.detail, self.headers, self.param = detail, headers, param  # param: the request field at fault

    def response(self, path: str) -> JSONResponse:
        return error_response(path, self.status, self.detail, self.headers, param=self.param)


class BadRequest(ServiceError):
    status = 400  # the body cannot be parsed (bad JSON, bad base64, malformed multipart)


class Unauthorized(ServiceError):
    status = 401

    def __init__(self, detail: str):
        super().__init__(detail, {"WWW-Authenticate": "Bearer"})


class NotFound(ServiceError):
    status = 404


class RequestTimeout(ServiceError):
    status = 408  # the body did not arrive in time


class PayloadTooLarge(ServiceError):
    status = 413  # too many bytes, or too many pixels


class UnsupportedMediaType(ServiceError):
    status = 415


class Unprocessable(ServiceError):
    status = 422  # well-formed request, but not a usable image


class Busy(ServiceError):
    status = 503

    def __init__(self, detail: str, retry_after_s: int = 1):
        super().__init__(detail, {"Retry-After": str(retry_after_s)})


class ModelError(ServiceError):
    status = 500  # the model itself raised on this request's batch (the message says how)


class ResultTimeout(ServiceError):
    status = 504  # the model's answer did not come in time


# the statuses each kind of route can answer, for the OpenAPI schema
def documented(*statuses: int, model=ErrorResponse) -> dict[int, dict]:
    return {status: {"model": model} for status in statuses}


def install(app: FastAPI) -> None:
    """JSON bodies for ServiceError, validation errors (422) and the framework's own errors (404, 405, ...)."""

    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return exc.response(request.scope["path"])

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder([{k: e[k] for k in ("type", "loc", "msg")} for e in exc.errors()])
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        field = [str(e["loc"][1]) for e in errors if len(e["loc"]) > 1][:1]  # loc: ("body" | "query", NAME, ...)
        return error_response(request.scope["path"], 422, detail, param=field[0] if field else None, errors=errors)

    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(request.scope["path"], exc.status_code, str(exc.detail), exc.headers)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logging.getLogger("vitkit.service").error("unexpected error", exc_info=exc)
        return error_response(request.scope["path"], 500, f"internal error: {type(exc).__name__}: {exc}")

    app.add_exception_handler(Exception, unexpected)
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
