"""A webhook endpoint for bench_webhooks.py, run in its own process (its own GIL), like a real app:

    python benches/webhook_server.py KIND PORT SECRET

KIND: ``asgi`` (the plain ASGI adapter), ``starlette``, ``fastapi`` (under uvicorn with httptools
and uvloop), ``wsgi`` (the plain WSGI adapter) and ``flask`` (under gunicorn, one gthread worker with
8 threads), ``flask-werkzeug`` (Flask's development server). A WSGI kind may name another server:
``flask@granian`` (granian, one worker, one blocking thread), ``flask@gevent`` (gunicorn's gevent
worker), ``wsgi@gthread1`` (gunicorn gthread with one thread); ``+freeze`` calls ``gc.freeze()``
once the app is built (``flask+freeze@granian``). ``asgi-floor`` and ``wsgi-floor``: the same
servers answering 200 with no adapter at all. ``asgi@granian``: the ASGI adapter under granian's
ASGI interface. Prints ``ready`` once listening; serves until stdin closes.

The user handler does nothing: the figure is the adapter's answer (verify + dedup + hand-off +
response), not downstream work. A wrapper around the whole app times each webhook request inside
the server (from the app being called to its answer handed back, framework routing included) and
serves the percentiles (and the process's CPU seconds so far, user and system, and the garbage
collections since the last read) at ``GET /_timings``, so the bench can show the server's side apart
from the network, the HTTP server and the client.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from typing import Any

_timings: list[float] = []
# Garbage-collector pauses (gc.callbacks, start to stop) by generation: do gen-2 sweeps show in the tail?
_gc_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
_gc_started = [0.0]


def _gc_callback(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        _gc_pauses[info["generation"]].append(time.perf_counter() - _gc_started[0])


def _gc_summary() -> dict[str, Any]:
    # Since the last read: the bench reads once before its blast and once after.
    summary = {f"gen{gen}": {"n": len(p), "max_ms": max(p, default=0.0) * 1000, "total_ms": sum(p) * 1000}
               for gen, p in _gc_pauses.items()}
    for pauses in _gc_pauses.values():
        pauses.clear()
    return summary


def _percentiles() -> bytes:
    values = sorted(_timings)
    times = os.times()
    base = {"cpu_s": time.process_time(), "user_s": times.user, "system_s": times.system, "gc": _gc_summary()}
    if not values:
        return json.dumps({"n": 0, **base}).encode()

    def pick(p: float) -> float:
        return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000

    return json.dumps({"n": len(values), "p50": pick(50), "p99": pick(99), "max": values[-1] * 1000,
                       **base}).encode()


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
    if kind in ("asgi", "asgi-floor", "starlette", "fastapi"):
        import uvicorn

        handler = make_handler(secret)
        app: Any
        if kind == "asgi-floor":
            app = floor_asgi
        elif kind == "asgi":
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

    if kind.startswith("flask") and kind.endswith("-werkzeug"):
        from werkzeug.serving import WSGIRequestHandler, make_server

        class KeepAliveQuietHandler(WSGIRequestHandler):
            # HTTP/1.1 keep-alive and no Nagle (werkzeug's defaults are 1.0 and Nagle on: headers and
            # body go in two writes, and the body then waits for the client's delayed ACK).
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_request(self, code: Any = "-", size: Any = "-") -> None:
                pass

        werkzeug_server = make_server("127.0.0.1", port, make_wsgi(kind.removesuffix("-werkzeug"), secret),
                                      threaded=True, request_handler=KeepAliveQuietHandler)
        threading.Thread(target=_stop_on_eof, args=(werkzeug_server.shutdown,), daemon=True).start()
        print("ready", flush=True)
        werkzeug_server.serve_forever()
        return

    app_kind, _, server_kind = kind.partition("@")
    if app_kind in ("asgi", "asgi-floor") and server_kind == "granian":
        _serve_granian("asgi", app_kind, port, secret)
        return
    _serve_wsgi(app_kind, server_kind or "gthread", port, secret)


# WSGI servers (``KIND@SERVER``; gunicorn gthread when no server is named). gunicorn's workers
# build the app in the worker process with the factory ``make_wsgi``; granian's with ``granian_wsgi_app``.
# Every one: one worker process, HTTP/1.1 keep-alive, no access log.
_GUNICORN = {
    "gthread": ["-k", "gthread", "--threads", "8"],  # gunicorn's usual threaded setup
    "gthread1": ["-k", "gthread", "--threads", "1"],  # one handler thread: no GIL contention between them
    "gevent": ["-k", "gevent", "--worker-connections", "1000"],  # one thread, greenlets
}


def _ready_when_listening(port: int) -> None:
    import socket

    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.02)
    print("ready", flush=True)


def _serve_granian(interface: str, app_kind: str, port: int, secret: str) -> None:
    """granian (Rust's HTTP server, one worker process): a WSGI app on one blocking thread (the GIL
    allows one anyway), or an ASGI app on granian's event loop."""
    import subprocess

    env = dict(os.environ, CIOTRACK_BENCH_APP=app_kind, CIOTRACK_BENCH_SECRET=secret)
    granian = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "granian"), "--interface", interface, "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--blocking-threads", "1", "--no-access-log", "--log-level",
         "warning", "--working-dir", os.path.dirname(os.path.abspath(__file__)), "--factory",
         f"webhook_server:granian_{interface}_app"], env=env)
    threading.Thread(target=_ready_when_listening, args=(port,), daemon=True).start()
    _stop_on_eof(granian.terminate)
    granian.wait(10)


