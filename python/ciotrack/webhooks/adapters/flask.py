"""Flask: ``app.register_blueprint(blueprint(handler))`` serves POST ``url`` (default /webhooks/customerio)."""

from __future__ import annotations

from typing import Any

from ciotrack.webhooks.adapters.wsgi import read_capped
from ciotrack.webhooks.handler import WebhookHandler


def blueprint(handler: WebhookHandler, url: str = "/webhooks/customerio", name: str = "ciotrack_webhooks") -> Any:
    """A ``flask.Blueprint`` with one POST route answering from ``handler.handle()`` (413 for a body over
    ``handler.max_body``, whatever the app's ``MAX_CONTENT_LENGTH``)."""
    import flask

    bp = flask.Blueprint(name, __name__)

    @bp.route(url, methods=["POST"])
    def customerio_webhook() -> Any:
        request = flask.request
        length = request.content_length
        if length is not None and length > handler.max_body:
            response = handler.too_large()
        else:
            # cache=False: the body is verified once and not kept on the request. Without a length
            # (chunked) it is read in pieces and given up on past max_body.
            body = request.get_data(cache=False) if length is not None else read_capped(
                request.stream.read, handler.max_body)
            response = handler.too_large() if body is None else handler.handle(body, request.environ)
        return flask.Response(response.body, status=response.status, content_type=response.content_type,
                              headers=list(response.headers))

    return bp
