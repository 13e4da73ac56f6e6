"""The one mapping from failures to OpenAI's error format and status codes.

Every error leaves the server as `{"error": {"message", "type", "param", "code"}}`:

| cause | status | type / code |
|---|---|---|
| bad input (missing field, wrong type, value out of range, prompt too long) | 400 | `invalid_request_error` |
| missing or wrong API key | 401 | `invalid_request_error` / `invalid_api_key` |
| unknown model, unknown route | 404 | `invalid_request_error` / `model_not_found` |
| body over the size limit | 413 | `invalid_request_error` / `request_too_large` |
| a bug or a failing model | 500 | `server_error` (the traceback goes to the log, not to the client) |

FastAPI answers a body that does not validate with 422; here it becomes a 400 that names the field, which is
what OpenAI's clients expect. A `DLNError` raised while handling a request was caused by its input (a chat
message without content, a model without a chat template) and is a 400 too.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dln.errors import DLNError

log = logging.getLogger("serving")


class OpenAIError(Exception):
    """An error with its HTTP status and OpenAI's error fields."""

    status_code = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param
        if code is not None:
            self.code = code


class BadRequestError(OpenAIError):
    status_code = 400
    type = "invalid_request_error"


class AuthenticationError(OpenAIError):
    status_code = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class NotFoundError(OpenAIError):
    status_code = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLargeError(OpenAIError):
    status_code = 413
    type = "invalid_request_error"
    code = "request_too_large"


def error_body(message: str, type_: str, param: str | None = None, code=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(err: OpenAIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status_code == 401 else None
    return JSONResponse(
        error_body(err.message, err.type, err.param, err.code),
        status_code=err.status_code,
        headers=headers,
    )


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """One readable line and the offending field from pydantic's error list."""
    if not errors:
        return "invalid request body", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}", None
    # loc is ("body", field, index/union-member, ...); a union member's name is noise for the user.
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    if not loc:
        return f"the request body must be a JSON object ({first['msg']})", None
    param = loc[0] if loc else None
    path = ".".join(p for p in loc if not _is_type_name(p)) or "body"
    message = f"{path}: {first['msg']}"
    if first.get("type") == "missing":
        message = f"missing required field: {path}"
    if len(errors) > 1 and first.get("type") != "missing":
        fields = {".".join(str(p) for p in e.get("loc", ())[1:2]) for e in errors}
        if len(fields) > 1:
            message += (
                f" (and {len(fields) - 1} more invalid field(s): {', '.join(sorted(fields - {param}))})"
            )
    return message, param


def _is_type_name(part: str) -> bool:
    # pydantic names union members after their type, e.g. "str", "list[int]", "function-after[...]".
    return part in {"str", "int", "float", "bool", "list", "dict"} or "[" in part


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, err: OpenAIError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(err.errors()))
        return error_response(BadRequestError(message, param=param))

    @app.exception_handler(DLNError)
    async def _dln_error(request: Request, err: DLNError) -> JSONResponse:
        return error_response(BadRequestError(str(err)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 404:
            return error_response(
                NotFoundError(f"no route {request.method} {request.url.path}", code="not_found")
            )
        status = err.status_code
        type_ = "invalid_request_error" if status < 500 else "server_error"
        return JSONResponse(error_body(str(err.detail), type_), status_code=status)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, err: Exception) -> JSONResponse:
        log.exception("internal error while serving %s %s", request.method, request.url.path)
        return error_response(
            OpenAIError(f"internal server error ({type(err).__name__}); see the server log")
        )
