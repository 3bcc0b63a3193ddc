"""One adapter per benchmarked client, all with the same small surface.

``track`` and ``identify`` are the client's own bound methods wherever its positional signature is
``(customer_id, name, properties)`` / ``(customer_id, traits)``, so a timed call pays for nothing but
the client. PostHog's keyword-only API and the official client's ``**attrs`` need a one-line wrapper
(about 60 ns, noted in the README).

Settings are each client's defaults, except:
* the in-memory queue bound is raised to ``QUEUE_CAPACITY`` events for every queueing client, so no
  measurement silently drops events (the peers' default of 10,000 would drop most of a backlog);
* the request timeout is ``timeout`` seconds for all, so a stalled receiver does not trigger retries
  during a memory measurement;
* ciotrack runs without its token bucket (``rate_limit=0``): the local receivers do not rate-limit and
  the peers have no bucket.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

QUEUE_CAPACITY = 4_000_000
CIOTRACK_OPTIONS: dict[str, Any] = {
    "rate_limit": 0,
    "max_queue_ops": QUEUE_CAPACITY,
    "max_queue_bytes": 2 * 1024 * 1024 * 1024,
}
KINDS = ("ciotrack", "segment", "posthog", "cdp", "customerio")
# The label each kind goes by in tables: the PyPI distribution name.
LABELS = {
    "ciotrack": "ciotrack",
    "segment": "segment-analytics-python",
    "posthog": "posthog",
    "cdp": "customerio-cdp-analytics",
    "customerio": "customerio (sync)",
}

TrackFn = Callable[[str, str, dict[str, Any]], Any]
IdentifyFn = Callable[[str, dict[str, Any]], Any]


class BenchClient:
    """What the measurements need from a client. Subclasses bind ``track``/``identify`` in __init__."""

    kind = ""
    synchronous = False
    track: TrackFn
    identify: IdentifyFn

    def flush(self) -> None:
        """Return once everything accepted so far is delivered (or finally failed)."""

    def queue_depth(self) -> int:
        """Events still queued in the client, or -1 when the client does not say."""
        return 0

    def close(self) -> None:
        """Flush and stop the client's threads."""

    def version(self) -> str:
        return "?"


class CiotrackClient(BenchClient):
    kind = "ciotrack"

    def __init__(self, url: str, timeout: float, site_id: str, api_key: str, options: dict[str, Any]) -> None:
        import ciotrack

        self._ciotrack = ciotrack
        self._tracker = ciotrack.Tracker(site_id, api_key, endpoint=url, timeout=timeout,
                                         **{**CIOTRACK_OPTIONS, **options})
        self.track = self._tracker.track
        self.identify = self._tracker.identify

    def flush(self) -> None:
        if not self._tracker.flush(timeout=600):
            raise RuntimeError("ciotrack flush timed out after 600 s")

    def queue_depth(self) -> int:
        core = getattr(self._tracker, "_core", None)
        if core is None:
            return -1
        return sum(len(core.lane(i)) for i in range(core.lanes))

    def close(self) -> None:
        self._tracker.close(timeout=30)

    def version(self) -> str:
        return str(getattr(self._ciotrack, "__version__", "?"))


class SegmentClient(BenchClient):
    kind = "segment"

    def __init__(self, url: str, timeout: float) -> None:
        from segment.analytics import Client  # type: ignore[import-not-found,import-untyped,unused-ignore]
        from segment.analytics.version import VERSION  # type: ignore[import-not-found,import-untyped,unused-ignore]

        self._version = str(VERSION)
        self._client = Client(write_key="bench-write-key", host=url, max_queue_size=QUEUE_CAPACITY, timeout=timeout)
        self.track = self._client.track
        self.identify = self._client.identify

    def flush(self) -> None:
        self._client.flush()

    def queue_depth(self) -> int:
        return int(self._client.queue.qsize())

    def close(self) -> None:
        self._client.shutdown()

    def version(self) -> str:
        return self._version


