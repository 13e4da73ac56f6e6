"""ASGI middleware that answers before any route runs: the API key check and the body size limit.

Both run ahead of FastAPI's body parsing, so an unauthenticated client cannot make the server read (or parse)
a large body, and an oversized body is refused from its Content-Length or, without one (chunked uploads),
as soon as the bytes read pass the limit.
"""

from __future__ import annotations

import hmac
import json

from serving.errors import AuthenticationError, OpenAIError, PayloadTooLargeError, error_body, error_headers

#: paths open without a key
PUBLIC_PATHS = frozenset({"/health", "/docs", "/openapi.json"})


async def send_error(send, err: OpenAIError) -> None:
    body = json.dumps(error_body(err)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error_headers(err).items()]
    await send({"type": "http.response.start", "status": err.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class APIKeyMiddleware:
    """`Authorization: Bearer <key>` on every path but `/health`, compared in constant time.

    The key is never logged or echoed; a missing and a wrong key get the same 401.
    """

    def __init__(self, app, api_key: str) -> None:
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
            return await send_error(
                send,
                AuthenticationError("missing or incorrect API key: send it as 'Authorization: Bearer <key>'"),
            )
        return await self.app(scope, receive, send)


DRAIN_LIMIT = 64 << 20


async def drain(receive, limit: int) -> None:
    """Read and drop up to `limit` body bytes before refusing: a server that answers and closes while the
    client is still sending makes the client see a reset connection instead of the 413."""
    read = 0
    while read < limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413; the body is read here and replayed to the app."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = PayloadTooLargeError(
            f"the request body is larger than this server's limit of {self.max_bytes} bytes"
        )
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared > self.max_bytes:
                await drain(receive, limit=declared if declared <= DRAIN_LIMIT else 0)
                return await send_error(send, too_large)
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                return await send_error(send, too_large)
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # later calls wait for the disconnect (streaming responses listen for it)

        return await self.app(scope, replay, send)
