"""Typed reporting-webhook events: one class per ``object_type``, a ``Metric`` enum.

Customer.io adds metrics and fields over time, so nothing here rejects what it does not know: an
unknown metric stays a plain ``str``, an unknown object type becomes a ``GenericEvent``, unknown
top-level keys land in ``extra`` and the whole ``data`` object is kept as ``data``.

The classes are slotted and lazy: construction stores five values and the ``data`` dict; the
delivery/campaign/metric-specific fields are properties read from ``data`` when asked for. That
keeps ``verify()`` within a small factor of a bare ``json.loads`` (see benches/bench_webhooks.py).
"""

from __future__ import annotations

import datetime as _dt
import enum
from typing import Any, ClassVar, Final


class Metric(str, enum.Enum):  # noqa: UP042 - str() and format() stay as they are for users
    """The metrics Customer.io documents. ``metric_of`` keeps any other value as a plain str."""

    SENT = "sent"
    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    CONVERTED = "converted"
    BOUNCED = "bounced"
    DROPPED = "dropped"
    SPAMMED = "spammed"
    FAILED = "failed"
    UNDELIVERABLE = "undeliverable"
    UNSUBSCRIBED = "unsubscribed"
    DRAFTED = "drafted"
    ATTEMPTED = "attempted"
    REPLIED = "replied"
    SUBSCRIBED = "subscribed"
    SUBSCRIPTION_PREFERENCES_CHANGED = "cio_subscription_preferences_changed"

    def __str__(self) -> str:
        return self.value


_METRICS: Final[dict[str, Metric]] = {m.value: m for m in Metric}


def metric_of(value: Any) -> Metric | str:
    """``Metric`` for a documented value, else the value itself as a str (never an error)."""
    text = value if isinstance(value, str) else ("" if value is None else str(value))
    return _METRICS.get(text, text)


_TOP_LEVEL: Final = frozenset({"event_id", "object_type", "metric", "timestamp", "data"})


