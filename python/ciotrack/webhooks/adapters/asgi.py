"""A plain ASGI app answering reporting webhooks (HTTP only; lifespan events are acknowledged)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ciotrack.webhooks.adapters.wsgi import declared_length
from ciotrack.webhooks.handler import Response, WebhookHandler

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def body_chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The pieces of an ASGI request's body, as they arrive."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def read_capped(chunks: AsyncIterator[bytes], limit: int) -> bytes | None:
    """The body, or None as soon as it passes ``limit`` bytes (the rest is left unread)."""
    pieces: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            return None
        pieces.append(chunk)
    return b"".join(pieces)


def header_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The ``Content-Length`` among ASGI header pairs, if any."""
    for name, value in headers:
        if name.lower() == b"content-length":
            return declared_length(value.decode("latin-1"))
    return None


async def answer(handler: WebhookHandler, body: bytes, headers: Any) -> Response:
    """``handle()`` on the event loop when it takes microseconds (verify, in-memory dedup, a hand-off to
    the thread pool); in a thread when it may wait on I/O or run user code (``handler.may_block``:
    inline handling, a ``dispatch`` such as an ``XADD``, a Redis dedup store), so one slow call never
    stops the loop's other requests."""
    if handler.may_block:
        return await asyncio.to_thread(handler.handle, body, headers)
    return handler.handle(body, headers)


async def answer_request(handler: WebhookHandler, chunks: AsyncIterator[bytes], length: int | None,
                         headers: Any) -> Response:
    """The answer to a POST whose body comes as ``chunks``: 413 without reading a body that is (or
    grows) over ``handler.max_body``."""
    if length is not None and length > handler.max_body:
        return handler.too_large()
    body = await read_capped(chunks, handler.max_body)
    if body is None:
        return handler.too_large()
    return await answer(handler, body, headers)


def make_asgi_app(handler: WebhookHandler) -> ASGIApp:
    """An ASGI callable: POST -> ``handler.handle(body, scope['headers'])``; other methods 405."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            response = Response(405, b'{"error":"POST only"}', headers=(("Allow", "POST"),))
        else:
            headers = scope["headers"]
            response = await answer_request(handler, body_chunks(receive), header_length(headers), headers)
        await send({"type": "http.response.start", "status": response.status, "headers": [
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in response.headers)]})
        await send({"type": "http.response.body", "body": response.body})

    return app
