"""Every error the service answers, each with its own HTTP status and a plain-words message, as JSON
{"detail": "...", "errors": [...] for validation errors}. Routes raise these for the cases they know; an
unexpected exception is a JSON 500 too (logged with its traceback), never a text page.

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


class ServiceError(Exception):
    status = 400

    def __init__(self, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail, self.headers = detail, headers

    def response(self) -> JSONResponse:
        return JSONResponse({"detail": self.detail}, self.status, headers=self.headers)


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
def documented(*statuses: int) -> dict[int, dict]:
    return {status: {"model": ErrorResponse} for status in statuses}


def install(app: FastAPI) -> None:
    """JSON bodies for ServiceError, validation errors (422) and the framework's own errors (404, 405, ...)."""

    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return exc.response()

    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder([{k: e[k] for k in ("type", "loc", "msg")} for e in exc.errors()])
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        return JSONResponse({"detail": detail, "errors": errors}, 422)

    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, exc.status_code, headers=exc.headers)

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logging.getLogger("vitkit.service").error("unexpected error", exc_info=exc)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    app.add_exception_handler(Exception, unexpected)
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
