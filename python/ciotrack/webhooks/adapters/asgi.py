"""A plain ASGI app answering reporting webhooks (HTTP only; lifespan events are acknowledged)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ciotrack.webhooks.handler import Response, WebhookHandler

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def answer(handler: WebhookHandler, body: bytes, headers: Any) -> Response:
    """``handle()`` on the event loop (microseconds) unless the handler runs inline (user code)."""
    if handler.inline:
        return await asyncio.to_thread(handler.handle, body, headers)
    return handler.handle(body, headers)


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
            response = await answer(handler, await read_body(receive), scope["headers"])
        await send({"type": "http.response.start", "status": response.status, "headers": [
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in response.headers)]})
        await send({"type": "http.response.body", "body": response.body})

    return app
