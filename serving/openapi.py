"""The OpenAPI document (`/openapi.json`) as the server behaves: what client generators, gateways and
fuzzers read.

FastAPI's document is corrected where it does not describe this server: its 422 (a body that does not
validate is a 400 here, `errors`) goes, every error status an operation can return is declared with
OpenAI's error object (routes declare theirs; the body-size limit adds 413 to every POST, an API key adds
401 and the bearer scheme to every route but the public ones, and any route can fail with 500), and the
streaming operations declare `text/event-stream` next to JSON. Tested by a bounded schemathesis run
(`tests/serving/test_schemathesis.py`).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from serving.protocol import ChatCompletionChunk, CompletionResponse, ErrorResponse

ERROR_DESCRIPTIONS = {
    400: "bad input (wrong type, value out of range, prompt too long); names the field in `param`",
    401: "missing or wrong API key",
    404: "unknown model",
    413: "request body over the server's limit",
    500: "internal error (the details are in the server log)",
}
#: operations that stream server-sent events with `"stream": true`, and the model of each event's data
STREAMING = {"/v1/completions": CompletionResponse, "/v1/chat/completions": ChatCompletionChunk}


def errors(*statuses: int) -> dict:
    """FastAPI `responses` for the given error statuses, each with OpenAI's error object."""
    return {s: {"model": ErrorResponse, "description": ERROR_DESCRIPTIONS[s]} for s in statuses}


def install_openapi(app: FastAPI, *, api_key: bool, public_paths: frozenset[str]) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = corrected(
                get_openapi(title=app.title, version=app.version, routes=app.routes), api_key, public_paths
            )
        return app.openapi_schema

    app.openapi = openapi


def corrected(schema: dict, api_key: bool, public_paths: frozenset[str]) -> dict:
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    error = {"content": {"application/json": {"schema": error_ref}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            extra = [500] + ([413] if method == "post" else [])
            if api_key and path not in public_paths:
                extra.append(401)
                operation["security"] = [{"bearer": []}]
            for status in extra:
                responses.setdefault(str(status), {"description": ERROR_DESCRIPTIONS[status], **error})
            if path in STREAMING:
                content = responses["200"].setdefault("content", {})
                content["text/event-stream"] = event_stream(schema, STREAMING[path], error_ref)
    components = schema.setdefault("components", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(unused, None)
    if api_key:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return schema


def event_stream(schema: dict, model, error_ref: dict) -> dict:
    """A server-sent-event stream (OpenAPI 3.2's `itemSchema`): each event's data is a JSON `model` chunk, an
    error object (an error after the stream began), or the final `[DONE]`."""
    defs = schema.setdefault("components", {}).setdefault("schemas", {})
    chunk = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
    defs.update(chunk.pop("$defs", {}))
    defs.setdefault(model.__name__, chunk)
    payload = {"anyOf": [{"$ref": f"#/components/schemas/{model.__name__}"}, error_ref]}
    data = {
        "anyOf": [
            {"const": "[DONE]"},
            {"type": "string", "contentMediaType": "application/json", "contentSchema": payload},
        ]
    }
    return {"itemSchema": {"type": "object", "properties": {"data": data}, "required": ["data"]}}
