"""Django: ``path("webhooks/customerio", view(handler))`` in your urlpatterns (CSRF-exempt, POST only)."""

from __future__ import annotations

from typing import Any

from ciotrack.webhooks.handler import WebhookHandler


def view(handler: WebhookHandler) -> Any:
    """A Django view function answering from ``handler.handle()``."""
    from django.http import HttpResponse
    from django.views.decorators.csrf import csrf_exempt
    from django.views.decorators.http import require_POST

    def customerio_webhook(request: Any) -> Any:
        # request.META is the WSGI environ: the direct HTTP_X_CIO_* lookup, no header object built.
        response = handler.handle(request.body, request.META)
        out = HttpResponse(response.body, status=response.status, content_type=response.content_type)
        for name, value in response.headers:
            out[name] = value
        return out

    return csrf_exempt(require_POST(customerio_webhook))
