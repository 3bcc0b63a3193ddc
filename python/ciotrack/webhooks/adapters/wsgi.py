"""A plain WSGI app answering reporting webhooks (mount it under any WSGI server or router)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ciotrack.webhooks.handler import Response, WebhookHandler

_REASONS = {200: "OK", 401: "Unauthorized", 405: "Method Not Allowed", 413: "Content Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}
_CHUNK = 64 * 1024

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def status_line(status: int) -> str:
    return f"{status} {_REASONS.get(status, 'Error')}"


def declared_length(value: str | None) -> int | None:
    """A ``Content-Length`` as an int; None when absent or not a number (the server's to refuse)."""
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def read_capped(read: Callable[[int], bytes], limit: int) -> bytes | None:
    """Everything ``read`` gives until it gives nothing, or None as soon as that passes ``limit`` bytes
    (the rest is left unread). For a body of unknown length: a chunked one."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = read(_CHUNK)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


def read_body(environ: dict[str, Any], limit: int) -> bytes | None:
    """The request body, or None when it is longer than ``limit`` bytes (then not read)."""
    stream = environ["wsgi.input"]
    length = declared_length(environ.get("CONTENT_LENGTH"))
    if length is not None:
        if length > limit:
            return None
        body: bytes = stream.read(length)
        return body
    if environ.get("wsgi.input_terminated"):
        # Chunked, from a server that ends the stream at the body's end (gunicorn, werkzeug).
        return read_capped(stream.read, limit)
    # No length and no terminated stream: reading on would block on a keep-alive socket (PEP 3333).
    return b""


def make_wsgi_app(handler: WebhookHandler) -> WSGIApp:
    """A WSGI callable: POST -> ``handler.handle(body, environ)``; other methods 405; a body over
    ``handler.max_body`` 413."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            response = Response(405, b'{"error":"POST only"}', headers=(("Allow", "POST"),))
        else:
            body = read_body(environ, handler.max_body)
            response = handler.too_large() if body is None else handler.handle(body, environ)
        start_response(status_line(response.status), [
            ("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
            *response.headers])
        return [response.body]

    return app
