"""Starlette and FastAPI: ``app.add_route(path, endpoint(handler), methods=["POST"])``, or
``routes=[route(handler)]`` when building a Starlette app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from ciotrack.webhooks.adapters.asgi import answer_request
from ciotrack.webhooks.adapters.wsgi import declared_length
from ciotrack.webhooks.handler import WebhookHandler


def endpoint(handler: WebhookHandler) -> Callable[[Any], Awaitable[Any]]:
    """An async Starlette endpoint (also valid for FastAPI's ``add_route``)."""
    from starlette.responses import Response

    async def customerio_webhook(request: Any) -> Any:
        response = await answer_request(handler, request.stream(),
                                        declared_length(request.headers.get("content-length")), request.headers)
        return Response(response.body, status_code=response.status, media_type=response.content_type,
                        headers=dict(response.headers))

    return customerio_webhook


def route(handler: WebhookHandler, path: str = "/webhooks/customerio") -> Any:
    """A ``starlette.routing.Route`` for POST ``path``."""
    from starlette.routing import Route

    return Route(path, endpoint(handler), methods=["POST"])
