"""The producer side of fleet mode: a :class:`~ciotrack.destinations.Destination` that writes batches
to the workspace's Redis stream instead of POSTing them.

``send(body)`` answers *delivered* once Redis acknowledged the ``XADD`` — the batch is then durable in
Redis (AOF on), and ``Tracker.flush()`` returning True means exactly that, not "accepted by
Customer.io": the workers do that part. Connection errors, timeouts, ``LOADING`` (Redis replaying its
AOF), ``BUSY``, ``OOM`` (maxmemory reached with ``noeviction``: a backlog) and a missing stream are
*retry*: the tracker's retry loop and disk spool handle a Redis outage like a Customer.io outage.
``send`` never raises.

Concurrent sends are **pipelined**: the first sender thread to arrive becomes the leader and writes
every entry queued meanwhile in one round trip (a group commit); the others wait for their own reply.
The workspace rate limit does not apply to these writes (no limiter): the workers pace the requests.
The API key is never given to this class, so it cannot reach Redis.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from ciotrack.destinations.base import Outcome
from ciotrack.fleet.streams import StreamKeys, encode_entry, ensure_group

if TYPE_CHECKING:
    import redis

__all__ = ["RedisStreamDestination", "RedisStreams", "connect"]

log = logging.getLogger("ciotrack.fleet")


def connect(url: str, *, socket_timeout: float = 10.0, retries: int | None = None) -> redis.Redis:
    """A ``redis.Redis`` for fleet use: bounded socket timeouts, health checks, no decoding.
    ``retries``: how often redis-py itself runs a command again after a connection error or timeout
    (None: its default, 10 with backoff; 0 for one bounded round trip)."""
    import redis as redis_module

    extra: dict[str, Any] = {}
    if retries is not None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        extra["retry"] = Retry(NoBackoff(), retries)
    return redis_module.Redis.from_url(
        url, socket_timeout=socket_timeout, socket_connect_timeout=min(5.0, socket_timeout),
        health_check_interval=15, decode_responses=False, client_name=f"ciotrack-{os.getpid()}", **extra)


def producer_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _Pending:
    __slots__ = ("done", "fields", "result")

    def __init__(self, fields: dict[str, bytes]) -> None:
        self.fields = fields
        self.done = threading.Event()
        self.result: Outcome | None = None


class RedisStreamDestination:
    """Writes batch bodies to ``ciotrack:{<site>}:work`` (see :mod:`ciotrack.fleet.streams`)."""

    def __init__(self, url_or_client: str | redis.Redis, site_id: str, *, region: str = "us",
                 timeout: float = 5.0, prefix: str = "ciotrack") -> None:
        self.name = "redis"
        self.region = region
        self.keys = StreamKeys.for_site(site_id, prefix)
        self._client = connect(url_or_client, socket_timeout=timeout) if isinstance(url_or_client, str) \
            else url_or_client
        self._owns_client = isinstance(url_or_client, str)
        self._producer = producer_id()
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._leader = False
        self._group_checked = False
        self._last_warning = 0.0
        self.entries_written = 0

    def __repr__(self) -> str:
        return f"RedisStreamDestination(stream={self.keys.work!r}, region={self.region!r})"

    def send(self, body: bytes) -> Outcome:
        try:
            fields = encode_entry(body, self.region, self._producer)
        except ValueError as exc:
            # Not a batch body: no worker could ever deliver it.
            return Outcome.final(None, f"not_a_batch: {exc}")
        pending = _Pending(fields)
        with self._lock:
            self._queue.append(pending)
            lead = not self._leader
            if lead:
                self._leader = True
        if lead:
            self._lead()
        pending.done.wait()
        assert pending.result is not None
        return pending.result

    def _lead(self) -> None:
        """Write what is queued, round after round, until the queue is empty (then step down)."""
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._leader = False
                    return
            try:
                results = self._write(batch)
            except Exception as exc:  # never leave a follower waiting forever
                log.exception("ciotrack fleet: unexpected error writing to Redis")
                results = [Outcome.retry(None, reason=f"redis_{type(exc).__name__}")] * len(batch)
            for pending, result in zip(batch, results, strict=True):
                pending.result = result
                pending.done.set()

    def _write(self, batch: list[_Pending]) -> list[Outcome]:
        import redis as redis_module

        try:
            if not self._group_checked:
                # The group must exist before the first entry (created at 0, so it sees everything);
                # producers write with NOMKSTREAM afterwards, so a deleted stream fails loudly
                # instead of coming back without its group.
                ensure_group(self._client, self.keys)
                self._group_checked = True
            pipe = self._client.pipeline(transaction=False)
            for pending in batch:
                pipe.xadd(self.keys.work, pending.fields, nomkstream=True)  # type: ignore[arg-type]
            replies: list[Any] = pipe.execute(raise_on_error=False)
        except (redis_module.RedisError, OSError) as exc:
            self._warn(exc)
            return [_retry_for(exc)] * len(batch)
        results = []
        for reply in replies:
            if isinstance(reply, Exception):
                self._warn(reply)
                results.append(_retry_for(reply))
            elif reply is None:
                self._group_checked = False  # the stream vanished: recreate stream and group, then retry
                results.append(Outcome.retry(None, reason="redis_stream_missing"))
            else:
                self.entries_written += 1
                results.append(Outcome.delivered())
        return results

    def _warn(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 10.0:
            self._last_warning = now
            log.warning("ciotrack fleet: XADD to %s failed (%s: %s); retrying", self.keys.work,
                        type(exc).__name__, str(exc)[:200])

    def probe(self) -> bool:
        import redis as redis_module

        try:
            return bool(self._client.ping())
        except (redis_module.RedisError, OSError):
            return False

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


def _retry_for(exc: BaseException) -> Outcome:
    import redis as redis_module

    if isinstance(exc, redis_module.TimeoutError):
        return Outcome.retry(None, reason="redis_timeout")
    if isinstance(exc, (redis_module.ConnectionError, OSError)):
        return Outcome.retry(None, reason="redis_connection")
    text = str(exc)
    code = text.split(" ", 1)[0] if text else type(exc).__name__
    # LOADING, BUSY, OOM, MISCONF, READONLY (a failover), NOGROUP ...: all pass with time. Retrying
    # (then spooling) never loses a batch; a final answer would.
    return Outcome.retry(None, reason=f"redis_{code.lower()}"[:40])


class RedisStreams:
    """``Tracker(redis_url=...)``'s destination factory: ``region -> RedisStreamDestination``, all on
    one Redis client (its connection pool reconnects by itself, also after a fork)."""

    def __init__(self, url: str, site_id: str, *, prefix: str = "ciotrack") -> None:
        try:
            import redis  # noqa: F401
        except ModuleNotFoundError:
            from ciotrack.errors import ConfigError

            raise ConfigError("redis_url needs redis-py: pip install 'ciotrack[fleet]'") from None
        self._url = url
        self._site_id = site_id
        self._prefix = prefix
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # the URL may carry a password
        return f"RedisStreams(site_id={self._site_id!r})"

    def __call__(self, region: str) -> RedisStreamDestination:
        with self._lock:
            if self._client is None:
                self._client = connect(self._url)
            client = self._client
        # "auto" (no region lookup without credentials): the worker's --region decides.
        return RedisStreamDestination(client, self._site_id, region=region, prefix=self._prefix)
