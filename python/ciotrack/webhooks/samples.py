"""Realistic reporting-webhook payloads, shaped like customerio-api.md §8, for the emulator's
sender, the blaster, tests and benchmarks."""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any, Final

from ciotrack.webhooks.events import EVENT_CLASSES

OBJECT_TYPES: Final = tuple(EVENT_CLASSES)

# Metrics that make sense per object type (the first ones are the common delivery path).
METRICS_BY_TYPE: Final[dict[str, tuple[str, ...]]] = {
    "customer": ("subscribed", "unsubscribed", "cio_subscription_preferences_changed"),
    "email": ("sent", "delivered", "opened", "clicked", "converted", "bounced", "dropped", "spammed",
              "failed", "unsubscribed", "drafted"),
    "push": ("sent", "delivered", "opened", "clicked", "converted", "bounced", "dropped", "failed"),
    "in_app": ("sent", "opened", "clicked", "converted"),
    "sms": ("sent", "delivered", "clicked", "converted", "bounced", "failed", "undeliverable"),
    "slack": ("sent", "clicked", "failed", "drafted"),
    "webhook": ("sent", "clicked", "failed", "drafted", "attempted"),
    "whatsapp": ("sent", "delivered", "opened", "clicked", "replied", "failed", "undeliverable"),
}

_ULID_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_counter = itertools.count()
_counter_lock = threading.Lock()


def new_event_id(now: float | None = None) -> str:
    """A ULID-looking id (Customer.io's example looks like one): 48-bit ms time + 80 random bits."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_ULID_ALPHABET[(value >> shift) & 31] for shift in range(125, -1, -5))


def event_payload(
    object_type: str = "email",
    metric: str = "delivered",
    *,
    event_id: str | None = None,
    timestamp: int | None = None,
    customer_id: str = "42",
    email: str | None = "person@example.com",
    delivery_id: str | None = None,
    pad_to: int = 0,
    **data: Any,
) -> dict[str, Any]:
    """One payload dict. ``pad_to`` grows the ``content`` field until the JSON body is about that
    many bytes (the benchmark's 2 KB event); extra keywords go into ``data``."""
    ts = int(time.time()) if timestamp is None else timestamp
    with _counter_lock:
        n = next(_counter)
    body: dict[str, Any] = {
        "customer_id": customer_id,
        "identifiers": {"id": customer_id, **({"email": email} if email else {}), "cio_id": f"cio{n:08x}"},
        "delivery_id": delivery_id or f"dlv_{n:012x}",
        "campaign_id": 7, "action_id": 31, "journey_id": "01HQZ5J7M1XK3PAV9W7D3FJ0QK",
        "trigger_event_id": "01HQZ5J7M1XK3PAV9W7D3FJ0QM",
    }
    if object_type == "email":
        body.update(recipient=email or "", subject="Your order has shipped")
    elif object_type in ("sms", "whatsapp"):
        body.update(recipient="+15555550123")
    elif object_type == "push":
        body.update(recipients=[{"device_id": f"device-{customer_id}", "device_platform": "ios"}])
    if metric == "clicked":
        body.update(href="https://example.com/orders/42", link_id=3)
    elif metric in ("bounced", "failed", "dropped", "undeliverable"):
        body.update(failure_message="550 5.1.1 mailbox unavailable")
    if object_type == "customer":
        body = {"customer_id": customer_id, "identifiers": body["identifiers"], "email_address": email}
    body.update(data)
    payload = {"event_id": event_id or new_event_id(ts), "object_type": object_type, "metric": metric,
               "timestamp": ts, "data": body}
    if pad_to:
        import json

        size = len(json.dumps(payload, separators=(",", ":")))
        if size < pad_to:
            text = "Hello! Your order #42 is on its way. "
            body["content"] = (text * (1 + (pad_to - size) // len(text)))[: max(0, pad_to - size - 14)]
    return payload
