"""Bounds on what a request body can cost: its size and how long it may take to arrive.

An ASGI middleware, so it sees the body as it streams in, before FastAPI reads or parses
it: a body over its limit is refused with 413 naming the limit (a ``Content-Length`` over
it at once, a chunked body once it passes it), and a body that has not finished
arriving ``GENQ_BODY_TIMEOUT_S`` after the request began is cut off with 408, so a slow
client cannot hold a worker thread. Uploads (``/v1/files``) have their own, larger
limit (``GENQ_MAX_UPLOAD_BYTES`` and the envelope around the file); every other body
``GENQ_MAX_BODY_BYTES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.settings import get_settings

__all__ = ["BodyLimits"]

#: Room for the multipart envelope around an uploaded file.
MULTIPART_SLACK_BYTES = 64 * 1024


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BodyLimits:
    """Refuse bodies over their size limit (413) or slower than the body timeout (408)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE"):
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        upload = scope["path"].startswith("/v1/files")
        if upload:
            stated = settings.max_upload_bytes
            limit, name = stated + MULTIPART_SLACK_BYTES, "GENQ_MAX_UPLOAD_BYTES"
        else:
            stated = limit = settings.max_body_bytes
            name = "GENQ_MAX_BODY_BYTES"
        too_large = f"the request body is over the limit of {stated} bytes ({name})"
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, 413, too_large)
            return
        deadline = time.monotonic() + settings.body_timeout_s
        seen = 0
        refused: _Refused | None = None

        async def limited() -> Message:
            nonlocal seen, refused
            try:
                # asyncio's own timeout: a third of anyio's cancel scope, on every request
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                    message = await receive()
            except TimeoutError:
                timeout = settings.body_timeout_s
                refused = _Refused(
                    408, f"the request body took over {timeout:g} s to arrive (GENQ_BODY_TIMEOUT_S)"
                )
                raise refused from None
            seen += len(message.get("body", b""))
            if seen > limit:
                refused = _Refused(413, too_large)
                raise refused
            return message

        async def guarded(message: Message) -> None:
            # Once the body is refused, whatever the app makes of the broken body (a
            # "could not parse" 400, say) is dropped: the client gets the refusal.
            if refused is None:
                await send(message)

        with contextlib.suppress(_Refused):
            await self.app(scope, limited, guarded)
        if refused is not None:
            await _refuse(send, refused.status, refused.message)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, status: int, message: str) -> None:
    body: dict[str, Any] = {
        "detail": message,
        "error": {"message": message, "type": "invalid_request_error"},
    }
    data = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(data)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
