"""API keys and request-size limits, as plain ASGI middleware (so they also cover unknown routes
and run before a body is read)."""

from __future__ import annotations

import hmac
import json
import os
from typing import Any, Iterable

from starlette.exceptions import HTTPException

ENV_KEYS = "EXPERIENTIAL_API_KEYS"
OPEN_PATHS = frozenset({"/health"})


def resolve_api_keys(api_keys: str | Iterable[str] | None) -> list[str]:
    """Keys from the argument, else from ``$EXPERIENTIAL_API_KEYS`` (comma-separated). An empty
    list means no authentication."""
    if api_keys is None:
        api_keys = os.environ.get(ENV_KEYS, "")
    if isinstance(api_keys, str):
        api_keys = api_keys.split(",")
    return [k.strip() for k in api_keys if k and k.strip()]


def error_body(message: str, type_: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "code": code}}).encode()


async def _send_error(send: Any, status: int, message: str, type_: str, code: str,
                      extra_headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = error_body(message, type_, code)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *extra_headers]})
    await send({"type": "http.response.body", "body": body})


class APIKeyMiddleware:
    """Every path except ``/health`` needs ``Authorization: Bearer <key>`` when keys are set."""

    def __init__(self, app: Any, keys: list[str]):
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        token = token.strip()
        ok = scheme.lower() == b"bearer" and token and any(
            hmac.compare_digest(token, k) for k in self.keys)
        if not ok:
            message = ("missing API key: send 'Authorization: Bearer <key>'" if not header
                       else "invalid API key")
            await _send_error(send, 401, message, "authentication_error", "invalid_api_key",
                              [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)


class _TooLarge(HTTPException):
    """Raised while the body is read; an HTTPException so FastAPI's body parsing passes it on
    (any other exception there becomes a generic 400) and the app's handler renders the 413."""

    def __init__(self, message: str):
        super().__init__(status_code=413, detail=message)


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: by its Content-Length before reading, or while reading
    a chunked body."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = (f"request body too large: the limit is {self.max_bytes} bytes")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_bytes
            except ValueError:
                too_big = False
            if too_big:
                await _send_error(send, 413, message, "invalid_request_error", "body_too_large")
                return
        seen = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(message)
            return msg

        async def tracking_send(msg: Any) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_error(send, 413, message, "invalid_request_error", "body_too_large")
