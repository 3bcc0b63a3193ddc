"""Routes: each queue lane of a pipeline with where its batches go (destination, limiter, delivery loop).

A lane serves one region (``us``, ``eu``) or ``auto`` (resolved by ``GET /api/v1/accounts/region``
at the first send). Each region gets one destination and one limiter, shared by every sender thread
and by every lane of that region: a 429 pauses the region's limiter for all of them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ciotrack._core import Batch, Core, Lane
from ciotrack.concurrency import (
    UNLIMITED_MAX_IN_FLIGHT,
    AdaptiveConcurrency,
    Concurrency,
    ConcurrencyState,
    FixedConcurrency,
)
from ciotrack.config import Config
from ciotrack.delivery import Deliverable, Delivery, Health, Job
from ciotrack.delivery_watch import DeliveryWatch, enable_debug_lines
from ciotrack.destinations.base import Destination, Outcome
from ciotrack.destinations.http import capped_timeout, deadline_passed, time_left
from ciotrack.destinations.track_v2 import TrackV2Destination, lookup_region, make_session
from ciotrack.ratelimit import Limiter, local_limiter
from ciotrack.retry import RetryPolicy

__all__ = ["RegionPending", "Route", "Router"]

log = logging.getLogger("ciotrack.sender")

SplitHook = Callable[["Route", Deliverable, Job, Job], None]


class RegionPending(Exception):
    """``region="auto"``: an inline flush's deadline cut the region lookup short. Nothing was bound (a
    timeout there says nothing about the account's region); the job is parked, the next delivery asks."""


class Route:
    """A lane of the core plus where its batches go. ``route`` is ``us``, ``eu`` or ``auto``."""

    __slots__ = ("index", "route", "region", "lane", "delivery", "in_flight", "parked", "last_take", "concurrency")

    def __init__(self, index: int, route: str, lane: Lane, concurrency: Concurrency) -> None:
        self.index = index
        self.route = route
        self.region: str | None = None if route == "auto" else route
        self.lane = lane
        self.delivery: Delivery | None = None
        self.in_flight: dict[int, Batch] = {}  # id(batch) -> batch: taken, not finished
        self.parked: list[Job] = []  # jobs a sync flush left at its deadline, with their retry state
        self.last_take = -1e18
        self.concurrency = concurrency
        """How many of this lane's batches may be in flight at once (fixed, or adaptive)."""

    @property
    def name(self) -> str:
        return self.region or self.route

    def idle_wait(self, min_bytes: int, timeout: float, linger: float, *, no_slot: bool) -> None:
        """A sender found nothing to do on any lane: sleep until this lane may have a batch (``min_bytes``
        queued, or its oldest operation lingered ``linger`` s), at most ``timeout`` s. With ``no_slot``
        (more threads than slots: the limit shrank) sleep until the limit grows or close(), never spin:
        every wake-up is a GIL hand-over the application pays for."""
        if no_slot:
            self.concurrency.wait_for_slot(5.0)
            return
        if len(self.lane):
            timeout = min(timeout, max(0.001, self.last_take + linger - time.monotonic()))
        self.lane.wait(min_bytes, timeout)


