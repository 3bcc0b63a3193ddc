"""The emulator's reporting-webhook sender: signed webhooks, as Customer.io would post them.

For the messages of its workspaces: every event the emulator stores for a person is treated as
the trigger of a message, which yields ``email`` sent/delivered/opened webhooks when the person has
an email and ``push`` ones when it has devices. ``synthetic=True`` makes up events of every object
type instead, at the configured rate, for load tests that need no Track API traffic.

Misbehaviour on demand, as shares of the sent webhooks: ``duplicate_share`` re-sends an earlier
event, re-signed with a fresh timestamp (what Customer.io's retries look like);
``replay_share`` re-sends an earlier request byte for byte, original timestamp and signature (an
attacker's replay); ``forged_share`` sends a fresh event with a wrong signature. ``send_forged()``
sends one forged request now. Every request is kept in ``sent()`` with the status it got.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ciotrack.lifecycle import block_exit_signals
from ciotrack.webhooks.blast import Poster
from ciotrack.webhooks.samples import METRICS_BY_TYPE, OBJECT_TYPES, event_payload
from ciotrack.webhooks.signature import sign

if TYPE_CHECKING:
    from ciotrack.emulator.emulator import Emulator

logger = logging.getLogger("ciotrack.emulator")

WORKSPACE_METRICS = ("sent", "delivered", "opened")


@dataclass(slots=True)
class SentWebhook:
    kind: str  # "event", "duplicate", "replay" or "forged"
    event_id: str
    body: bytes
    headers: dict[str, str]
    status: int | None  # None: no answer (connection error)
    seconds: float


class WebhookSender:
    """Posts signed reporting webhooks to ``url`` at ``rate`` per second, in a thread.

    ``source``: the emulator whose workspaces' messages are reported (None with ``synthetic``).
    ``limit``: stop after this many requests (None: until ``stop()``)."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        source: Emulator | None = None,
        synthetic: bool = False,
        rate: float = 100.0,
        duplicate_share: float = 0.0,
        replay_share: float = 0.0,
        forged_share: float = 0.0,
        limit: int | None = None,
        seed: int | None = None,
        keep: int = 10_000,
    ) -> None:
        if rate <= 0:
            raise ValueError("the webhook rate must be positive")
        if source is None and not synthetic:
            raise ValueError("a webhook sender needs a source emulator or synthetic=True")
        for name, share in (("duplicate", duplicate_share), ("replay", replay_share), ("forged", forged_share)):
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"the {name} share must be between 0 and 1")
        self.url = url
        self._secret = secret
        self.source = source
        self.synthetic = synthetic
        self.rate = rate
        self.duplicate_share = duplicate_share
        self.replay_share = replay_share
        self.forged_share = forged_share
        self.limit = limit
        self._random = random.Random(seed)
        self._poster = Poster(url)
        self._lock = threading.Lock()
        self._sent: collections.deque[SentWebhook] = collections.deque(maxlen=keep)
        self._history: collections.deque[SentWebhook] = collections.deque(maxlen=1000)  # for dups/replays
        self._counts: collections.Counter[str] = collections.Counter()
        self._covered: dict[tuple[str, str], int] = {}  # (site_id, cio_id) -> events already reported
        self._stored_seen: dict[str, int] = {}  # site_id -> events_stored at the last scan
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:  # never the secret
        return f"WebhookSender(url={self.url!r}, rate={self.rate}, synthetic={self.synthetic})"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> WebhookSender:
        if self._thread is not None:
            raise RuntimeError("webhook sender already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ciotrack-emulator-webhooks", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._poster.close()

    def __enter__(self) -> WebhookSender:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection --------------------------------------------------------------------------

    def sent(self) -> list[SentWebhook]:
        with self._lock:
            return list(self._sent)

    def stats(self) -> dict[str, int]:
        """Requests by kind (event, duplicate, replay, forged), by status (``status:<n>``), errors."""
        with self._lock:
            return dict(self._counts)

    def wait_sent(self, n: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._counts["requests"] >= n:
                    return True
            time.sleep(0.01)
        return False

    # -- sending -----------------------------------------------------------------------------

    def send_forged(self, how: str = "bad_signature") -> SentWebhook:
        """Send one forged webhook now: ``bad_signature``, ``stale`` (correctly signed, an hour old),
        ``future`` (an hour ahead), ``missing_signature`` or ``tampered`` (signed, body altered)."""
        payload = event_payload(*self._pick_type_metric())
        body = json.dumps(payload, separators=(",", ":")).encode()
        ts = int(time.time())
        if how == "stale":
            ts -= 3600
        elif how == "future":
            ts += 3600
        headers = {"X-CIO-Timestamp": str(ts), "X-CIO-Signature": sign(body, self._secret, ts),
                   "Content-Type": "application/json"}
        if how == "bad_signature":
            headers["X-CIO-Signature"] = sign(body, self._secret + "-forged", ts)
        elif how == "missing_signature":
            del headers["X-CIO-Signature"]
        elif how == "tampered":
            body = body.replace(b'"metric":"', b'"metric":"x', 1)
        elif how not in ("stale", "future"):
            raise ValueError(f"unknown forgery {how!r}")
        return self._post("forged", payload["event_id"], body, headers)

    def _pick_type_metric(self) -> tuple[str, str]:
        object_type = self._random.choice(OBJECT_TYPES)
        return object_type, self._random.choice(METRICS_BY_TYPE[object_type])

    def _post(self, kind: str, event_id: str, body: bytes, headers: dict[str, str]) -> SentWebhook:
        started = time.perf_counter()
        status = self._poster.post(body, headers)
        record = SentWebhook(kind, event_id, body, headers, status, time.perf_counter() - started)
        with self._lock:
            self._sent.append(record)
            self._counts["requests"] += 1
            self._counts[kind] += 1
            self._counts["errors" if status is None else f"status:{status}"] += 1
            if kind == "event":
                self._history.append(record)
        return record

    def _signed(self, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload, separators=(",", ":")).encode()
        ts = int(time.time())
        return body, {"X-CIO-Timestamp": str(ts), "X-CIO-Signature": sign(body, self._secret, ts),
                      "Content-Type": "application/json"}

    def _next_payloads(self) -> Iterator[dict[str, Any]]:
        """New payloads from the workspaces (or made up), without blocking."""
        if self.synthetic:
            yield event_payload(*self._pick_type_metric(), customer_id=str(self._random.randint(1, 10**6)))
            return
        assert self.source is not None
        for site_id in self.source.workspace_ids():
            ws = self.source.workspace(site_id)
            # Scan the people (under the workspace's lock, which the server needs too) only when
            # the workspace stored events since the last scan.
            stored = ws.events_stored
            if self._stored_seen.get(site_id) == stored:
                continue
            self._stored_seen[site_id] = stored
            with ws.lock:
                people = [(p.cio_id, p.key(), len(p.events), p.attributes.get("email"), bool(p.devices))
                          for p in ws.people.values()]
            for cio_id, customer_id, n_events, email, has_devices in people:
                done = self._covered.get((site_id, cio_id), 0)
                if n_events <= done:
                    continue
                self._covered[(site_id, cio_id)] = n_events
                for _ in range(n_events - done):
                    channels = (["email"] if email else []) + (["push"] if has_devices else [])
                    for channel in channels:
                        delivery = f"dlv_{site_id}_{cio_id}_{self._random.getrandbits(40):010x}"
                        for metric in WORKSPACE_METRICS:
                            yield event_payload(channel, metric, customer_id=customer_id,
                                                email=email if isinstance(email, str) else None,
                                                delivery_id=delivery)

    def _one(self) -> None:
        roll = self._random.random()
        history: list[SentWebhook] = []
        if roll < self.duplicate_share + self.replay_share:
            with self._lock:  # re-send one of the last 100 genuine ones
                history = list(itertools.islice(reversed(self._history), 100))
        if history and roll < self.duplicate_share:
            original = self._random.choice(history)
            body, headers = self._signed(json.loads(original.body))
            self._post("duplicate", original.event_id, body, headers)
            return
        roll -= self.duplicate_share
        if history and roll < self.replay_share:
            original = self._random.choice(history)
            self._post("replay", original.event_id, original.body, dict(original.headers))
            return
        roll -= self.replay_share
        if roll < self.forged_share:
            self.send_forged()
            return
        if not self._queue:
            self._queue.extend(self._next_payloads())
        if self._queue:
            payload = self._queue.popleft()
            body, headers = self._signed(payload)
            self._post("event", payload["event_id"], body, headers)

    def _run(self) -> None:
        block_exit_signals()  # signals belong to the embedding process's main thread (lifecycle.py)
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        sent = 0
        while not self._stop.is_set() and (self.limit is None or sent < self.limit):
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            next_at += interval
            before = self._counts["requests"]
            try:
                self._one()
            except Exception:  # a sender thread must not die silently in the middle of a test
                logger.exception("emulator webhook sender: sending failed")
            if self._counts["requests"] == before:
                next_at = max(next_at, time.monotonic() + 0.05)  # nothing to report yet: poll gently
            else:
                sent += 1
