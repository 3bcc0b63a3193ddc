"""The tracker's configuration: one frozen, typed object with documented defaults.

Precedence for every option: an explicit argument (not None) wins over the environment, which wins over
the default. Environment variables read by :meth:`Config.from_env`:

=========================  =========================================================
``CIOTRACK_SITE_ID``       ``site_id``
``CIOTRACK_API_KEY``       ``api_key``
``CIOTRACK_REGION``        ``region`` (``us``, ``eu`` or ``auto``)
``CIOTRACK_ENDPOINT``      ``endpoint`` (a base URL such as ``http://127.0.0.1:8080``)
``CIOTRACK_SENDERS``       ``senders`` (a fixed concurrency; unset: adaptive)
``CIOTRACK_RATE_LIMIT``    ``rate_limit`` (requests/s; ``0`` disables)
``CIOTRACK_EXIT_TIMEOUT``  ``exit_timeout`` (seconds)
``CIOTRACK_DISABLED``      ``disabled`` (``1``/``true``/``yes``: calls validate but send nothing)
``CIOTRACK_SYNC``          ``sync``
``CIOTRACK_DEBUG``         ``debug`` (one DEBUG line per request on ``ciotrack.http``)
``CIOTRACK_SPOOL_DIR``     ``spool_dir``
``CIOTRACK_REDIS_URL``     ``redis_url`` (fleet mode: batches go to a Redis stream)
``CIOTRACK_RATE_LIMIT_REDIS_URL``  ``rate_limit_redis_url`` (one rate limit shared through Redis)
=========================  =========================================================

The API key is a secret: it is excluded from ``repr``/``str`` and never appears in a log line or an
error message (tests hold us to it). The Redis URLs are left out of the repr too, and the passwords of
proxy and endpoint URLs are shown as ``***``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ciotrack.concurrency import MAX_IN_FLIGHT_BOUND
from ciotrack.destinations.base import Destination
from ciotrack.errors import ConfigError, DeliveryError
from ciotrack.redact import redacted_url

if TYPE_CHECKING:
    from ciotrack.ratelimit import Limiter

__all__ = ["DEFAULT_ENDPOINTS", "REGIONS", "Config", "SpoolHook"]

Region = Literal["us", "eu"]
OverflowPolicy = Literal["drop_newest", "drop_oldest", "block", "spool"]
REGIONS: tuple[Region, ...] = ("us", "eu")
DEFAULT_ENDPOINTS: Mapping[str, str] = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}
_OVERFLOW_POLICIES = ("drop_newest", "drop_oldest", "block", "spool")
_DEDUP_EVENT_MODES = ("id", "composite", "off")
_MAX_BATCH_BYTES = 500_000

RegionFor = Callable[[Any], "str | None"] | Mapping[Any, str]
ErrorHook = Callable[[DeliveryError], None]
DropHook = Callable[[str, int], None]


class SpoolHook(Protocol):
    """Where operations go when they cannot be delivered now (``spool_dir``'s disk spool is one)."""

    def append(self, ops: Sequence[bytes], *, region: str = "us") -> int | None:
        """The number of ``ops`` it took (None: all); it reports those it did not take itself."""
        ...


@dataclass(frozen=True, kw_only=True)
class Config:
    """Everything a :class:`ciotrack.Tracker` needs. Build it with :meth:`from_env` or directly."""

    site_id: str
    """Workspace Site ID: the Basic-auth user of the Track API."""
    api_key: str = field(repr=False)
    """Track API key: the Basic-auth password. Never shown in repr, logs or errors."""
    region: Literal["us", "eu", "auto"] = "us"
    """Default data center. ``auto`` asks ``GET /api/v1/accounts/region`` once, at the first send
    (falling back to ``us`` with a warning when that fails)."""
    endpoint: str | None = None
    """One base URL for every region (a local emulator, a proxy); replaces the Customer.io hosts."""
    endpoints: Mapping[str, str] | None = None
    """Per-region base URLs, e.g. ``{"us": ..., "eu": ...}``; win over ``endpoint``."""
    region_for: RegionFor | None = None
    """Routes a person to a region: a callable ``customer_id -> "us"|"eu"|None`` or a mapping.
    None (or a missing key) means the default region. Setting it enables both regions."""
    regions: tuple[Region, ...] | None = None
    """Regions a per-call ``region=`` may name. Default: the default region, the keys of ``endpoints``,
    and both regions when ``region_for`` is set. Each region costs one queue lane."""
    timeout: float | tuple[float, float] = (5.0, 15.0)
    """Per-request timeout in seconds: one number or ``(connect, read)``."""
    proxies: Mapping[str, str] | None = None
    """``requests`` proxies mapping, e.g. ``{"https": "http://proxy:3128"}``."""
    verify: bool | str = True
    """TLS verification: True, False, or a CA bundle path."""
    senders: int | None = None
    """A fixed number of requests in flight (sender threads). None (the default): adaptive — the
    number grows while full batches wait and the rate limit has room, and shrinks when latency rises
    or a 429 arrives, up to ``max_in_flight`` (see :mod:`ciotrack.concurrency`). Pass ``senders=1``
    for strictly ordered delivery."""
    max_in_flight: int = 64
    """Cap of adaptive concurrency per region (and the connection pool's size), 1..128: 100 requests/s
    at 300 ms need 30-35 in flight; the controller stays far below the cap on a nearer workspace."""
    flush_interval: float = 0.2
    """Linger: the longest a queued operation waits for its batch to fill before a partial batch goes."""
    batch_bytes: int = _MAX_BATCH_BYTES
    """Largest request body (Customer.io allows 500,000 bytes)."""
    max_queue_bytes: int = 64 * 1024 * 1024
    """Bound of each region's queue in encoded bytes."""
    max_queue_ops: int = 1_000_000
    """Bound of each region's queue in operations."""
    on_full: OverflowPolicy | None = None
    """What a call does when the queue is full: ``spool`` (to ``spool_dir``), ``drop_newest``,
    ``drop_oldest`` or ``block`` (up to ``block_timeout``). None (the default) means ``spool`` when
    ``spool_dir`` is set, else ``drop_newest``; the built Config always holds the resolved policy.
    Every drop is counted and reported to ``on_drop``."""
    block_timeout: float = 0.1
    """Under ``on_full="block"``: the longest a call waits for room before dropping."""
    max_retries: int = 8
    """Retries of one batch (429, 5xx, connection errors, timeouts) before it is given up."""
    retry_budget: float = 120.0
    """No retry starts later than this many seconds after the batch's first attempt."""
    backoff_base: float = 0.2
    """First retry delay (seconds), doubled per retry, jittered."""
    backoff_cap: float = 10.0
    """Largest computed backoff delay."""
    retry_after_cap: float = 60.0
    """A ``Retry-After`` longer than this is cut to it."""
    exit_timeout: float = 5.0
    """At interpreter exit, the longest ciotrack waits to deliver what is still queued."""
    rate_limit: float = 100.0
    """Requests per second per region (token bucket shared by all senders); 0 disables."""
    rate_burst: float = 5.0
    """Token bucket size: requests that may go back to back after an idle period. Kept below the
    server's own burst (the emulator's 10) on purpose: at an equal rate, the difference is the slack
    that absorbs network jitter, so paced requests never arrive "too early" and draw a 429 (which costs
    a whole ``Retry-After``, at least 1 s)."""
    dedup_ttl: float = 300.0
    """Window of identify and event dedup in seconds; 0 disables both."""
    dedup_max_entries: int = 100_000
    """Memory bound of the dedup set (oldest evicted first)."""
    dedup_events: Literal["id", "composite", "off"] = "id"
    """Event dedup: by event id, by customer+name+data, or not at all."""
    on_error: ErrorHook | None = None
    """Called (on a sender thread) with a :class:`~ciotrack.errors.DeliveryError` for operations that
    finally failed. Exceptions it raises are logged, never propagated (except a ``SystemExit`` or
    ``KeyboardInterrupt`` on the application's own thread, outside ``close()``: the loss is counted,
    then it goes on)."""
    on_drop: DropHook | None = None
    """Called with ``(reason, count)`` when operations are dropped before sending: ``queue_full``
    (``drop_newest``, or ``block`` past ``block_timeout``), ``evicted_oldest`` (``drop_oldest``),
    ``spool_evicted`` (the spool's size cap), ``spool_full`` (operations the spool refused: no room
    under its cap), ``spool_deleted`` (spooled operations whose file
    someone else deleted), ``spool_damaged`` (spooled operations in a record that failed its checksum
    on replay), ``closed`` (a call after ``close()``), ``shutdown``
    (still queued at the exit deadline, no spool), ``released`` (a collected Tracker, no sender),
    ``dead_letter`` (spooled operations that kept failing on replay, set aside in a ``*.dead`` file)."""
    metrics: bool = True
    """Record histograms (counters are always kept: they cost one atomic add)."""
    debug: bool = False
    """Log one DEBUG line per request on ``ciotrack.http`` (URL, status, ms, operations, bytes; never the key
    or the body), and set that logger to DEBUG unless the application set its level."""
    disabled: bool = False
    """Validate calls, send nothing (tests, local development). No credentials needed."""
    sync: bool = False
    """No background thread: calls queue, ``flush()``/``close()`` deliver on the calling thread."""
    user_agent: str | None = None
    """Appended to ``User-Agent: ciotrack/<version>``."""
    spool_dir: str | os.PathLike[str] | None = None
    """Directory of the disk spool: operations that cannot be delivered now (Customer.io unreachable
    past the retry budget, the queue full under ``on_full="spool"``, exit before delivery finished)
    are written there and replayed, with their original ids, at the next start or when the API
    recovers. One subdirectory per ``site_id``; processes may share it. None: no spool."""
    spool_max_bytes: int = 1 << 30
    """Size cap of the spool (per ``site_id``); past it the oldest segments are evicted, counted
    and reported (``on_drop("spool_evicted", n)``)."""
    spool_fsync: bool = False
    """fsync every spool write: survives a power loss too, at a large cost per write."""
    destination: Destination | Callable[[str], Destination] | None = field(default=None, repr=False)
    """Where batches go instead of Customer.io's Track API: a :class:`~ciotrack.destinations.Destination`
    (every region's batches), or a factory ``region -> Destination`` called once per region in use
    (``"auto"`` is not looked up then: that lane's factory call gets ``"auto"``). No credentials are
    needed with one. ``close()`` closes the destinations."""
    limiter: Callable[[str], Limiter] | None = field(default=None, repr=False)
    """A factory ``region -> Limiter`` (:mod:`ciotrack.ratelimit`) pacing each region's requests instead
    of the in-process bucket of ``rate_limit``/``rate_burst`` (e.g. a limiter shared through Redis)."""
    redis_url: str | None = field(default=None, repr=False)  # may hold a Redis password
    """Fleet mode (``pip install 'ciotrack[fleet]'``): batches go to the workspace's Redis stream
    (``redis://host:6379/0``), and ``ciotrack worker`` processes deliver them to Customer.io under one
    shared rate limit. ``flush()`` returning True then means *durable in Redis*, not delivered;
    ``stats().destination`` says ``"redis"``. Writes to Redis are not paced by ``rate_limit`` (the
    workers pace the requests), a Redis outage is retried then spooled like a Customer.io outage, and
    the API key is not needed here and never written to Redis."""
    rate_limit_redis_url: str | None = field(default=None, repr=False)
    """Share ``rate_limit``/``rate_burst`` with every process sending to this workspace through the
    Redis at this URL (GCRA on Redis' clock, :mod:`ciotrack.fleet.limiter`), instead of a bucket per
    process. Falls back to a local bucket while Redis is unreachable."""
    spool: SpoolHook | None = field(default=None, repr=False)
    """Where undeliverable operations go instead of being reported lost, when ``spool_dir`` is not set:
    any object with ``append(ops, *, region)`` (no replay: the object owns them from then on)."""
    handle_sigterm: bool = True
    """Turn SIGTERM into a normal exit (``SystemExit(143)``) so the exit handler delivers or spools
    what is queued, when no other SIGTERM handler is installed (checked once, in the main thread)."""

    def __post_init__(self) -> None:
        if self.on_full is None:
            object.__setattr__(self, "on_full", "spool" if self.spool_dir is not None else "drop_newest")
        _validate(self)
        if self.redis_url is not None and self.destination is None:
            from ciotrack.fleet.producer import RedisStreams

            object.__setattr__(self, "destination", RedisStreams(self.redis_url, self.site_id))
            object.__setattr__(self, "rate_limit", 0.0)  # the workers pace requests, not the producers
        if self.rate_limit_redis_url is not None and self.limiter is None and self.rate_limit > 0:
            from ciotrack.fleet.limiter import RedisLimiters

            object.__setattr__(self, "limiter", RedisLimiters(self.rate_limit_redis_url, self.site_id,
                                                              self.rate_limit, self.rate_burst))

    def __repr__(self) -> str:
        # The dataclass repr, with the userinfo of every URL hidden: a proxy URL (or an endpoint)
        # may carry a password, which must not reach a log line any more than the API key.
        shown = []
        for f in dataclasses.fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.name in _URL_OPTIONS and value is not None:
                value = _redacted(value)
            shown.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    @property
    def destination_kind(self) -> str:
        """``"redis"`` (fleet mode), ``"custom"`` (an injected destination) or ``"track_api"``."""
        if self.redis_url is not None:
            return "redis"
        return "track_api" if self.destination is None else "custom"

    @property
    def overflow_policy(self) -> OverflowPolicy:
        """``on_full`` as resolved (never None)."""
        return self.on_full or "drop_newest"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build from ``CIOTRACK_*`` variables; keyword arguments that are not None win over them."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (var, parse) in _ENV_OPTIONS.items():
            raw = env.get(var)
            if raw is not None and raw != "":
                try:
                    values[name] = parse(raw)
                except ValueError:
                    raise ConfigError(f"{var}: cannot parse {raw!r} as {name}") from None
        known = {f.name for f in dataclasses.fields(cls)}
        for name, value in overrides.items():
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else " (see ciotrack.config.Config for every option)"
                raise ConfigError(f"unknown option {name!r}{hint}")
            if value is not None:
                values[name] = value
        if values.get("disabled") or values.get("destination") is not None:
            values.setdefault("site_id", "")
            values.setdefault("api_key", "")
        if values.get("redis_url"):
            values.setdefault("api_key", "")  # the workers hold the key; producers never need it
        for required in ("site_id", "api_key"):
            if required not in values:
                var = _ENV_OPTIONS[required][0]
                raise ConfigError(f"{required} is required (argument or {var})")
        return cls(**values)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def endpoint_for(self, region: str) -> str:
        """Base URL (no trailing slash) of ``region``'s Track API."""
        if self.endpoints and region in self.endpoints:
            return self.endpoints[region].rstrip("/")
        if self.endpoint:
            return self.endpoint.rstrip("/")
        return DEFAULT_ENDPOINTS[region]

    def regions_in_use(self) -> tuple[str, ...]:
        """Routes of the queue lanes, lane 0 first: the default region (or ``auto``), then the others."""
        routes: list[str] = [self.region]
        extra: list[str] = list(self.regions or ())
        if self.endpoints:
            extra.extend(self.endpoints)
        if self.region_for is not None:
            extra.extend(REGIONS)
        for region in extra:
            if region not in routes:
                routes.append(region)
        return tuple(routes)


_URL_OPTIONS = ("endpoint", "endpoints", "proxies")


def _redacted(value: Any) -> Any:
    """A URL, or a mapping of URLs, as a repr may show it (see :func:`ciotrack.redact.redacted_url`)."""
    if isinstance(value, str):
        return redacted_url(value)
    if isinstance(value, Mapping):
        return {key: redacted_url(url) if isinstance(url, str) else url for key, url in value.items()}
    return value


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


_ENV_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "site_id": ("CIOTRACK_SITE_ID", str),
    "api_key": ("CIOTRACK_API_KEY", str),
    "region": ("CIOTRACK_REGION", lambda raw: raw.strip().lower()),
    "endpoint": ("CIOTRACK_ENDPOINT", str),
    "senders": ("CIOTRACK_SENDERS", int),
    "rate_limit": ("CIOTRACK_RATE_LIMIT", float),
    "exit_timeout": ("CIOTRACK_EXIT_TIMEOUT", float),
    "disabled": ("CIOTRACK_DISABLED", _parse_bool),
    "sync": ("CIOTRACK_SYNC", _parse_bool),
    "debug": ("CIOTRACK_DEBUG", _parse_bool),
    "spool_dir": ("CIOTRACK_SPOOL_DIR", str),
    "redis_url": ("CIOTRACK_REDIS_URL", str),
    "rate_limit_redis_url": ("CIOTRACK_RATE_LIMIT_REDIS_URL", str),
}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _check_url(name: str, url: object) -> None:
    _check(isinstance(url, str) and url.startswith(("http://", "https://")) and len(url) > 8,
           f"{name} must be an http:// or https:// URL, got {url!r}")


