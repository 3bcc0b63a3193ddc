"""Serving the webhook adapters over real sockets for the tests: each framework under its own server
(Flask and plain WSGI under werkzeug or wsgiref, Django under wsgiref, FastAPI, Starlette and plain ASGI
under uvicorn), and a client that can send a header twice."""

from __future__ import annotations

import http.client
import json
import threading
import time
import types
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from webhook_helpers import free_port, wait_port

from ciotrack.webhooks import WebhookHandler

PATH = "/webhooks/customerio"
UVICORN_THREAD = "test-uvicorn-event-loop"
ADAPTERS = ("wsgi", "flask", "django", "fastapi", "starlette", "asgi")
"""Every adapter, named as :func:`serve_adapter` takes them."""


def request(url: str, method: str = "POST", body: bytes = b"",
            headers: list[tuple[str, str]] | None = None) -> tuple[int, dict[str, Any]]:
    """One request with headers as a list, so a header can be sent twice."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.putrequest(method, parts.path)
        for name, value in headers or []:
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw) if raw else {}
        except ValueError:
            return response.status, {"raw": raw.decode(errors="replace")}
    finally:
        conn.close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


@contextmanager
def serve_wsgi(app: Callable[..., Any]) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def serve_werkzeug(app: Callable[..., Any]) -> Iterator[str]:
    """werkzeug's server: it ends a chunked body's stream (``wsgi.input_terminated``), wsgiref does not."""
    from werkzeug.serving import make_server as werkzeug_server

    server = werkzeug_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@contextmanager
def serve_uvicorn(app: Any) -> Iterator[str]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=UVICORN_THREAD, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def django_app(handler: WebhookHandler) -> Any:
    """A Django WSGI application whose only URL is the adapter's view at ``PATH``."""
    import django
    from django.conf import settings
    from django.urls import path

    from ciotrack.webhooks.adapters.django import view

    urlconf = types.ModuleType(f"ciotrack_webhook_test_urls_{id(handler)}")
    urlconf.urlpatterns = [path(PATH.lstrip("/"), view(handler))]  # type: ignore[attr-defined]
    if not settings.configured:
        settings.configure(DEBUG=False, SECRET_KEY="test-only", ALLOWED_HOSTS=["127.0.0.1"], ROOT_URLCONF=urlconf,
                           MIDDLEWARE=["django.middleware.common.CommonMiddleware",
                                       "django.middleware.csrf.CsrfViewMiddleware"],
                           INSTALLED_APPS=[], USE_TZ=True)
        django.setup()
    else:
        settings.ROOT_URLCONF = urlconf
        from django.urls import clear_url_caches

        clear_url_caches()
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


@contextmanager
def serve_adapter(kind: str, handler: WebhookHandler) -> Iterator[str]:
    """The adapter ``kind`` (one of ``ADAPTERS``) serving ``handler``; yields the webhook's URL."""
    if kind == "wsgi":
        from ciotrack.webhooks.adapters.wsgi import make_wsgi_app

        with serve_werkzeug(make_wsgi_app(handler)) as url:
            yield url + PATH
    elif kind == "flask":
        import flask

        from ciotrack.webhooks.adapters.flask import blueprint

        app = flask.Flask("webhook-test")
        app.register_blueprint(blueprint(handler))
        with serve_werkzeug(app) as url:
            yield url + PATH
    elif kind == "django":
        with serve_wsgi(django_app(handler)) as url:
            yield url + PATH
    elif kind in ("fastapi", "starlette"):
        from ciotrack.webhooks.adapters.starlette import endpoint, route

        if kind == "fastapi":
            import fastapi

            app = fastapi.FastAPI()
            app.add_route(PATH, endpoint(handler), methods=["POST"])
        else:
            from starlette.applications import Starlette

            app = Starlette(routes=[route(handler, PATH)])
        with serve_uvicorn(app) as url:
            yield url + PATH
    elif kind == "asgi":
        from ciotrack.webhooks.adapters.asgi import make_asgi_app

        with serve_uvicorn(make_asgi_app(handler)) as url:
            yield url + PATH
    else:
        raise ValueError(kind)
