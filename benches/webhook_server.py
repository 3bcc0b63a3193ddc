"""A webhook endpoint for bench_webhooks.py, run in its own process (its own GIL), like a real app:

    python benches/webhook_server.py {asgi,starlette,flask,wsgi} PORT SECRET

Prints ``ready`` once listening; serves until stdin closes. The user handler does nothing: the
figure is the adapter's answer (verify + dedup + hand-off + response), not downstream work.
"""

from __future__ import annotations

import sys
import threading
from typing import Any


def main() -> None:
    kind, port, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    from ciotrack.webhooks import Event, WebhookHandler

    def process(event: Event) -> None:
        pass

    handler = WebhookHandler(secret, process)

    def stop_on_eof(stop: Any) -> None:
        sys.stdin.buffer.read()
        stop()

    if kind in ("asgi", "starlette"):
        import uvicorn

        if kind == "asgi":
            from ciotrack.webhooks.adapters.asgi import make_asgi_app

            app: Any = make_asgi_app(handler)
        else:
            from starlette.applications import Starlette

            from ciotrack.webhooks.adapters.starlette import route

            app = Starlette(routes=[route(handler, "/hook")])
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                               access_log=False, lifespan="off"))

        def stop_uvicorn() -> None:
            server.should_exit = True

        threading.Thread(target=stop_on_eof, args=(stop_uvicorn,), daemon=True).start()
        config_started = threading.Thread(target=_announce, args=(lambda: server.started,), daemon=True)
        config_started.start()
        server.run()
        return
    from werkzeug.serving import make_server

    if kind == "flask":
        import flask

        from ciotrack.webhooks.adapters.flask import blueprint

        wsgi_app: Any = flask.Flask("bench")
        wsgi_app.register_blueprint(blueprint(handler, "/hook"))
    else:
        from ciotrack.webhooks.adapters.wsgi import make_wsgi_app

        wsgi_app = make_wsgi_app(handler)
    from werkzeug.serving import WSGIRequestHandler

    class KeepAliveQuietHandler(WSGIRequestHandler):
        # HTTP/1.1 keep-alive and no Nagle, as a production server runs (werkzeug's defaults are
        # 1.0 and Nagle on: headers and body go in two writes, and the body waits for a delayed ACK).
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_request(self, code: Any = "-", size: Any = "-") -> None:
            pass

    werkzeug_server = make_server("127.0.0.1", port, wsgi_app, threaded=True, request_handler=KeepAliveQuietHandler)
    threading.Thread(target=stop_on_eof, args=(werkzeug_server.shutdown,), daemon=True).start()
    print("ready", flush=True)
    werkzeug_server.serve_forever()


def _announce(started: Any) -> None:
    import time

    while not started():
        time.sleep(0.01)
    print("ready", flush=True)


if __name__ == "__main__":
    main()
