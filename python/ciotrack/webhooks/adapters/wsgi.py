"""A plain WSGI app answering reporting webhooks (mount it under any WSGI server or router)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ciotrack.webhooks.handler import Response, WebhookHandler

_REASONS = {200: "OK", 401: "Unauthorized", 405: "Method Not Allowed", 500: "Internal Server Error",
            503: "Service Unavailable"}

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def status_line(status: int) -> str:
    return f"{status} {_REASONS.get(status, 'Error')}"


def read_body(environ: dict[str, Any]) -> bytes:
    length = environ.get("CONTENT_LENGTH")
    stream = environ["wsgi.input"]
    if length:
        body: bytes = stream.read(int(length))
        return body
    if environ.get("wsgi.input_terminated"):
        # Chunked, from a server that ends the stream at the body's end (gunicorn, werkzeug).
        rest: bytes = stream.read()
        return rest
    # No length and no terminated stream: reading on would block on a keep-alive socket (PEP 3333).
    return b""


def make_wsgi_app(handler: WebhookHandler) -> WSGIApp:
    """A WSGI callable: POST -> ``handler.handle(body, environ)``; other methods 405."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            response = Response(405, b'{"error":"POST only"}', headers=(("Allow", "POST"),))
        else:
            response = handler.handle(read_body(environ), environ)
        start_response(status_line(response.status), [
            ("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
            *response.headers])
        return [response.body]

    return app
