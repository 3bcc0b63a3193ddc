"""Django: ``path("webhooks/customerio", view(handler))`` in your urlpatterns (CSRF-exempt, POST only)."""

from __future__ import annotations

from typing import Any

from ciotrack.webhooks.adapters.wsgi import declared_length
from ciotrack.webhooks.handler import WebhookHandler


def view(handler: WebhookHandler) -> Any:
    """A Django view function answering from ``handler.handle()``. The body limit is the handler's
    ``max_body`` (413 above it), not ``DATA_UPLOAD_MAX_MEMORY_SIZE``: a genuine webhook over 2.5 MB
    (a "sent" event with a large message's content) must not be answered 400, which holds back the
    whole feed."""
    from django.http import HttpResponse
    from django.views.decorators.csrf import csrf_exempt
    from django.views.decorators.http import require_POST

    def customerio_webhook(request: Any) -> Any:
        length = declared_length(request.META.get("CONTENT_LENGTH"))
        if length is not None and length > handler.max_body:
            response = handler.too_large()
        else:
            # request.read(), not request.body: the same bytes (Django's stream stops at Content-Length),
            # without .body's size check. request.META is the WSGI environ: the direct HTTP_X_CIO_*
            # lookup, no header object built.
            response = handler.handle(request.read(), request.META)
        out = HttpResponse(response.body, status=response.status, content_type=response.content_type)
        for name, value in response.headers:
            out[name] = value
        return out

    return csrf_exempt(require_POST(customerio_webhook))