def _serve_wsgi(app_kind: str, server_kind: str, port: int, secret: str) -> None:
    import signal

    here = os.path.dirname(os.path.abspath(__file__))
    if server_kind == "granian":
        _serve_granian("wsgi", app_kind, port, secret)
        return
    if server_kind not in _GUNICORN:
        raise SystemExit(f"unknown WSGI server {server_kind!r}")
    from gunicorn.app.wsgiapp import run

    # Stopped with SIGTERM to this (master) process.
    threading.Thread(target=_stop_on_eof, args=(lambda: os.kill(os.getpid(), signal.SIGTERM),),
                     daemon=True).start()
    threading.Thread(target=_ready_when_listening, args=(port,), daemon=True).start()
    sys.path.insert(0, here)
    sys.argv = ["gunicorn", *_GUNICORN[server_kind], "-w", "1", "--keep-alive", "30", "--graceful-timeout", "3",
                "-b", f"127.0.0.1:{port}",
                "--log-level", "warning", f"webhook_server:make_wsgi({app_kind!r}, {secret!r})"]
    run()


def granian_wsgi_app() -> Any:
    """granian's app factory (it takes no arguments: the kind and key come in the environment)."""
    return make_wsgi(os.environ["CIOTRACK_BENCH_APP"], os.environ["CIOTRACK_BENCH_SECRET"])


def granian_asgi_app() -> Any:
    """The same for the ASGI kinds (``asgi``, ``asgi-floor``)."""
    if os.environ["CIOTRACK_BENCH_APP"] == "asgi-floor":
        return timed_asgi(floor_asgi)
    from ciotrack.webhooks.adapters.asgi import make_asgi_app

    return timed_asgi(make_asgi_app(make_handler(os.environ["CIOTRACK_BENCH_SECRET"])))


def make_handler(secret: str) -> Any:
    """The bench's ``WebhookHandler`` (a user handler that does nothing), and the gc pause recorder.

    For experiments: ``CIOTRACK_BENCH_LINGER`` (seconds) overrides the handler threads' linger;
    ``CIOTRACK_BENCH_HANDOFF=none`` drops each event after verify + dedup (no handler threads)."""
    from ciotrack.webhooks import Event, WebhookHandler

    def process(event: Event) -> None:
        pass

    if _gc_callback not in gc.callbacks:
        gc.callbacks.append(_gc_callback)
    linger = os.environ.get("CIOTRACK_BENCH_LINGER")
    if os.environ.get("CIOTRACK_BENCH_HANDOFF") == "none":
        # No handler threads at all: events are dropped after verify + dedup (the hand-off's floor).
        return WebhookHandler(secret, dispatch=process)
    return WebhookHandler(secret, process, **({"linger": float(linger)} if linger else {}))


def make_wsgi(kind: str, secret: str) -> Any:
    """The timed WSGI app of ``kind`` (``wsgi``, ``wsgi-floor`` or ``flask``, each optionally
    ``+freeze``); also gunicorn's app factory."""
    kind, freeze, _ = kind.partition("+freeze")
    handler = make_handler(secret)
    app: Any
    if kind == "flask":
        import flask

        from ciotrack.webhooks.adapters.flask import blueprint

        flask_app = flask.Flask("bench")
        flask_app.register_blueprint(blueprint(handler, "/hook"))
        app = timed_wsgi(flask_app)
    elif kind == "wsgi-floor":
        app = timed_wsgi(floor_wsgi)
    else:
        from ciotrack.webhooks.adapters.wsgi import make_wsgi_app

        app = timed_wsgi(make_wsgi_app(handler))
    if freeze:
        # What the README recommends for Flask: move everything loaded so far out of the collector's
        # reach, so the full collections that werkzeug's per-request reference cycles trigger scan
        # only what requests left behind, not every module of the app.
        gc.collect()
        gc.freeze()
    return app


# The floors: the same server answering the same 200 after reading the body, with no verify, dedup or
# hand-off. What the HTTP server itself costs on this machine; an adapter's figure minus this is ours.
_FLOOR_BODY = b'{"ok":true}'


async def floor_asgi(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")]})
    await send({"type": "http.response.body", "body": _FLOOR_BODY})


def floor_wsgi(environ: dict[str, Any], start_response: Any) -> Any:
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "11")])
    return [_FLOOR_BODY]


if __name__ == "__main__":
    main()
