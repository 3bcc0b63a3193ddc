"""Hand verified webhooks to a Redis stream, for a fleet where other processes do the work.

    handler = WebhookHandler(secret, dispatch=RedisStreamDispatch(url="redis://..."),
                             dedup=RedisDedup(url="redis://..."))

The web process then only verifies, dedups and runs one ``XADD`` per webhook; your consumers read the
stream in a consumer group (``ensure_group`` and ``read_events`` below) and ``XACK`` + ``XDEL`` what they
handled. (``ciotrack worker`` does not read this stream: it delivers tracked events.)
The entry holds one field, ``event``: the payload as Customer.io sent it (JSON), nothing derived.
Needs ``pip install 'ciotrack[fleet]'`` (redis-py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ciotrack.webhooks.events import Event, event_from_dict

DEFAULT_STREAM = "ciotrack:webhooks"


def _client(client: Any, url: str | None) -> Any:
    if client is not None:
        return client
    if url is None:
        raise ValueError("give a redis client or a url")
    import redis

    from ciotrack.webhooks.dedup import REDIS_TIMEOUT

    # Timeouts: the XADD runs before the answer, which Customer.io wants within 4 s.
    return redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)


class RedisStreamDispatch:
    """``dispatch`` for ``WebhookHandler``: ``XADD <stream> * event <json>``. Never trims the
    stream (a capped work stream silently loses entries); consumers ``XACK`` + ``XDEL``."""

    def __init__(self, client: Any = None, *, url: str | None = None, stream: str = DEFAULT_STREAM) -> None:
        self.client = _client(client, url)
        self.stream = stream

    def __call__(self, event: Event) -> None:
        self.client.xadd(self.stream, {"event": json.dumps(event.to_dict(), separators=(",", ":"))})

    def __repr__(self) -> str:
        return f"RedisStreamDispatch(stream={self.stream!r})"


def ensure_group(client: Any, group: str, stream: str = DEFAULT_STREAM) -> None:
    """Create the consumer group from the stream's start (``0``, so earlier entries are not missed)."""
    import redis

    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


def read_events(client: Any, group: str, consumer: str, *, stream: str = DEFAULT_STREAM, count: int = 100,
                block_ms: int | None = 1000) -> Iterator[tuple[str, Event]]:
    """One ``XREADGROUP`` of new entries: ``(entry_id, event)`` pairs; ``XACK`` each once handled."""
    replies = client.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
    for _, entries in replies or []:
        for entry_id, fields in entries:
            raw = fields.get(b"event") if b"event" in fields else fields.get("event")
            entry = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            yield entry, event_from_dict(json.loads(raw))


__all__ = ["DEFAULT_STREAM", "RedisStreamDispatch", "ensure_group", "read_events"]
