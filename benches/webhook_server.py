"""A webhook endpoint for bench_webhooks.py, run in its own process (its own GIL), like a real app:

    python benches/webhook_server.py KIND PORT SECRET

KIND: ``asgi`` (the plain ASGI adapter), ``starlette``, ``fastapi`` (under uvicorn with httptools
and uvloop), ``wsgi`` (the plain WSGI adapter) and ``flask`` (under gunicorn, one gthread worker),
``flask-werkzeug`` (Flask's development server). Prints ``ready`` once listening; serves until stdin closes.

The user handler does nothing: the figure is the adapter's answer (verify + dedup + hand-off +
response), not downstream work. A wrapper around the whole app times each webhook request inside
the server (from the app being called to its answer handed back, framework routing included) and
serves the percentiles (and the process's CPU seconds so far) at ``GET /_timings``, so the bench can
show the server's side apart from the network, the HTTP server and the client.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

_timings: list[float] = []


def _percentiles() -> bytes:
    values = sorted(_timings)
    if not values:
        return json.dumps({"n": 0, "cpu_s": time.process_time()}).encode()

    def pick(p: float) -> float:
        return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000

    return json.dumps({"n": len(values), "p50": pick(50), "p99": pick(99), "max": values[-1] * 1000,
                       "cpu_s": time.process_time()}).encode()


def timed_wsgi(app: Any) -> Any:
    def wrapper(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/_timings":
            body = _percentiles()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        started = time.perf_counter()
        result = app(environ, start_response)
        _timings.append(time.perf_counter() - started)
        return result

    return wrapper


def timed_asgi(app: Any) -> Any:
    async def wrapper(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/_timings":
            body = _percentiles()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        started = time.perf_counter()
        await app(scope, receive, send)
        if scope["type"] == "http":
            _timings.append(time.perf_counter() - started)

    return wrapper


def _stop_on_eof(stop: Any) -> None:
    import os

    # os.read, not sys.stdin: a daemon thread blocked in a buffered read aborts interpreter shutdown.
    while os.read(0, 65536):
        pass
    stop()


def _announce(started: Any) -> None:
    while not started():
        time.sleep(0.01)
    print("ready", flush=True)


def main() -> None:
    kind, port, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    from ciotrack.webhooks import Event, WebhookHandler

    def process(event: Event) -> None:
        pass

    handler = WebhookHandler(secret, process)
    if kind in ("asgi", "starlette", "fastapi"):
        import uvicorn

        app: Any
        if kind == "asgi":
            from ciotrack.webhooks.adapters.asgi import make_asgi_app

            app = make_asgi_app(handler)
        elif kind == "starlette":
            from starlette.applications import Starlette

            from ciotrack.webhooks.adapters.starlette import route

            app = Starlette(routes=[route(handler, "/hook")])
        else:
            import fastapi

            from ciotrack.webhooks.adapters.starlette import endpoint

            app = fastapi.FastAPI()
            app.add_route("/hook", endpoint(handler), methods=["POST"])
        server = uvicorn.Server(uvicorn.Config(timed_asgi(app), host="127.0.0.1", port=port, log_level="warning",
                                               access_log=False, lifespan="off"))

        def stop_uvicorn() -> None:
            server.should_exit = True

        threading.Thread(target=_stop_on_eof, args=(stop_uvicorn,), daemon=True).start()
        threading.Thread(target=_announce, args=(lambda: server.started,), daemon=True).start()
        server.run()
        return

    if kind == "flask-werkzeug":
        from werkzeug.serving import WSGIRequestHandler, make_server

        class KeepAliveQuietHandler(WSGIRequestHandler):
            # HTTP/1.1 keep-alive and no Nagle (werkzeug's defaults are 1.0 and Nagle on: headers and
            # body go in two writes, and the body then waits for the client's delayed ACK).
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_request(self, code: Any = "-", size: Any = "-") -> None:
                pass

        werkzeug_server = make_server("127.0.0.1", port, make_wsgi("flask", secret), threaded=True,
                                      request_handler=KeepAliveQuietHandler)
        threading.Thread(target=_stop_on_eof, args=(werkzeug_server.shutdown,), daemon=True).start()
        print("ready", flush=True)
        werkzeug_server.serve_forever()
        return

    # gunicorn, the usual production WSGI server: one gthread worker (8 threads, keep-alive); the
    # app is built in the worker by the factory below. Stopped with SIGTERM to this (master) process.
    import os
    import signal
    import socket

    from gunicorn.app.wsgiapp import run

    def ready_when_listening() -> None:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.02)
        print("ready", flush=True)

    threading.Thread(target=_stop_on_eof, args=(lambda: os.kill(os.getpid(), signal.SIGTERM),),
                     daemon=True).start()
    threading.Thread(target=ready_when_listening, daemon=True).start()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.argv = ["gunicorn", "-k", "gthread", "-w", "1", "--threads", "8", "--keep-alive", "30", "-b",
                f"127.0.0.1:{port}", "--log-level", "warning", f"webhook_server:make_wsgi({kind!r}, {secret!r})"]
    run()


def make_wsgi(kind: str, secret: str) -> Any:
    """The timed WSGI app of ``kind`` (``wsgi`` or ``flask``); also gunicorn's app factory."""
    from ciotrack.webhooks import Event, WebhookHandler

    def process(event: Event) -> None:
        pass

    handler = WebhookHandler(secret, process)
    if kind == "flask":
        import flask

        from ciotrack.webhooks.adapters.flask import blueprint

        flask_app = flask.Flask("bench")
        flask_app.register_blueprint(blueprint(handler, "/hook"))
        return timed_wsgi(flask_app)
    from ciotrack.webhooks.adapters.wsgi import make_wsgi_app

    return timed_wsgi(make_wsgi_app(handler))


if __name__ == "__main__":
    main()
