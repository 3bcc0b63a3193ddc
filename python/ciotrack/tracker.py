"""``ciotrack.Tracker``: the public API. Each call is one native core call on the caller's thread.

A call encodes, stamps, validates and queues one Track API v2 operation, and returns ``None`` in about
a microsecond. It raises only for bad input (:mod:`ciotrack.errors`: ``SerializationError`` is a
``TypeError``, ``InvalidValueError``/``LimitError`` are ``ValueError``s, each naming the field), and
nothing is queued then. Delivery problems never raise here: they reach ``on_error``/``on_drop`` and
the log. Calls after ``close()`` are dropped and counted (``on_drop("closed", 1)``).

Routing: every method takes ``region="us"|"eu"`` to override the tracker's routing for that call;
otherwise ``region_for`` (if configured) picks the region from the customer id (for ``track_anonymous``:
the anonymous id), else the tracker's default region. Note for ``identify``: an attribute literally
named ``region`` must go in the ``attributes`` dict, since the keyword is the routing override.
"""

from __future__ import annotations

import asyncio
import math
import os
import weakref
from collections.abc import Collection, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Unpack

from ciotrack import _core, lifecycle
from ciotrack.capturing import active_sink
from ciotrack.config import Config
from ciotrack.destinations.base import Destination
from ciotrack.errors import ConfigError, EndpointUnreachableError, InvalidValueError, SerializationError
from ciotrack.flush_outcome import FlushResult, counts
from ciotrack.losses import Reason
from ciotrack.options import TrackerOptions
from ciotrack.pipeline import Pipeline
from ciotrack.redact import redacted_url
from ciotrack.stats import Stats

__all__ = ["Tracker"]

CustomerId = str | int
Timestamp = int | float | datetime | None

_DEDUPED = _core.DEDUPED
_FULL = _core.FULL
_FORKED = _core.FORKED
_CLOSED = _core.CLOSED
_PLATFORMS = ("ios", "android")
# Native bound methods shadowing these, active while the tracker runs (see _bind_fast_calls).
_FAST_CALLS = ("track", "track_anonymous", "page", "screen", "identify")
_MERGE_ID_TYPES = ("id", "email", "cio_id")