def _str_or_none(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


class Event:
    """A reporting webhook. ``data`` is the raw ``data`` object; ``extra`` the unknown top-level keys."""

    __slots__ = ("event_id", "object_type", "metric", "timestamp", "data", "extra")
    OBJECT_TYPE: ClassVar[str] = ""

    event_id: str
    object_type: str
    metric: Metric | str
    timestamp: int
    data: dict[str, Any]
    extra: dict[str, Any]

    def __init__(self, event_id: str, object_type: str, metric: Metric | str, timestamp: int,
                 data: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        self.event_id = event_id
        self.object_type = object_type
        self.metric = metric
        self.timestamp = timestamp
        self.data = data
        self.extra = extra if extra is not None else {}

    def __repr__(self) -> str:
        # Ids and the metric only: data holds email addresses and message content.
        return (f"{type(self).__name__}(event_id={self.event_id!r}, metric={str(self.metric)!r}, "
                f"timestamp={self.timestamp}, delivery_id={self.delivery_id!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (type(self) is type(other) and self.event_id == other.event_id and self.metric == other.metric
                and self.timestamp == other.timestamp and self.data == other.data and self.extra == other.extra)

    __hash__ = None  # type: ignore[assignment]  # mutable: compare by value, never hash

    def to_dict(self) -> dict[str, Any]:
        """The payload as Customer.io sent it (unknown keys included)."""
        return {**self.extra, "event_id": self.event_id, "object_type": self.object_type,
                "metric": str(self.metric), "timestamp": self.timestamp, "data": self.data}

    @property
    def at(self) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(self.timestamp, _dt.UTC)

    def _get(self, name: str) -> str | None:
        return _str_or_none(self.data.get(name))

    # The person and the message.
    @property
    def customer_id(self) -> str | None:
        """Blank (None) when the person was deleted."""
        return self._get("customer_id")

    @property
    def identifiers(self) -> dict[str, Any]:
        value = self.data.get("identifiers")
        return value if isinstance(value, dict) else {}

    @property
    def email_address(self) -> str | None:
        return self._get("email_address") or _str_or_none(self.identifiers.get("email"))

    @property
    def delivery_id(self) -> str | None:
        return self._get("delivery_id")

    # Where the message came from: a campaign, a broadcast, a newsletter or a transactional message.
    @property
    def campaign_id(self) -> str | None:
        return self._get("campaign_id")

    @property
    def action_id(self) -> str | None:
        return self._get("action_id")

    @property
    def journey_id(self) -> str | None:
        return self._get("journey_id")

    @property
    def parent_action_id(self) -> str | None:
        return self._get("parent_action_id")

    @property
    def trigger_event_id(self) -> str | None:
        return self._get("trigger_event_id")

    @property
    def broadcast_id(self) -> str | None:
        return self._get("broadcast_id")

    @property
    def trigger_id(self) -> str | None:
        return self._get("trigger_id")

    @property
    def newsletter_id(self) -> str | None:
        return self._get("newsletter_id")

    @property
    def content_id(self) -> str | None:
        return self._get("content_id")

    @property
    def transactional_message_id(self) -> str | None:
        return self._get("transactional_message_id")


class _MessageEvent(Event):
    """Fields shared by the message channels (present for the metrics that carry them)."""

    __slots__ = ()

    @property
    def recipient(self) -> str | None:
        return self._get("recipient")

    @property
    def href(self) -> str | None:
        """The clicked link (``clicked``)."""
        return self._get("href")

    @property
    def link_id(self) -> str | None:
        return self._get("link_id")

    @property
    def failure_message(self) -> str | None:
        """Why it bounced/failed/was dropped (``bounced``, ``failed``, ``dropped``, ``undeliverable``)."""
        return self._get("failure_message")

    @property
    def content(self) -> str | None:
        """The message body, only when body content is enabled on the webhook."""
        return self._get("content")


class CustomerEvent(Event):
    """``object_type: customer``: subscribed, unsubscribed, subscription preferences changed."""

    __slots__ = ()
    OBJECT_TYPE = "customer"

    @property
    def content(self) -> str | None:
        """The new subscription preferences (``cio_subscription_preferences_changed``), a JSON string."""
        return self._get("content")


class EmailEvent(_MessageEvent):
    __slots__ = ()
    OBJECT_TYPE = "email"

    @property
    def subject(self) -> str | None:
        return self._get("subject")


class PushEvent(_MessageEvent):
    __slots__ = ()
    OBJECT_TYPE = "push"

    @property
    def recipients(self) -> list[dict[str, Any]]:
        """The devices (``device_id``, ``device_platform``) a push went to."""
        value = self.data.get("recipients")
        return value if isinstance(value, list) else []


class InAppEvent(_MessageEvent):
    __slots__ = ()
    OBJECT_TYPE = "in_app"


class SmsEvent(_MessageEvent):
    __slots__ = ()
    OBJECT_TYPE = "sms"


class SlackEvent(_MessageEvent):
    __slots__ = ()
    OBJECT_TYPE = "slack"


class WebhookActionEvent(_MessageEvent):
    """``object_type: webhook``: a campaign's webhook action (not the reporting webhook itself)."""

    __slots__ = ()
    OBJECT_TYPE = "webhook"


class WhatsappEvent(_MessageEvent):
    __slots__ = ()
    OBJECT_TYPE = "whatsapp"


class GenericEvent(_MessageEvent):
    """An object type this version does not know: every field still reachable through ``data``."""

    __slots__ = ()


EVENT_CLASSES: Final[dict[str, type[Event]]] = {
    cls.OBJECT_TYPE: cls
    for cls in (CustomerEvent, EmailEvent, PushEvent, InAppEvent, SmsEvent, SlackEvent, WebhookActionEvent,
                WhatsappEvent)
}


def event_from_dict(payload: dict[str, Any]) -> Event:
    """The typed event of a decoded payload. Only ``event_id`` is required (it is the dedup key);
    ``ValueError`` if it is missing or not a string. On the hot path of ``verify()``: the checks
    are ``__class__`` comparisons and dict lookups, nothing that walks ``data``."""
    event_id = payload.get("event_id")
    if event_id.__class__ is not str or not event_id:
        raise ValueError("the payload has no event_id")
    object_type = payload.get("object_type")
    if object_type.__class__ is str:
        cls = EVENT_CLASSES.get(object_type, GenericEvent)
    else:
        cls, object_type = GenericEvent, ""
    metric = payload.get("metric")
    if metric.__class__ is str:
        metric = _METRICS.get(metric, metric)
    else:
        metric = metric_of(metric)
    timestamp = payload.get("timestamp")
    if timestamp.__class__ is not int:
        try:
            timestamp = int(timestamp)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            timestamp = 0
    data = payload.get("data")
    if data.__class__ is not dict:
        data = {} if data is None else {"value": data}
    extra = {k: v for k, v in payload.items() if k not in _TOP_LEVEL} if not _TOP_LEVEL.issuperset(payload) else {}
    return cls(event_id, object_type, metric, timestamp, data, extra)  # type: ignore[arg-type]


__all__ = [
    "CustomerEvent", "EVENT_CLASSES", "EmailEvent", "Event", "GenericEvent", "InAppEvent", "Metric", "PushEvent",
    "SlackEvent", "SmsEvent", "WebhookActionEvent", "WhatsappEvent", "event_from_dict", "metric_of",
]
