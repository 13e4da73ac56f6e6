"""The one mapping from failures to OpenAI's error format and status codes.

Every error leaves the server as `{"error": {"message", "type", "param", "code"}}`:

| cause | status | type / code |
|---|---|---|
| bad input (missing field, wrong type, value out of range, prompt too long) | 400 | `invalid_request_error` |
| missing or wrong API key | 401 | `invalid_request_error` / `invalid_api_key` |
| unknown model, unknown route | 404 | `invalid_request_error` / `model_not_found` |
| body over the size limit | 413 | `invalid_request_error` / `request_too_large` |
| a method the route does not take | 405 | `invalid_request_error` / `method_not_allowed`, with `Allow` |
| a bug or a failing model | 500 | `server_error` (the traceback goes to the log, not to the client) |

FastAPI answers a body that does not validate with 422; here it becomes a 400 that names the field, which is
what OpenAI's clients expect. A `DLNError` raised while handling a request was caused by its input (a chat
message without content, a model without a chat template) and is a 400 too.

`as_openai_error` is that mapping, for any exception; the HTTP exception handlers and the error event of a
stream that has already begun (`serving_base.stream_error`) both use it, so a failure is reported with the
same type and code whichever way it reaches the client.
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

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, headers=None
    ) -> None:
        super().__init__(message)
        self.message, self.param = message, param
        self.headers: dict[str, str] = dict(headers or {})  # e.g. the `Allow` of a 405
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


def error_body(err: OpenAIError) -> dict:
    """OpenAI's error object for `err`."""
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


def error_headers(err: OpenAIError) -> dict[str, str]:
    """The headers an error response carries: its own (`Allow`), and the ones its status needs."""
    headers = dict(err.headers)
    if err.status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if err.status_code == 413:
        headers["Connection"] = "close"  # the rest of the body is not read
    return headers


def as_openai_error(exc: BaseException) -> OpenAIError:
    """The one mapping of a failure to the error the client sees (see the table above)."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, RequestValidationError):
        message, param = validation_message(list(exc.errors()))
        return BadRequestError(message, param=param)
    if isinstance(exc, DLNError):
        return BadRequestError(str(exc))
    if isinstance(exc, StarletteHTTPException):
        return http_error(exc)
    return OpenAIError(f"internal server error ({type(exc).__name__}); see the server log")


def http_error(exc: StarletteHTTPException) -> OpenAIError:
    """Starlette's own errors (unknown route, wrong method) in OpenAI's format."""
    if exc.status_code == 404:
        return NotFoundError(str(exc.detail), code="not_found")
    code = "method_not_allowed" if exc.status_code == 405 else None
    err = (BadRequestError if exc.status_code < 500 else OpenAIError)(
        str(exc.detail), code=code, headers=exc.headers
    )
    err.status_code = exc.status_code
    return err


def error_response(err: OpenAIError) -> JSONResponse:
    return JSONResponse(error_body(err), status_code=err.status_code, headers=error_headers(err))


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
    loc = [p for p in loc if not _is_type_name(p)] or loc
    param = loc[0] if loc else None
    path = ".".join(loc) or "body"
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
    # A model of a union body (`TokenizeChatRequest`) is named in CamelCase; fields are snake_case.
    return part in {"str", "int", "float", "bool", "list", "dict"} or "[" in part or part[:1].isupper()


def install_error_handlers(app: FastAPI) -> None:
    """Every failure of a route leaves through `as_openai_error`; internal ones are logged with the route."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, StarletteHTTPException) and exc.status_code == 404:
            exc = NotFoundError(f"no route {request.method} {request.url.path}", code="not_found")
        err = as_openai_error(exc)
        if err.status_code >= 500 and err is not exc:
            log.error("internal error while serving %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(err)

    for kind in (OpenAIError, RequestValidationError, DLNError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, handle)
