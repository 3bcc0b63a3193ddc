"""Customer.io reporting webhooks: verify in microseconds, typed events, exactly-once fast-ack handling.

    from ciotrack.webhooks import WebhookHandler, verify

    event = verify(raw_body, request.headers, "signing-key")      # a typed event, or WebhookVerificationError
    handler = WebhookHandler("signing-key", process)               # verify + dedup + thread pool + 200 at once
    response = handler.handle(raw_body, request.headers)           # adapters do this for Flask/Django/ASGI/WSGI

Pure stdlib: no native core, no optional dependency (``RedisDedup`` needs ``redis``; the adapters
import their framework only when called).
"""

from ciotrack.webhooks.dedup import Claim, Dedup, MemoryDedup, RedisDedup
from ciotrack.webhooks.events import (
    CustomerEvent,
    EmailEvent,
    Event,
    GenericEvent,
    InAppEvent,
    Metric,
    PushEvent,
    SlackEvent,
    SmsEvent,
    WebhookActionEvent,
    WhatsappEvent,
    event_from_dict,
    metric_of,
)
from ciotrack.webhooks.handler import Parked, Response, WebhookHandler
from ciotrack.webhooks.signature import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookVerificationError,
    parse_body,
    sign,
    signed_headers,
    verify,
    verify_signature,
)

__all__ = [
    "Claim", "CustomerEvent", "Dedup", "EmailEvent", "Event", "GenericEvent", "InAppEvent", "MemoryDedup", "Metric",
    "Parked", "PushEvent", "RedisDedup", "Response", "SIGNATURE_HEADER", "SlackEvent", "SmsEvent",
    "TIMESTAMP_HEADER", "WebhookActionEvent", "WebhookHandler", "WebhookVerificationError", "WhatsappEvent",
    "event_from_dict", "metric_of", "parse_body", "sign", "signed_headers", "verify", "verify_signature",
]