def _show(value: object, limit: int = 60) -> str:
    """``repr`` for an error message, safe for any object (a raising ``__repr__`` must not replace
    our documented error with its own)."""
    try:
        text = repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _last_used(value: object) -> int | datetime:
    """``device.last_used`` is integer unix seconds in the Track API: checked here, at the call, not
    refused later by Customer.io in a 207 that only ``on_error`` sees. A datetime is converted by the
    core, as an event's timestamp is."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValueError(f"last_used: must be a finite timestamp, got {value}")
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SerializationError(f"last_used: must be int, float or datetime (unix seconds), not "
                                 f"{type(value).__name__!r}")
    if not -(1 << 63) <= value < 1 << 63:
        raise InvalidValueError("last_used: int does not fit in 64 bits")
    return value


def _device_attributes(value: object) -> dict[Any, Any]:
    """``device.attributes`` is a flat map in the Track API (string values such as ``app_version``):
    a nested object or list is refused at the call, naming its key. Scalars go as given (the official
    client sends its keywords so, and ``push_enabled=True`` is common); the core checks each one."""
    if not isinstance(value, Mapping):
        raise SerializationError(f"attributes: must be a mapping of device attributes, not {type(value).__name__!r}")
    for key, item in value.items():
        if isinstance(item, (Mapping, list, tuple)):
            raise SerializationError(f"attributes[{_show(key)}]: device attributes are a flat map of strings, not "
                                     f"a nested {type(item).__name__!r}")
    return dict(value)


def _id_text(value: str | int) -> str:
    # The base types' own conversions: a subclass overriding __str__/__repr__ cannot raise here.
    return str.__str__(value) if isinstance(value, str) else int.__repr__(value)


class Tracker:
    """Sends people, events and devices to Customer.io's Track API from background threads.

    ``Tracker(site_id, api_key, region="us", endpoint=None, **options)``: arguments left as None come
    from ``CIOTRACK_*`` environment variables (see :class:`ciotrack.config.Config` for every option and
    its default; the options are typed, :class:`ciotrack.options.TrackerOptions`); ``region`` defaults to
    ``CIOTRACK_REGION`` or ``"us"``. Sender threads start on the first call. Use it as a context
    manager (leaving the block closes it within ``exit_timeout``), or call :meth:`close` (at
    interpreter exit, queued operations are delivered within ``exit_timeout`` anyway).

    Inside ``ciotrack.testing.capture_all()`` (the ``ciotrack_capture`` pytest fixture opens one) or
    with ``CIOTRACK_CAPTURE=1``, a new Tracker records into memory instead: nothing is sent.
    """

    _records_itself = False  # CaptureTracker: already a capture, capture_all() leaves it alone

    def __init__(
        self,
        site_id: str | None = None,
        api_key: str | None = None,
        *,
        region: str | None = None,
        endpoint: str | None = None,
        config: Config | None = None,
        **options: Unpack[TrackerOptions],
    ) -> None:
        if config is not None and (site_id is not None or api_key is not None or region is not None
                                   or endpoint is not None or options):
            raise ConfigError("pass either config= or individual options, not both")
        sink = None if self._records_itself else active_sink()
        capture = None if sink is None else sink.new_capture()
        if config is None:
            extra: dict[str, Any] = dict(options)
            if capture is not None:
                extra["destination"] = capture  # no credentials needed, none sent anywhere
            config = Config.from_env(site_id=site_id, api_key=api_key, region=region, endpoint=endpoint, **extra)
        if capture is not None:
            # Like a CaptureTracker: delivered on read (no thread, nothing at exit), no spool, no pacing.
            config = config.replace(destination=capture, sync=True, disabled=False, rate_limit=0.0, limiter=None,
                                    spool_dir=None, spool=None)
        self._config = config
        self._closed = False
        self._build()
        lifecycle.register_tracker(self)
        if sink is not None and capture is not None:
            sink.adopt(self, capture)

    def _build(self) -> None:
        self._unbind_fast_calls()
        pipeline = Pipeline(self._config)
        self._pipeline = pipeline
        self._core = pipeline.core
        self._lane_of = pipeline.lane_of
        self._region_for = self._config.region_for
        self._running = False  # hot-path flag: False until the first call starts the senders, and after close
        self._bind_fast_calls()
        # The pipeline must outlive a collected Tracker long enough to deliver its queue.
        self._finalizer = weakref.finalize(self, pipeline.release)
        self._finalizer.atexit = False  # lifecycle's own exit handler closes it, with a deadline
        lifecycle.register_pipeline(pipeline)

    @classmethod
    def from_config(cls, config: Config) -> Tracker:
        return cls(config=config)

    @property
    def config(self) -> Config:
        return self._config

    def __repr__(self) -> str:
        c = self._config
        destination = c.destination
        if destination is None:
            where = f"endpoint={redacted_url(c.endpoint_for('us' if c.region == 'auto' else c.region))!r}"
        else:  # the destination's name, never its repr (a user's object may show its own secrets)
            name = getattr(destination, "name", None)
            where = f"destination={name if isinstance(name, str) else type(destination).__name__!r}"
        return f"<ciotrack.Tracker site_id={c.site_id!r} region={c.region!r} {where} closed={self._closed}>"

    # -- slow paths (kept out of the methods so they stay a handful of bytecodes) -----------------

    def _start(self) -> bool:
        """First call (start the senders) or a call after close (dropped). True to go on."""
        if self._closed:
            self._pipeline.losses.drop(Reason.CLOSED, 1)
            # Throttled (one line per interval however many calls): a call after close() is usually a
            # shutdown-order bug (a request still running after the app's shutdown hook).
            self._pipeline.losses.log.warning("closed", "ciotrack: a call on %r after close(); dropped (counted in "
                                              "stats().dropped['closed'])", self)
            return False
        self._pipeline.start()
        self._running = True
        fast: _core.FastCalls | None = self.__dict__.get("_fast_calls")
        if fast is not None:
            fast.activate()
        return True

    def _bind_fast_calls(self) -> None:
        """Without ``region_for``, ``tracker.track`` & co are the native bound methods of a
        ``_core.FastCalls`` (``FastCalls.entry``: a positional call skips even pyo3's argument parsing;
        instance attributes shadow the methods below; bound at build time, so a
        ``track = tracker.track`` taken before the first call is fast too): once the tracker runs, the
        call goes from the call site into Rust without this class's Python frame, about 0.2 us less
        per call. They run the methods below for anything but the common call (the first call,
        ``region=``, a refusal code, after ``close()``/a fork), so behaviour, checks and messages
        are these methods'."""
        if self._region_for is not None:
            return
        fast = _core.FastCalls(self._core, self)
        self._fast_calls = fast
        cls = type(self)
        for name in _FAST_CALLS:
            # A subclass that overrides the method keeps its override (it would be shadowed).
            if getattr(cls, name) is Tracker.__dict__[name]:
                self.__dict__[name] = fast.entry(name)

    def _unbind_fast_calls(self) -> None:
        fast: _core.FastCalls | None = self.__dict__.pop("_fast_calls", None)
        if fast is not None:
            fast.retire()  # a caller may hold `tracker.track` itself: it takes the Python path now
        for name in _FAST_CALLS:
            self.__dict__.pop(name, None)

    def _lane(self, key: Any, region: str | None) -> int:
        if region is None:
            route = self._region_for
            if route is None:
                return 0
            if isinstance(route, Mapping):
                try:
                    region = route.get(key)
                except Exception:  # an unhashable (or hostile) id is in no mapping; the core rejects it next
                    region = None
            else:
                region = route(key)
            if region is None:
                return 0
        if not isinstance(region, str):
            raise ConfigError(f"region must be 'us' or 'eu', got a {type(region).__name__}")
        lane = self._lane_of.get(region)
        if lane is None:
            if region == self._config.region:
                return 0
            raise ConfigError(f"region {_show(region)} is not enabled for this tracker (regions in use: "
                              f"{sorted(self._lane_of)}); pass regions=, endpoints= or region_for=")
        return lane

    def _refused(self, code: int, method: str, *args: Any) -> None:
        if code == _CLOSED:  # the call passed its "open" check just before close() sealed the core
            self._pipeline.losses.drop(Reason.CLOSED, 1)
            return
        if code == _FORKED:
            # A fork that skipped os.register_at_fork (a C-level fork): rebuild here, then try once more.
            self._rebuild_after_fork()
            if self._closed or not self._start():
                return
            code = getattr(self._core, method)(*args)
            if not code or code == _DEDUPED:
                return
        if code == _FULL:  # the core counts it (dropped_full); tell the hook and the log
            if self._config.disabled:
                self._core.lane(args[0]).clear()
                return
            # Counted by the core already (dropped_full); the ledger tells the hook and the log.
            self._pipeline.losses.drop(Reason.QUEUE_FULL, 1, counted=True, detail=f"policy {self._config.on_full}")
        elif code == _FORKED:
            self._pipeline.losses.log.warning("forked",
                                              "ciotrack: core still reports FORKED after a rebuild; operation dropped")

    # -- the API ----------------------------------------------------------------------------------

    def identify(
        self, customer_id: CustomerId, attributes: Mapping[str, Any] | None = None, /, *,
        region: str | None = None, **attrs: Any,
    ) -> None:
        """Create or update a person. ``attributes`` and keyword attributes are merged (keywords win)."""
        if not self._running and not self._start():
            return
        if attrs:
            attributes = {**attributes, **attrs} if attributes else attrs
        lane = 0 if region is None and self._region_for is None else self._lane(customer_id, region)
        code = self._core.identify(lane, customer_id, attributes)
        if code:
            self._refused(code, "identify", lane, customer_id, attributes)

    def track(
        self, customer_id: CustomerId, name: str, data: Mapping[str, Any] | None = None, *,
        id: str | None = None, timestamp: Timestamp = None, region: str | None = None,
    ) -> None:
        """An event for a person. ``id`` (a ULID) is generated when None; retries reuse it."""
        if not self._running and not self._start():
            return
        lane = 0 if region is None and self._region_for is None else self._lane(customer_id, region)
        code = self._core.event(lane, "event", customer_id, None, name, data, id, timestamp)
        if code:
            self._refused(code, "event", lane, "event", customer_id, None, name, data, id, timestamp)

    def track_anonymous(
        self, anonymous_id: str, name: str, data: Mapping[str, Any] | None = None, *,
        id: str | None = None, timestamp: Timestamp = None, region: str | None = None,
    ) -> None:
        """An event for a visitor not identified yet (linked later by an identify with ``anonymous_id``)."""
        if anonymous_id is None:  # as the native fast path says it (the core would take None as "not given")
            raise SerializationError("anonymous_id: must be a str, not 'NoneType'")
        if not self._running and not self._start():
            return
        lane = 0 if region is None and self._region_for is None else self._lane(anonymous_id, region)
        code = self._core.event(lane, "event", None, anonymous_id, name, data, id, timestamp)
        if code:
            self._refused(code, "event", lane, "event", None, anonymous_id, name, data, id, timestamp)

    def page(
        self, customer_id: CustomerId, url: str, data: Mapping[str, Any] | None = None, *,
        id: str | None = None, timestamp: Timestamp = None, region: str | None = None,
    ) -> None:
        """A page view (``action: page``, ``name`` = the URL or path)."""
        if not self._running and not self._start():
            return
        lane = 0 if region is None and self._region_for is None else self._lane(customer_id, region)
        code = self._core.event(lane, "page", customer_id, None, url, data, id, timestamp)
        if code:
            self._refused(code, "event", lane, "page", customer_id, None, url, data, id, timestamp)

    def screen(
        self, customer_id: CustomerId, name: str, data: Mapping[str, Any] | None = None, *,
        id: str | None = None, timestamp: Timestamp = None, region: str | None = None,
    ) -> None:
        """A mobile screen view (``action: screen``)."""
        if not self._running and not self._start():
            return
        lane = 0 if region is None and self._region_for is None else self._lane(customer_id, region)
        code = self._core.event(lane, "screen", customer_id, None, name, data, id, timestamp)
        if code:
            self._refused(code, "event", lane, "screen", customer_id, None, name, data, id, timestamp)

    def _person(self, action: str, customer_id: CustomerId, fields: Mapping[str, Any] | None,
                region: str | None) -> None:
        if not self._running and not self._start():
            return
        lane = 0 if region is None and self._region_for is None else self._lane(customer_id, region)
        code = self._core.person(lane, action, customer_id, fields)
        if code:
            self._refused(code, "person", lane, action, customer_id, fields)

    def delete(self, customer_id: CustomerId, *, region: str | None = None) -> None:
        """Delete a person."""
        self._person("delete", customer_id, None, region)

    def suppress(self, customer_id: CustomerId, *, region: str | None = None) -> None:
        """Delete a person and refuse their id from now on."""
        self._person("suppress", customer_id, None, region)

    def unsuppress(self, customer_id: CustomerId, *, region: str | None = None) -> None:
        self._person("unsuppress", customer_id, None, region)

    def add_device(
        self, customer_id: CustomerId, device_id: str, platform: str, *, last_used: Timestamp = None,
        attributes: Mapping[str, Any] | None = None, region: str | None = None,
    ) -> None:
        """Add or update a push device (``device.token`` = ``device_id``; platform ``ios``/``android``).
        ``last_used``: unix seconds (int, float or datetime); ``attributes``: a flat mapping (the API's
        device attributes are strings, e.g. ``{"app_version": "1.2"}``)."""
        if not isinstance(device_id, str) or not device_id:
            raise InvalidValueError("device_id: must be a non-empty str")
        if not isinstance(platform, str) or platform not in _PLATFORMS:
            raise InvalidValueError(f"platform: must be 'ios' or 'android', got {_show(platform)}")
        device: dict[str, Any] = {"token": device_id, "platform": platform}
        if last_used is not None:
            device["last_used"] = _last_used(last_used)
        if attributes is not None:
            device["attributes"] = _device_attributes(attributes)
        self._person("add_device", customer_id, {"device": device}, region)

    def delete_device(self, customer_id: CustomerId, device_id: str, *, region: str | None = None) -> None:
        if not isinstance(device_id, str) or not device_id:
            raise InvalidValueError("device_id: must be a non-empty str")
        self._person("delete_device", customer_id, {"device": {"token": device_id}}, region)

    def merge_customers(
        self, primary_id_type: str, primary_id: CustomerId, secondary_id_type: str, secondary_id: CustomerId, *,
        region: str | None = None,
    ) -> None:
        """Merge the secondary person into the primary (which must exist). Id types: id, email, cio_id."""
        for label, id_type, value in (("primary", primary_id_type, primary_id),
                                      ("secondary", secondary_id_type, secondary_id)):
            if not isinstance(id_type, str) or id_type not in _MERGE_ID_TYPES:
                raise InvalidValueError(f"{label}_id_type: must be one of {_MERGE_ID_TYPES}, got {_show(id_type)}")
            if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
                raise InvalidValueError(f"{label}_id: must be a non-empty str or int")
        op = {"type": "person", "action": "merge", "primary": {str.__str__(primary_id_type): _id_text(primary_id)},
              "secondary": {str.__str__(secondary_id_type): _id_text(secondary_id)}}
        self._raw(op, primary_id, region)

    def send_operation(self, op: Mapping[str, Any], *, region: str | None = None) -> None:
        """Queue one raw Track API v2 operation (the drop-in ``CustomerIO.batch``). Only the 32 KB
        operation limit is checked; Customer.io's answer to a malformed op reaches ``on_error``.
        ``region_for`` routes by ``op["identifiers"]["id"]`` when present."""
        key: Any = None
        if region is None and self._region_for is not None and isinstance(op, Mapping):
            identifiers = op.get("identifiers")
            key = identifiers.get("id") if isinstance(identifiers, Mapping) else None
        self._raw(op, key, region)

    def _raw(self, op: Mapping[str, Any], key: Any, region: str | None) -> None:
        if not self._running and not self._start():
            return
        lane = 0 if region is None and (self._region_for is None or key is None) else self._lane(key, region)
        code = self._core.raw(lane, op)
        if code:
            self._refused(code, "raw", lane, op)

    # -- delivery control -------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Deliver what is queued now. True once every operation accepted before the call is delivered
        or finally failed; False if ``timeout`` seconds passed first."""
        return self._pipeline.flush(timeout)

    def flush_result(self, timeout: float | None = None) -> FlushResult:
        """``flush`` that says how it went: :class:`~ciotrack.flush_outcome.FlushResult` with ``done`` (what
        ``flush`` returns) and the operations delivered, failed, dropped and spooled during the call, plus
        ``problem``, the delivery problem still going on (``connection refused to http://...``), if any.
        ``result.ok`` is True only when everything was delivered. The counts are the tracker's (calls on
        other threads during the flush count too)."""
        before = counts(self._pipeline.stats())
        done = self._pipeline.flush(timeout)
        return FlushResult.between(before, counts(self._pipeline.stats()), done=done,
                                   problem=self._pipeline.router.problem())

    def check(self, timeout: float = 5.0) -> None:
        """One authenticated, read-only request per region (``GET /api/v1/accounts/region``, redirects not
        followed) for a startup health check. Raises a :class:`~ciotrack.errors.CheckError` (a
        ``ConfigError``) naming the cause: ``CredentialsError`` (401/403), ``RegionMismatchError``,
        ``EndpointRedirectError``, ``EndpointUnreachableError``. The API key is never in the message.
        A ``disabled`` tracker passes; one with an injected destination asks its ``probe()``."""
        from ciotrack.preflight import check_config

        destination = self._config.destination
        if self._config.disabled or destination is None:
            check_config(self._config, timeout)
            return
        for region in self._config.regions_in_use():
            target = destination if isinstance(destination, Destination) else self._pipeline.router.destination(region)
            if not target.probe():
                raise EndpointUnreachableError(f"destination {target.name!r} (region {region}) did not answer its "
                                               "probe")
            if isinstance(destination, Destination):
                return

    async def flush_async(self, timeout: float | None = None) -> bool:
        """``flush`` in a worker thread, so an event loop keeps running meanwhile."""
        return await asyncio.to_thread(self._pipeline.flush, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Flush within ``timeout`` seconds (None: until every batch is delivered or finally failed),
        stop the senders, close the Session. Idempotent; later calls are dropped and counted."""
        self._refuse_calls()
        self._finalizer.detach()
        return self._pipeline.close(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> Stats:
        """A typed snapshot of counters, gauges and histograms (:class:`ciotrack.stats.Stats`)."""
        return self._pipeline.stats()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # The script's exit, so the exit deadline: close() with no timeout would keep retrying for up
        # to retry_budget when Customer.io is down. What is left is spooled or reported, as at exit.
        self.close(self._config.exit_timeout)

    # -- lifecycle hooks --------------------------------------------------------------------------

    def _closed_by_exit(self, pipelines: Collection[Pipeline]) -> None:
        """Exit closes ``pipelines``: if ours is one, later calls (daemon threads') are dropped and counted."""
        if any(pipeline is self._pipeline for pipeline in pipelines):
            self._refuse_calls()

    def _refuse_calls(self) -> None:
        """From now on every call is dropped and counted (``closed``), on the native path too."""
        self._closed, self._running = True, False
        self._unbind_fast_calls()

    def _rebuild_after_fork(self) -> None:
        """In a forked child: a fresh pipeline (empty queue, new locks and Session, threads on the next
        call). The parent's queued operations stay the parent's to deliver. Once per child: a tracker
        already rebuilt in this process (an event tracked from an at-fork hook that ran before ours)
        keeps what it queued."""
        old = self._pipeline
        if old.pid == os.getpid():
            return
        old.forget_after_fork()
        self._finalizer.detach()
        if self._closed:
            return
        self._build()