class CdpClient(BenchClient):
    """customerio-cdp-analytics: a fork of Segment's client that installs the module ``customerio``."""

    kind = "cdp"

    def __init__(self, url: str, timeout: float) -> None:
        from customerio.analytics import Client  # type: ignore[import-not-found,import-untyped,unused-ignore]
        from customerio.analytics.version import VERSION  # type: ignore[import-not-found,import-untyped,unused-ignore]

        self._version = str(VERSION)
        self._client = Client(write_key="bench-write-key", host=url, max_queue_size=QUEUE_CAPACITY, timeout=timeout)
        self.track = self._client.track
        self.identify = self._client.identify

    def flush(self) -> None:
        self._client.flush()

    def queue_depth(self) -> int:
        return int(self._client.queue.qsize())

    def close(self) -> None:
        self._client.shutdown()

    def version(self) -> str:
        return self._version


class PosthogClient(BenchClient):
    kind = "posthog"

    def __init__(self, url: str, timeout: float) -> None:
        from posthog import Posthog  # type: ignore[import-not-found,import-untyped,unused-ignore]
        from posthog.version import VERSION  # type: ignore[import-not-found,import-untyped,unused-ignore]

        self._version = str(VERSION)
        # No secret/personal key: no feature-flag poller, so the only background work is delivery.
        client = Posthog("phc_bench", host=url, max_queue_size=QUEUE_CAPACITY, timeout=timeout)
        self._client = client
        capture = client.capture
        set_properties = client.set

        def track(customer_id: str, name: str, properties: dict[str, Any]) -> Any:
            return capture(name, distinct_id=customer_id, properties=properties)

        def identify(customer_id: str, traits: dict[str, Any]) -> Any:
            return set_properties(distinct_id=customer_id, properties=traits)

        self.track = track
        self.identify = identify

    def flush(self) -> None:
        self._client.flush(timeout_seconds=None)

    def queue_depth(self) -> int:
        return int(self._client.queue.qsize())

    def close(self) -> None:
        self._client.shutdown()

    def version(self) -> str:
        return self._version


class OfficialCustomerIOClient(BenchClient):
    """customerio 3.2: one blocking HTTPS request per call, so there is no queue and no sender."""

    kind = "customerio"
    synchronous = True

    def __init__(self, url: str, timeout: float, site_id: str, api_key: str, ca_bundle: str | None) -> None:
        if ca_bundle:
            # customerio builds its own requests.Session; requests reads this for verify=True.
            os.environ["REQUESTS_CA_BUNDLE"] = ca_bundle
        from importlib.metadata import version

        from customerio import CustomerIO  # type: ignore[import-untyped,unused-ignore]

        parts = urlsplit(url)
        if parts.scheme != "https":
            raise ValueError("the official customerio client speaks https only: give it the TLS emulator")
        self._version = version("customerio")
        self._client = CustomerIO(site_id, api_key, host=parts.hostname, port=parts.port, timeout=timeout)
        self.track = self._client.track
        client_identify = self._client.identify

        def identify(customer_id: str, traits: dict[str, Any]) -> Any:
            return client_identify(customer_id, **traits)

        self.identify = identify

    def close(self) -> None:
        self._client.close()

    def version(self) -> str:
        return self._version


def open_client(kind: str, url: str, *, timeout: float = 60.0, site_id: str = "bench-site",
                api_key: str = "bench-key", ca_bundle: str | None = None,
                ciotrack_options: dict[str, Any] | None = None) -> BenchClient:
    if kind == "ciotrack":
        return CiotrackClient(url, timeout, site_id, api_key, ciotrack_options or {})
    if kind == "segment":
        return SegmentClient(url, timeout)
    if kind == "posthog":
        return PosthogClient(url, timeout)
    if kind == "cdp":
        return CdpClient(url, timeout)
    if kind == "customerio":
        return OfficialCustomerIOClient(url, timeout, site_id, api_key, ca_bundle)
    raise ValueError(f"unknown client kind {kind!r}; expected one of {', '.join(KINDS)}")
