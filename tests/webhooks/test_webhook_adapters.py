"""Each adapter served by its real framework over a real socket: Flask under werkzeug, Django under
wsgiref, FastAPI and Starlette under uvicorn, the plain WSGI and ASGI callables."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator

import pytest
from webhook_helpers import SECRET, signed
from webhook_servers import PATH, UVICORN_THREAD, django_app, request, serve_uvicorn, serve_wsgi

from ciotrack.webhooks import EmailEvent, Event, WebhookHandler
from ciotrack.webhooks.samples import event_payload


def exercise(url: str, handler: WebhookHandler, received: list[Event]) -> None:
    """The behaviour every adapter must show, over its socket."""
    payload = event_payload("email", "opened", customer_id="adapter-1")
    body, headers = signed(payload)
    status, answer = request(url, body=body, headers=list(headers.items()))
    assert (status, answer) == (200, {"ok": True})
    assert handler.drain(5)
    assert len(received) == 1 and isinstance(received[0], EmailEvent)
    assert received[0].event_id == payload["event_id"] and received[0].customer_id == "adapter-1"

    # Customer.io's retry of the same event, signed again: answered 200, not handled twice.
    body, headers = signed(payload)
    assert request(url, body=body, headers=list(headers.items())) == (200, {"ok": True, "duplicate": True})

    # Lower-case header names, as HTTP/2 proxies send them.
    body, headers = signed(event_payload("sms", "delivered"))
    assert request(url, body=body, headers=[(k.lower(), v) for k, v in headers.items()])[0] == 200

    forged_body, forged_headers = signed(event_payload(), secret="not-the-key")
    assert request(url, body=forged_body, headers=list(forged_headers.items())) == (401, {"error": "bad_signature"})

    stale_body, stale_headers = signed(event_payload(), timestamp=int(time.time()) - 3600)
    assert request(url, body=stale_body, headers=list(stale_headers.items())) == (
        401, {"error": "timestamp_too_old"})

    body, headers = signed(event_payload())
    assert request(url, body=body, headers=[("X-CIO-Timestamp", headers["X-CIO-Timestamp"])]) == (
        401, {"error": "missing_signature"})
    doubled = list(headers.items()) + [("X-CIO-Signature", headers["X-CIO-Signature"])]
    assert request(url, body=body, headers=doubled) == (401, {"error": "duplicate_header"})

    assert request(url, method="GET")[0] == 405
    assert handler.drain(5)
    assert len(received) == 2
    assert handler.stats()["rejected"] == 4


@pytest.fixture
def webhook_handler() -> Iterator[tuple[WebhookHandler, list[Event]]]:
    received: list[Event] = []
    handler = WebhookHandler(SECRET, received.append)
    yield handler, received
    handler.close(5)


def test_plain_wsgi_under_wsgiref(webhook_handler: tuple[WebhookHandler, list[Event]]) -> None:
    from ciotrack.webhooks.adapters.wsgi import make_wsgi_app

    handler, received = webhook_handler
    with serve_wsgi(make_wsgi_app(handler)) as url:
        exercise(url + PATH, handler, received)


def test_flask_blueprint_under_werkzeug(webhook_handler: tuple[WebhookHandler, list[Event]]) -> None:
    import flask
    from werkzeug.serving import make_server as werkzeug_server

    from ciotrack.webhooks.adapters.flask import blueprint

    handler, received = webhook_handler
    app = flask.Flask("webhook-test")
    app.register_blueprint(blueprint(handler))
    server = werkzeug_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        exercise(f"http://127.0.0.1:{server.server_port}{PATH}", handler, received)
    finally:
        server.shutdown()


def test_django_view_under_wsgiref(webhook_handler: tuple[WebhookHandler, list[Event]]) -> None:
    handler, received = webhook_handler
    with serve_wsgi(django_app(handler)) as url:
        exercise(url + PATH, handler, received)


def test_fastapi_route_under_uvicorn(webhook_handler: tuple[WebhookHandler, list[Event]]) -> None:
    import fastapi

    from ciotrack.webhooks.adapters.starlette import endpoint

    handler, received = webhook_handler
    app = fastapi.FastAPI()
    app.add_route(PATH, endpoint(handler), methods=["POST"])
    with serve_uvicorn(app) as url:
        exercise(url + PATH, handler, received)


def test_starlette_route_under_uvicorn(webhook_handler: tuple[WebhookHandler, list[Event]]) -> None:
    from starlette.applications import Starlette

    from ciotrack.webhooks.adapters.starlette import route

    handler, received = webhook_handler
    with serve_uvicorn(Starlette(routes=[route(handler, PATH)])) as url:
        exercise(url + PATH, handler, received)


def test_plain_asgi_under_uvicorn(webhook_handler: tuple[WebhookHandler, list[Event]]) -> None:
    from ciotrack.webhooks.adapters.asgi import make_asgi_app

    handler, received = webhook_handler
    with serve_uvicorn(make_asgi_app(handler)) as url:
        exercise(url + PATH, handler, received)


def test_asgi_inline_handler_runs_off_the_event_loop_and_can_ask_for_a_retry() -> None:
    from ciotrack.webhooks.adapters.asgi import make_asgi_app

    threads: list[str] = []

    def slow_and_failing(event: Event) -> None:
        threads.append(threading.current_thread().name)
        raise RuntimeError("downstream down")

    handler = WebhookHandler(SECRET, slow_and_failing, inline=True, retries=1, retry_backoff=0.01)
    with serve_uvicorn(make_asgi_app(handler)) as url:
        body, headers = signed(event_payload())
        assert request(url + PATH, body=body, headers=list(headers.items())) == (500, {"error": "handler failed"})
    # asyncio.to_thread: the default executor's threads, never the event loop's own.
    assert len(threads) == 2 and UVICORN_THREAD not in threads, threads


def test_plain_wsgi_reads_a_chunked_body_from_a_terminated_stream(
        webhook_handler: tuple[WebhookHandler, list[Event]]) -> None:
    from werkzeug.serving import make_server as werkzeug_server

    from ciotrack.webhooks.adapters.wsgi import make_wsgi_app

    handler, received = webhook_handler
    server = werkzeug_server("127.0.0.1", 0, make_wsgi_app(handler), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        body, headers = signed(event_payload("email", "clicked", event_id="chunked-1"))
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
        try:
            # No Content-Length: the body goes as chunks.
            conn.request("POST", PATH, body=iter([body[:100], body[100:]]), headers=headers, encode_chunked=True)
            response = conn.getresponse()
            assert (response.status, json.loads(response.read())) == (200, {"ok": True})
        finally:
            conn.close()
    finally:
        server.shutdown()
    assert handler.drain(5) and [e.event_id for e in received] == ["chunked-1"]


def test_asgi_under_uvicorn_hands_off_to_napping_and_then_deep_sleeping_workers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-off's two modes over a real socket: a stream of webhooks is served by the napping
    worker; once the naps find nothing, the workers sleep until the event loop's submit wakes one."""
    import functools

    from ciotrack.webhooks import handler as handler_module
    from ciotrack.webhooks.adapters.asgi import make_asgi_app
    from ciotrack.webhooks.workers import Workers

    # Deep sleepers' safety-net wake-up 300 s away: only submit() can wake one within the test.
    monkeypatch.setattr(handler_module, "Workers", functools.partial(Workers, safety_wake=300))
    received: list[Event] = []
    handler = WebhookHandler(SECRET, received.append, workers=2, linger=0.01)
    try:
        with serve_uvicorn(make_asgi_app(handler)) as base:
            for n in range(20):
                body, headers = signed(event_payload("email", "delivered", customer_id=f"c{n}"))
                assert request(base + PATH, body=body, headers=list(headers.items())) == (200, {"ok": True})
            assert handler.drain(10) and len(received) == 20
            pool = handler._executor
            assert pool is not None
            deadline = time.monotonic() + 30
            while pool._deep_sleepers != 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert pool._deep_sleepers == 2 and pool._napper is None
            body, headers = signed(event_payload("email", "opened", customer_id="after-idle"))
            assert request(base + PATH, body=body, headers=list(headers.items())) == (200, {"ok": True})
            assert handler.drain(60)
            assert received[-1].customer_id == "after-idle"
    finally:
        handler.close(5)