def _validate(config: Config) -> None:
    # Messages name the option and show the offending value, except for the API key, whose value is
    # never shown (not even its type's repr could leak it, but keep the rule simple: never).
    _check(config.destination is None or isinstance(config.destination, Destination) or callable(config.destination),
           "destination must be a Destination (send, probe, close, name) or a callable region -> Destination")
    _check(config.limiter is None or callable(config.limiter), "limiter must be a callable region -> Limiter")
    _check(config.spool is None or callable(getattr(config.spool, "append", None)),
           "spool must have an append(ops, *, region) method")
    for name in ("redis_url", "rate_limit_redis_url"):
        url = getattr(config, name)
        _check(url is None or (isinstance(url, str) and url.startswith(("redis://", "rediss://", "unix://"))),
               f"{name} must be a redis://, rediss:// or unix:// URL")
    if config.redis_url is not None or config.rate_limit_redis_url is not None:
        _check(isinstance(config.site_id, str) and config.site_id.strip() != "",
               "site_id must be a non-empty str (it names the Redis keys)")
    if not config.disabled and config.destination is None and config.redis_url is None:
        _check(isinstance(config.site_id, str) and config.site_id.strip() != "", "site_id must be a non-empty str")
        _check(isinstance(config.api_key, str) and config.api_key.strip() != "", "api_key must be a non-empty str")
        # Basic auth travels as latin-1: a pasted zero-width space or a typographic quote would make
        # every request fail on our side. Say so now (never showing the key itself).
        for name in ("site_id", "api_key"):
            text: str = getattr(config, name)
            bad = next((i for i, ch in enumerate(text) if ord(ch) > 0xFF or ord(ch) < 0x20), None)
            _check(bad is None, f"{name} has a character HTTP cannot carry at position {bad} (a pasted invisible "
                   "or typographic character?)")
    _check(config.region in ("us", "eu", "auto"), f"region must be 'us', 'eu' or 'auto', got {config.region!r}")
    if config.endpoint is not None:
        _check_url("endpoint", config.endpoint)
    if config.endpoints is not None:
        _check(isinstance(config.endpoints, Mapping), "endpoints must be a mapping region -> URL")
        for region, url in config.endpoints.items():
            _check(region in REGIONS, f"endpoints: unknown region {region!r} (use 'us' or 'eu')")
            _check_url(f"endpoints[{region!r}]", url)
    if config.regions is not None:
        _check(all(r in REGIONS for r in config.regions), f"regions must name 'us'/'eu', got {config.regions!r}")
    if config.region_for is not None:
        _check(callable(config.region_for) or isinstance(config.region_for, Mapping),
               "region_for must be a callable or a mapping")
    timeout = config.timeout
    if isinstance(timeout, tuple):
        _check(len(timeout) == 2 and all(_is_number(t) and t > 0 for t in timeout),
               f"timeout must be a positive number or (connect, read), got {timeout!r}")
    else:
        _check(_is_number(timeout) and timeout > 0,
               f"timeout must be a positive number or (connect, read), got {timeout!r}")
    _check(config.proxies is None or isinstance(config.proxies, Mapping), "proxies must be a mapping scheme -> URL")
    _check(isinstance(config.verify, (bool, str)), f"verify must be a bool or a CA bundle path, got {config.verify!r}")
    _check(config.senders is None or (isinstance(config.senders, int) and not isinstance(config.senders, bool)
                                      and 1 <= config.senders <= 64),
           f"senders must be None (adaptive) or 1..64, got {config.senders!r}")
    _check(isinstance(config.max_in_flight, int) and not isinstance(config.max_in_flight, bool)
           and 1 <= config.max_in_flight <= MAX_IN_FLIGHT_BOUND,
           f"max_in_flight must be 1..{MAX_IN_FLIGHT_BOUND}, got {config.max_in_flight!r}")
    _check(_is_number(config.flush_interval) and 0 < config.flush_interval <= 60,
           f"flush_interval must be in (0, 60] seconds, got {config.flush_interval!r}")
    _check(isinstance(config.batch_bytes, int) and 1024 <= config.batch_bytes <= _MAX_BATCH_BYTES,
           f"batch_bytes must be 1024..{_MAX_BATCH_BYTES}, got {config.batch_bytes!r}")
    _check(isinstance(config.max_queue_bytes, int) and config.max_queue_bytes >= 65536,
           f"max_queue_bytes must be >= 65536, got {config.max_queue_bytes!r}")
    _check(isinstance(config.max_queue_ops, int) and config.max_queue_ops >= 1,
           f"max_queue_ops must be >= 1, got {config.max_queue_ops!r}")
    _check(config.on_full in _OVERFLOW_POLICIES, f"on_full must be one of {_OVERFLOW_POLICIES}, got {config.on_full!r}")
    _check(config.dedup_events in _DEDUP_EVENT_MODES,
           f"dedup_events must be one of {_DEDUP_EVENT_MODES}, got {config.dedup_events!r}")
    _check(isinstance(config.max_retries, int) and config.max_retries >= 0,
           f"max_retries must be >= 0, got {config.max_retries!r}")
    _check(isinstance(config.dedup_max_entries, int) and config.dedup_max_entries >= 1,
           f"dedup_max_entries must be >= 1, got {config.dedup_max_entries!r}")
    for name in ("block_timeout", "retry_budget", "backoff_base", "backoff_cap", "retry_after_cap", "exit_timeout",
                 "rate_limit", "dedup_ttl"):
        value = getattr(config, name)
        _check(_is_number(value) and value >= 0, f"{name} must be a number >= 0, got {value!r}")
    _check(_is_number(config.rate_burst) and config.rate_burst >= 1,
           f"rate_burst must be >= 1, got {config.rate_burst!r}")
    for hook in ("on_error", "on_drop"):
        _check(getattr(config, hook) is None or callable(getattr(config, hook)), f"{hook} must be callable")
    _check(config.user_agent is None or isinstance(config.user_agent, str), "user_agent must be a str")
    _check(config.spool_dir is None or isinstance(config.spool_dir, (str, os.PathLike)),
           f"spool_dir must be a path or None, got {config.spool_dir!r}")
    _check(isinstance(config.spool_max_bytes, int) and config.spool_max_bytes >= 65536,
           f"spool_max_bytes must be >= 65536, got {config.spool_max_bytes!r}")