class Router:
    """Builds and owns the destinations, limiters and delivery loops of a pipeline's routes."""

    def __init__(self, config: Config, core: Core, *, stop: threading.Event, health: Health | None,
                 on_split: SplitHook) -> None:
        self.config = config
        self.on_grow: Callable[[Concurrency], None] | None = None
        """Adds a sender thread when a limit grew and every thread is busy (the pipeline's pool)."""
        routes = config.regions_in_use()
        self.routes = [Route(i, route, core.lane(i), _concurrency(config)) for i, route in enumerate(routes)]
        self.session = make_session(config.senders or config.max_in_flight, hosts=len(routes),
                                    user_agent_suffix=config.user_agent)
        self._full_batch = max(1, int(config.batch_bytes * 0.9))
        self.policy = RetryPolicy(config.max_retries, config.retry_budget, config.backoff_base, config.backoff_cap,
                                  config.retry_after_cap)
        self.destinations: dict[str, Destination] = {}
        self.limiters: dict[str, Limiter] = {}
        self.watches: dict[str, DeliveryWatch] = {}
        """One per destination (region): logs what goes wrong as it happens, and the recovery."""
        if config.debug:
            enable_debug_lines()
        self._core = core
        self._stop = stop
        self._health = health
        self._on_split = on_split
        self._lock = threading.Lock()
        for route in self.routes:
            # An injected destination has no region to look up: an "auto" lane keeps the name "auto".
            if route.region is not None or config.destination is not None:
                self.bind(route, route.region)
        if health is not None and health.destination is None:  # lane 0 is "auto": probe "us" meanwhile
            health.destination = self.destination("us")

    def destination(self, region: str) -> Destination:
        destination = self.destinations.get(region)
        if destination is None:
            injected = self.config.destination
            if injected is None:
                destination = TrackV2Destination.from_config(self.config, region, self.session)
            elif isinstance(injected, Destination):
                destination = injected
            else:
                destination = injected(region)
            self.destinations[region] = destination
        return destination

    def bind(self, route: Route, region: str | None) -> Delivery:
        """Give ``route`` its region's destination, limiter and delivery loop."""
        route.region = region
        name = route.name
        destination = self.destination(name)
        limiter = self.limiters.get(name)
        if limiter is None:
            c = self.config
            if c.limiter is not None:
                limiter = self.limiters[name] = c.limiter(name)
            elif c.rate_limit > 0:
                limiter = self.limiters[name] = local_limiter(c.rate_limit, c.rate_burst)
        if route.index == 0 and self._health is not None:
            self._health.destination = destination
        on_split = self._on_split

        def split(parent: Deliverable, first: Job, second: Job) -> None:
            on_split(route, parent, first, second)

        concurrency, lane, full_batch = route.concurrency, route.lane, self._full_batch

        rate = self.config.rate_limit if limiter is not None else None

        def response(latency: float, outcome: Outcome) -> None:
            # No answer (refused, reset, timed out) is no latency sample; a 429 halves the limit.
            concurrency.observe(latency if outcome.status is not None else None, throttled=outcome.status == 429,
                                demand=lane.queued_bytes() >= full_batch,
                                rate_bound=limiter is not None and limiter.tokens() < 1.0, rate=rate)

        def sending() -> None:
            # Slow start: a request sent before the first answer, with full batches waiting and every
            # slot taken, opens a slot, and a sender thread to fill it.
            if concurrency.sending(demand=lane.queued_bytes() >= full_batch) and self.on_grow is not None:
                self.on_grow(concurrency)

        delivery = Delivery(destination, limiter=limiter, policy=self.policy, stop=self._stop, recorder=self._core,
                            health=self._health, on_split=split, on_response=response, on_send=sending,
                            watch=self._watch(name, destination))
        route.delivery = delivery
        return delivery

    def _watch(self, name: str, destination: Destination) -> DeliveryWatch:
        watch = self.watches.get(name)
        if watch is None:
            routes = self.routes

            def queue_depth() -> int:  # queued or in flight, in every lane sending to this region
                return sum(len(r.lane) + sum(b.count for b in list(r.in_flight.values()))
                           for r in routes if r.name == name)

            endpoint = str(getattr(destination, "url", "") or f"destination {destination.name!r}")
            watch = self.watches[name] = DeliveryWatch(endpoint=endpoint, region=name, site_id=self.config.site_id,
                                                       queue_depth=queue_depth, debug=self.config.debug)
        return watch

    def problem(self) -> str | None:
        """What currently keeps delivery from working (``connection refused to http://...``), or None."""
        problems = [p for p in (w.problem() for w in list(self.watches.values())) if p]
        return "; ".join(problems) or None

    def delivery(self, route: Route) -> Delivery:
        """The route's delivery loop; an "auto" route looks its region up first (once)."""
        delivery = route.delivery
        if delivery is not None:
            return delivery
        with self._lock:
            if route.delivery is not None:
                return route.delivery
            c = self.config
            left = time_left()  # an inline (sync=True) flush's deadline holds for the lookup too
            timeout = c.timeout if left is None else capped_timeout(c.timeout, left)
            region = lookup_region(self.session, c.endpoint_for("us"), c.site_id, c.api_key,
                                   timeout=timeout, proxies=c.proxies, verify=c.verify)
            if region is None and deadline_passed():
                raise RegionPending
            if region is None:
                log.warning("ciotrack: region='auto' could not determine the account's region; sending to 'us'")
                region = "us"
            return self.bind(route, region)

    def close_limiters(self) -> None:
        """Wake every sender waiting for a token (with False) or a slot: the pipeline is stopping."""
        for limiter in self.limiters.values():
            limiter.close()
        for route in self.routes:
            route.concurrency.close()

    def close(self) -> None:
        for destination in self.destinations.values():
            try:
                destination.close()
            except Exception:
                log.warning("ciotrack: closing destination %r failed", destination, exc_info=True)
        self.session.close()

    def lane_for(self, region: str) -> int | None:
        """The lane serving ``region`` (None: not a region this pipeline serves)."""
        for route in self.routes:
            if route.region == region or route.route == region:
                return route.index
        # Written before an "auto" route was resolved: the workspace's default region is lane 0.
        return 0 if region == "auto" else None

    def concurrency(self) -> dict[str, ConcurrencyState]:
        return {route.name: route.concurrency.state() for route in self.routes}

    def tokens(self) -> dict[str, float]:
        return {region: limiter.tokens() for region, limiter in list(self.limiters.items())}


def _concurrency(config: Config) -> Concurrency:
    if config.senders is not None:
        return FixedConcurrency(config.senders)
    if config.rate_limit <= 0 and config.limiter is None:
        # No rate limit, no throughput target: only the latency gradient would stop the growth, and
        # on a fast link every extra sender thread costs the application GIL time. Stay modest.
        return AdaptiveConcurrency(max_limit=min(UNLIMITED_MAX_IN_FLIGHT, config.max_in_flight), initial=1)
    return AdaptiveConcurrency(max_limit=config.max_in_flight, initial=1, slow_start=True)
