"""Flask: ``app.register_blueprint(blueprint(handler))`` serves POST ``url`` (default /webhooks/customerio)."""

from __future__ import annotations

from typing import Any

from ciotrack.webhooks.handler import WebhookHandler


def blueprint(handler: WebhookHandler, url: str = "/webhooks/customerio", name: str = "ciotrack_webhooks") -> Any:
    """A ``flask.Blueprint`` with one POST route answering from ``handler.handle()``."""
    import flask

    bp = flask.Blueprint(name, __name__)

    @bp.route(url, methods=["POST"])
    def customerio_webhook() -> Any:
        request = flask.request
        # cache=False: the body is verified once and not kept on the request.
        response = handler.handle(request.get_data(cache=False), request.environ)
        return flask.Response(response.body, status=response.status, content_type=response.content_type,
                              headers=list(response.headers))

    return bp
