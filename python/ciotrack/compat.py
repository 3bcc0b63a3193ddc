"""``ciotrack.CustomerIO``: a drop-in for the official ``customerio.CustomerIO`` (3.2) that sends in the background.

Replace ``from customerio import CustomerIO, CustomerIOException, Regions`` with
``from ciotrack import CustomerIO, CustomerIOException, Regions``. The constructor and every method keep the
official signatures, and the checks the official client makes before sending raise the same
``CustomerIOException`` with the same messages (blank ids, bad merge id types, an unparseable ``backfill``
timestamp, an empty ``batch``, an invalid region). Each call becomes one Track API v2 operation that leaves the
same people, attributes, events and devices in the workspace as the official v1 request does. The operation is
queued by a :class:`ciotrack.Tracker` and sent batched (``POST /api/v2/batch``) by its background sender.

Differences from the official client:

* Methods return ``None``, not a ``requests.Response``. Delivery problems are not raised: after the retries the
  failed operations go to the ``on_error`` hook (a :class:`ciotrack.errors.DeliveryError`) and the
  ``ciotrack`` log. Use ``flush(timeout)`` (ciotrack only) to wait for delivery.
* What Customer.io would refuse with a 400 is refused at the call, with ``CustomerIOException``: ciotrack
  checks the documented limits (id and attribute sizes, 300 attributes, event names), ULID event ids and
  device platforms (``ios``/``android``) itself. Values the official client cannot encode (``set``, ``inf``)
  raise ``CustomerIOException`` in both. ciotrack encodes more types (``date``, ``Decimal``, ``UUID``,
  ``Enum``, tuples) and rejects integers beyond 64 bits.
* ``track_anonymous`` needs an ``anonymous_id``: the v1 "invite" event (no anonymous id, ``recipient`` in
  ``data``) has no v2 form.
* ``batch(operations)`` checks every operation first (a JSON object that ciotrack can encode, 32 KB at most)
  and queues none if one fails; event-like operations (``event``/``page``/``screen``) without ``id`` or
  ``timestamp`` get a ULID and the current time, so retries cannot duplicate them. Operations Customer.io
  rejects (a 207 answer) reach ``on_error``; the others are delivered.
* ``close()`` flushes and stops the sender; a later call starts a new one (the official client likewise keeps
  working after ``close()``, which only drops its connections).
* ``host``/``port`` select ``https://host[:port]`` as the official client does (a scheme in ``host`` is
  dropped and https used). For a plain-http server such as the local emulator, pass the ciotrack option
  ``endpoint="http://127.0.0.1:8080"`` (it wins over ``host``/``port``/``region``). ``url_prefix`` only moved
  the official v1 paths; v2 is always ``/api/v2/batch``, so it is accepted and unused.
* ``timeout`` and ``retries`` become the tracker's ``timeout`` and ``max_retries``. ``backoff_factor`` becomes
  ``backoff_base`` only when set to something other than the official default 0.02 s (a background sender
  should not give up within 150 ms; ciotrack's default is 0.2 s, jittered, and 429s are retried too).
  ``json_encoder`` is ignored with the official ``DeprecationWarning``; ``use_connection_pooling`` is ignored
  (the tracker always keeps one pooled session).
* ``site_id`` and ``api_key`` are required when the client is made (or ``CIOTRACK_SITE_ID`` /
  ``CIOTRACK_API_KEY``); a missing one raises ``CustomerIOException`` there, not at the first request.
* Any other keyword is a :class:`ciotrack.Tracker` option (``endpoint``, ``on_error``, ``senders``, ...).
  Event and identify deduplication is off (``dedup_ttl=0``) unless you pass ``dedup_ttl``: the official
  client sends every call, and identical-identify dedup could skip re-creating a person deleted meanwhile.
  With ``senders`` > 1, batches may be delivered out of order.
* A v1 path identifier ``cio_<x>`` addresses the person whose cio_id is x; such calls become operations with
  ``identifiers: {"cio_id": x}``. Every other identifier is sent as the person's ``id``; a workspace that
  puts email addresses in v1 paths must send ``batch()`` operations with ``identifiers: {"email": ...}``.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from ciotrack import _core
from ciotrack.app_api import (
    APIClient,
    SendEmailRequest,
    SendInAppRequest,
    SendInboxMessageRequest,
    SendPushRequest,
    SendSMSRequest,
    SendWhatsAppRequest,
)
from ciotrack.errors import CiotrackError, LimitError
from ciotrack.official import CustomerIOException, Region, Regions
from ciotrack.stats import Stats
from ciotrack.tracker import Tracker

__all__ = [
    "CustomerIO", "CustomerIOException", "Region", "Regions",
    # transactional messages (App API), from ciotrack.app_api
    "APIClient", "SendEmailRequest", "SendInAppRequest", "SendInboxMessageRequest", "SendPushRequest",
    "SendSMSRequest", "SendWhatsAppRequest",
]



_ID_TYPES = frozenset({"id", "email", "cio_id"})
_EVENT_ACTIONS = frozenset({"event", "page", "screen"})
_OFFICIAL_BACKOFF_FACTOR = 0.02
# Everything the tracker raises for bad input. The official client wraps every exception of a request,
# encoding errors included, into CustomerIOException, so the drop-in does the same for its input errors.
_INPUT_ERRORS = (CiotrackError, TypeError, ValueError)


def _blank(value: Any) -> bool:
    return value is None or value == ""


def _unix(moment: datetime) -> int:
    """Seconds as the official client computes them: a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _official_json(value: Any) -> Any:
    """``value`` as the official client would put it on the wire: NaN becomes None (its sanitiser) and
    int/float/bool/None dict keys become strings (``json.dumps``). Returns ``value`` itself when nothing
    changes, so a caller can tell whether a retry is worth it."""
    cls = value.__class__
    if cls is float:
        return None if math.isnan(value) else value
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        changed = cls is not dict
        for key, item in value.items():
            new_key = key
            if key is None or isinstance(key, (bool, int, float)):
                new_key = "null" if key is None else "true" if key is True else "false" if key is False else (
                    repr(key) if isinstance(key, float) else str(key))
            new_item = _official_json(item)
            changed = changed or new_key is not key or new_item is not item
            out[new_key] = new_item
        return out if changed else value
    if cls is list or cls is tuple:
        items = [_official_json(item) for item in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value


def _customer_key(customer_id: Any) -> str | int:
    """The id for the tracker. Ids that are neither str nor int are sent as ``str(id)``, as they appear in
    the official client's URL. (``cio_<x>`` needs nothing here: the core addresses it by cio_id x.)"""
    cls = customer_id.__class__
    if cls is not str and cls is not int:
        return str(customer_id)
    return customer_id  # type: ignore[no-any-return]


def _event_timestamp(timestamp: Any) -> int | None:
    """The official ``track`` rule: datetimes and int-convertible values are used, anything else dropped.
    A bool is returned as it is, for the tracker to refuse: the official client sends it, and Customer.io
    refuses ``true`` as a timestamp; ``int(True)`` would have been January 1970."""
    if timestamp is None or timestamp.__class__ is int or timestamp.__class__ is bool:
        return timestamp
    if isinstance(timestamp, datetime):
        return _unix(timestamp)
    try:
        return int(timestamp)
    except (ValueError, TypeError, OverflowError):
        return None


def _check_name(name: Any, what: str) -> None:
    if not isinstance(name, str):
        raise CustomerIOException(f"{what} must be a str, got {type(name).__name__}")


class CustomerIO:
    """Official ``customerio.CustomerIO`` 3.2 signatures over a background :class:`ciotrack.Tracker`.

    See the module documentation for the differences. ``tracker_options`` are Tracker options, e.g.
    ``endpoint="http://127.0.0.1:8080"`` for the local emulator or ``on_error=callback``.
    """

    def __init__(
        self,
        site_id: str | None = None,
        api_key: str | None = None,
        host: str | None = None,
        region: Region = Regions.US,
        port: int | None = None,
        url_prefix: str | None = None,
        json_encoder: Any = None,
        retries: int = 3,
        timeout: float | tuple[float, float] | None = 10,
        backoff_factor: float = _OFFICIAL_BACKOFF_FACTOR,
        use_connection_pooling: bool = True,
        **tracker_options: Any,
    ) -> None:
        # The official client accepts its own Region namedtuple only; ciotrack also takes the official
        # client's Regions.US/EU (same fields), so half-migrated code keeps working.
        if not (isinstance(region, tuple) and isinstance(getattr(region, "name", None), str)
                and isinstance(getattr(region, "track_host", None), str)):
            raise CustomerIOException("invalid region provided")
        if json_encoder is not None:
            warnings.warn("With the switch to using requests library the `json_encoder` param is no longer used.",
                          DeprecationWarning, stacklevel=2)
        self.site_id = site_id
        self.region = region
        self.host = host or region.track_host
        self.port = port or 443
        self.url_prefix = url_prefix or "/api/v1"
        self.retries = retries
        self.timeout = timeout
        self.backoff_factor = backoff_factor
        self.use_connection_pooling = use_connection_pooling

        options: dict[str, Any] = {"dedup_ttl": 0.0}
        if timeout is not None:
            options["timeout"] = timeout
        if isinstance(retries, int) and not isinstance(retries, bool):
            options["max_retries"] = max(0, retries)
        if backoff_factor != _OFFICIAL_BACKOFF_FACTOR:
            options["backoff_base"] = backoff_factor
        options.update(tracker_options)
        if options.get("endpoint") is None and (host is not None or port is not None
                                                or region.name not in ("us", "eu")):
            options["endpoint"] = self._https_endpoint()
        options.setdefault("region", region.name if region.name in ("us", "eu") else "us")
        self._tracker_args: dict[str, Any] = {"site_id": site_id, "api_key": api_key, **options}
        self._reopen_lock = threading.Lock()
        try:
            self._tracker = Tracker(**self._tracker_args)
        except _INPUT_ERRORS as err:
            raise CustomerIOException(str(err)) from err

    def _https_endpoint(self) -> str:
        host = self.host.split("://", 1)[1] if "://" in self.host else self.host
        host = host.strip("/")
        return f"https://{host}" if self.port == 443 else f"https://{host}:{self.port}"

    @property
    def tracker(self) -> Tracker:
        """The :class:`ciotrack.Tracker` doing the work (a new one after ``close()`` and a later call)."""
        return self._tracker

    def __repr__(self) -> str:
        return f"<ciotrack.CustomerIO site_id={self.site_id!r} tracker={self._tracker!r}>"

    def _live(self) -> Tracker:
        tracker = self._tracker
        if tracker.closed:
            with self._reopen_lock:
                if self._tracker.closed:
                    self._tracker = Tracker(**self._tracker_args)
                tracker = self._tracker
        return tracker

    def _submit(self, send: Callable[[Any], None], payload: Any) -> None:
        """``send(payload)``; when the tracker refuses it, retry once with the payload normalised the way the
        official client sends it (NaN -> null, non-str keys -> str). Errors become CustomerIOException."""
        try:
            send(payload)
            return
        except LimitError as err:
            raise CustomerIOException(str(err)) from err
        except _INPUT_ERRORS as err:
            normalised = _official_json(payload)
            if normalised is payload:
                raise CustomerIOException(str(err)) from err
        try:
            send(normalised)
        except _INPUT_ERRORS as err:
            raise CustomerIOException(str(err)) from err

    # -- the official methods -------------------------------------------------------------------

    def identify(self, id: Any, **kwargs: Any) -> None:
        """Create or update a person with ``kwargs`` as attributes."""
        if _blank(id):
            raise CustomerIOException("id cannot be blank in identify")
        key = _customer_key(id)
        if "cio_relationships" not in kwargs:
            self._submit(lambda attrs: self._live().identify(key, attrs), kwargs)
            return
        # v2 carries relationships next to the attributes, not inside them; the core's identify has no
        # slot for them, so this rare shape goes as a person operation with its fields spelled out.
        attributes = dict(kwargs)
        fields = {"attributes": attributes, "cio_relationships": attributes.pop("cio_relationships"),
                  "timestamp": int(time.time())}
        self._submit(lambda payload: self._live()._person("identify", key, payload, None), fields)

    def track(self, customer_id: Any, name: str, data: Mapping[str, Any] | None = None, id: str | None = None,
              timestamp: Any = None) -> None:
        """An event for a person. ``timestamp``: a datetime or unix seconds; other values are dropped as the
        official client drops them."""
        if _blank(customer_id):
            raise CustomerIOException("customer_id cannot be blank in track")
        self._event("event", customer_id, name, data, id, _event_timestamp(timestamp))

    def track_anonymous(self, anonymous_id: Any, name: str, data: Mapping[str, Any] | None = None,
                        id: str | None = None, timestamp: Any = None) -> None:
        """An event for a visitor identified later by an identify with ``anonymous_id``."""
        if _blank(anonymous_id):
            raise CustomerIOException("anonymous_id cannot be blank in track_anonymous (ciotrack sends Track "
                                      "API v2, which has no anonymous event without an anonymous_id)")
        _check_name(name, "name")
        anonymous = str(anonymous_id) if anonymous_id.__class__ is not str else anonymous_id
        ts = _event_timestamp(timestamp)
        self._submit(lambda payload: self._live().track_anonymous(anonymous, name, payload or None, id=id,
                                                                  timestamp=ts), data)

    def pageview(self, customer_id: Any, page: str, **data: Any) -> None:
        """A page view (``name`` = the URL or path); ``data`` are its attributes."""
        if _blank(customer_id):
            raise CustomerIOException("customer_id cannot be blank in pageview")
        self._event("page", customer_id, page, data, None, None)

    def backfill(self, customer_id: Any, name: str, timestamp: Any, **data: Any) -> None:
        """An event at ``timestamp`` (a datetime or unix seconds); unparseable timestamps raise."""
        if _blank(customer_id):
            raise CustomerIOException("customer_id cannot be blank in backfill")
        if isinstance(timestamp, datetime):
            timestamp = _unix(timestamp)
        elif not isinstance(timestamp, int):
            try:
                timestamp = int(timestamp)
            except Exception as err:
                raise CustomerIOException(f"{timestamp} is not a valid timestamp ({err})") from err
        self._event("event", customer_id, name, data, None, timestamp)

    def _event(self, action: str, customer_id: Any, name: Any, data: Mapping[str, Any] | None, event_id: str | None,
               timestamp: int | None) -> None:
        _check_name(name, "page" if action == "page" else "name")
        key = _customer_key(customer_id)
        if action == "page":
            self._submit(lambda payload: self._live().page(key, name, payload or None, id=event_id,
                                                           timestamp=timestamp), data)
        else:
            self._submit(lambda payload: self._live().track(key, name, payload or None, id=event_id,
                                                            timestamp=timestamp), data)

    def delete(self, customer_id: Any) -> None:
        """Delete a person."""
        if _blank(customer_id):
            raise CustomerIOException("customer_id cannot be blank in delete")
        self._person("delete", customer_id)

    def suppress(self, customer_id: Any) -> None:
        if _blank(customer_id):
            raise CustomerIOException("customer_id cannot be blank in suppress")
        self._person("suppress", customer_id)

    def unsuppress(self, customer_id: Any) -> None:
        if _blank(customer_id):
            raise CustomerIOException("customer_id cannot be blank in unsuppress")
        self._person("unsuppress", customer_id)

    def _person(self, action: str, customer_id: Any) -> None:
        key = _customer_key(customer_id)
        method = getattr(self._live(), action)
        self._submit(lambda _: method(key), None)

    def add_device(self, customer_id: Any, device_id: str, platform: str, **data: Any) -> None:
        """Add or update a push device. ``last_used`` and ``attributes`` keep their meaning; any other keyword
        becomes a device attribute, as Customer.io reads the official client's flat device object, but for
        ``id``, which the official client overwrites with ``device_id``."""
        if _blank(customer_id):
            raise CustomerIOException("customer_id cannot be blank in add_device")
        if _blank(device_id):
            raise CustomerIOException("device_id cannot be blank in add_device")
        if _blank(platform):
            raise CustomerIOException("platform cannot be blank in add_device")
        if not isinstance(device_id, str):
            raise CustomerIOException(f"device_id must be a str, got {type(device_id).__name__}")
        if platform not in ("ios", "android"):
            raise CustomerIOException(f"platform must be 'ios' or 'android', got {platform!r}")
        data.pop("id", None)
        last_used = data.pop("last_used", None)
        if isinstance(last_used, datetime):
            last_used = _unix(last_used)
        elif last_used is not None and (not isinstance(last_used, (int, float)) or isinstance(last_used, bool)):
            raise CustomerIOException(f"last_used must be unix seconds or a datetime, got {last_used!r}")
        attributes = data.pop("attributes", None)
        if attributes is not None and not isinstance(attributes, Mapping):
            raise CustomerIOException(f"attributes must be a dict, got {type(attributes).__name__}")
        merged = {**attributes, **data} if attributes else data
        key = _customer_key(customer_id)
        self._submit(lambda attrs: self._live().add_device(key, device_id, platform, last_used=last_used,
                                                           attributes=attrs or None), merged)

    def delete_device(self, customer_id: Any, device_id: Any) -> None:
        if _blank(customer_id):
            raise CustomerIOException("customer_id cannot be blank in delete_device")
        if _blank(device_id):
            raise CustomerIOException("device_id cannot be blank in delete_device")
        token = device_id if device_id.__class__ is str else str(device_id)  # it is a URL segment in v1
        key = _customer_key(customer_id)
        self._submit(lambda _: self._live().delete_device(key, token), None)

    def merge_customers(self, primary_id_type: str, primary_id: Any, secondary_id_type: str,
                        secondary_id: Any) -> None:
        """Merge the secondary person into the primary one. Id types: ``id``, ``email``, ``cio_id``."""
        if primary_id_type not in _ID_TYPES:
            raise CustomerIOException("invalid primary id type")
        if secondary_id_type not in _ID_TYPES:
            raise CustomerIOException("invalid secondary id type")
        if _blank(primary_id):
            raise CustomerIOException("primary customer_id cannot be blank")
        if _blank(secondary_id):
            raise CustomerIOException("secondary customer_id cannot be blank")
        self._submit(lambda _: self._live().merge_customers(primary_id_type, primary_id, secondary_id_type,
                                                            secondary_id), None)

    def batch(self, operations: Iterable[Mapping[str, Any]]) -> None:
        """Queue Track API v2 operations (the official client POSTs them as one ``/api/v2/batch``)."""
        if not operations:
            raise CustomerIOException("operations cannot be empty in batch")
        prepared = [self._prepare_operation(index, op) for index, op in enumerate(operations)]
        tracker = self._live()
        for op in prepared:
            try:
                tracker.send_operation(op)
            except _INPUT_ERRORS as err:  # cannot happen after _prepare_operation; keep the exception type
                raise CustomerIOException(str(err)) from err

    def _prepare_operation(self, index: int, op: Any) -> Any:
        """Checked before anything is queued, so a bad operation leaves the whole call without effect."""
        if not isinstance(op, Mapping):
            raise CustomerIOException(f"operations[{index}] must be a dict, got {type(op).__name__}")
        if op.get("type") == "person" and op.get("action") in _EVENT_ACTIONS and (
                op.get("id") is None or op.get("timestamp") is None):
            op = {**op}
            if op.get("id") is None:
                op["id"] = _core.ulid()
            if op.get("timestamp") is None:
                op["timestamp"] = int(time.time())
        path = f"operations[{index}]"
        try:
            size = len(_core.encode(op, path))
        except _INPUT_ERRORS as err:
            normalised = _official_json(op)
            if normalised is op:
                raise CustomerIOException(str(err)) from err
            op = normalised
            try:
                size = len(_core.encode(op, path))
            except _INPUT_ERRORS as err2:
                raise CustomerIOException(str(err2)) from err2
        if size > _core.MAX_OP_BYTES:
            raise CustomerIOException(f"{path}: operation is {size} bytes encoded, over Customer.io's limit of "
                                      f"{_core.MAX_OP_BYTES} bytes per operation")
        return op

    # -- ciotrack additions and lifecycle -------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """(ciotrack only) Wait until every call made so far is delivered or finally failed; False on timeout."""
        return self._tracker.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued (within ``timeout`` seconds if given) and stop the sender."""
        self._tracker.close(timeout)

    def stats(self) -> Stats:
        """(ciotrack only) The current tracker's :meth:`~ciotrack.Tracker.stats`. Monitor the client, not
        ``client.tracker``: ``PrometheusCollector(client)`` follows the new tracker a call after ``close()``
        makes (whose counters start from zero again, which Prometheus reads as a counter reset)."""
        return self._tracker.stats()

    def __enter__(self) -> CustomerIO:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
