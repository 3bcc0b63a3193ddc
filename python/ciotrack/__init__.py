"""ciotrack: an embedded background tracker for Customer.io's Track API, with its hot path in Rust.

    import ciotrack

    tracker = ciotrack.Tracker("site-id", "api-key")       # or CIOTRACK_SITE_ID / CIOTRACK_API_KEY
    tracker.track("user-42", "checkout", {"total": 12.5})  # ~1 us, never blocks, never raises for delivery

or the module-level default tracker: ``ciotrack.init(site_id, api_key, **options)``, then
``ciotrack.track(...)``, ``ciotrack.identify(...)``, ..., ``ciotrack.flush()`` (``await
ciotrack.flush_async()``), ``ciotrack.stats()``, ``ciotrack.close()``. Transactional messages (App API):
``ciotrack.APIClient`` and the ``Send*Request`` types, as in the official ``customerio`` package.

Names are imported lazily (PEP 562), so ``ciotrack.emulator`` and ``ciotrack.errors`` work without the
native extension having been built.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Unpack

from ciotrack._version import __version__

if TYPE_CHECKING:
    from ciotrack.app_api import (
        APIClient,
        SendEmailRequest,
        SendInAppRequest,
        SendInboxMessageRequest,
        SendPushRequest,
        SendSMSRequest,
        SendWhatsAppRequest,
    )
    from ciotrack.compat import CustomerIO, CustomerIOException, Regions
    from ciotrack.config import Config
    from ciotrack.errors import (
        CiotrackError,
        ConfigError,
        DeliveryError,
        InvalidValueError,
        LimitError,
        SerializationError,
    )
    from ciotrack.flush_outcome import FlushResult
    from ciotrack.options import TrackerOptions
    from ciotrack.stats import Stats
    from ciotrack.tracker import CustomerId, Timestamp, Tracker

__all__ = [
    "__version__",
    "Tracker", "Config",
    "CiotrackError", "ConfigError", "SerializationError", "InvalidValueError", "LimitError", "DeliveryError",
    "CustomerIO", "Regions", "CustomerIOException",
    "APIClient", "SendEmailRequest", "SendPushRequest", "SendSMSRequest", "SendWhatsAppRequest",
    "SendInboxMessageRequest", "SendInAppRequest",
    "init", "get_tracker", "identify", "track", "track_anonymous", "page", "screen", "delete", "add_device",
    "delete_device", "suppress", "unsuppress", "merge_customers", "send_operation", "flush", "flush_async",
    "stats", "close", "check", "flush_result",
]

_LAZY = {
    "Tracker": "ciotrack.tracker",
    "Config": "ciotrack.config",
    "CiotrackError": "ciotrack.errors",
    "ConfigError": "ciotrack.errors",
    "SerializationError": "ciotrack.errors",
    "InvalidValueError": "ciotrack.errors",
    "LimitError": "ciotrack.errors",
    "DeliveryError": "ciotrack.errors",
    "CustomerIO": "ciotrack.compat",
    "Regions": "ciotrack.compat",
    "CustomerIOException": "ciotrack.compat",
    "APIClient": "ciotrack.app_api",
    "SendEmailRequest": "ciotrack.app_api",
    "SendPushRequest": "ciotrack.app_api",
    "SendSMSRequest": "ciotrack.app_api",
    "SendWhatsAppRequest": "ciotrack.app_api",
    "SendInboxMessageRequest": "ciotrack.app_api",
    "SendInAppRequest": "ciotrack.app_api",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ciotrack' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# -- the module-level default tracker -------------------------------------------------------------

_default: Tracker | None = None
_default_lock = threading.Lock()


def init(site_id: str | None = None, api_key: str | None = None, *, region: str | None = None,
         endpoint: str | None = None, **options: Unpack[TrackerOptions]) -> Tracker:
    """Create the default tracker used by ``ciotrack.track()`` and friends (closing a previous one).
    The options are ``Tracker``'s (typed: :class:`ciotrack.options.TrackerOptions`)."""
    global _default
    from ciotrack.tracker import Tracker

    tracker = Tracker(site_id, api_key, region=region, endpoint=endpoint, **options)
    with _default_lock:
        previous, _default = _default, tracker
    if previous is not None:
        previous.close(previous.config.exit_timeout)
    return tracker


def get_tracker() -> Tracker:
    """The default tracker; made from ``CIOTRACK_*`` environment variables on first use if ``init()``
    was not called (raises ``ConfigError`` when they are missing)."""
    global _default
    tracker = _default
    if tracker is not None:
        return tracker
    from ciotrack.tracker import Tracker

    with _default_lock:
        if _default is None:
            _default = Tracker()
        return _default


def identify(customer_id: CustomerId, attributes: Mapping[str, Any] | None = None, /, *,
             region: str | None = None, **attrs: Any) -> None:
    (_default or get_tracker()).identify(customer_id, attributes, region=region, **attrs)


def track(customer_id: CustomerId, name: str, data: Mapping[str, Any] | None = None, *, id: str | None = None,
          timestamp: Timestamp = None, region: str | None = None) -> None:
    (_default or get_tracker()).track(customer_id, name, data, id=id, timestamp=timestamp, region=region)


def track_anonymous(anonymous_id: str, name: str, data: Mapping[str, Any] | None = None, *, id: str | None = None,
                    timestamp: Timestamp = None, region: str | None = None) -> None:
    (_default or get_tracker()).track_anonymous(anonymous_id, name, data, id=id, timestamp=timestamp, region=region)


def page(customer_id: CustomerId, url: str, data: Mapping[str, Any] | None = None, *, id: str | None = None,
         timestamp: Timestamp = None, region: str | None = None) -> None:
    (_default or get_tracker()).page(customer_id, url, data, id=id, timestamp=timestamp, region=region)


def screen(customer_id: CustomerId, name: str, data: Mapping[str, Any] | None = None, *, id: str | None = None,
           timestamp: Timestamp = None, region: str | None = None) -> None:
    (_default or get_tracker()).screen(customer_id, name, data, id=id, timestamp=timestamp, region=region)


def delete(customer_id: CustomerId, *, region: str | None = None) -> None:
    (_default or get_tracker()).delete(customer_id, region=region)


def add_device(customer_id: CustomerId, device_id: str, platform: str, *, last_used: Timestamp = None,
               attributes: Mapping[str, Any] | None = None, region: str | None = None) -> None:
    (_default or get_tracker()).add_device(customer_id, device_id, platform, last_used=last_used,
                                           attributes=attributes, region=region)


def delete_device(customer_id: CustomerId, device_id: str, *, region: str | None = None) -> None:
    (_default or get_tracker()).delete_device(customer_id, device_id, region=region)


def suppress(customer_id: CustomerId, *, region: str | None = None) -> None:
    (_default or get_tracker()).suppress(customer_id, region=region)


def unsuppress(customer_id: CustomerId, *, region: str | None = None) -> None:
    (_default or get_tracker()).unsuppress(customer_id, region=region)


def merge_customers(primary_id_type: str, primary_id: CustomerId, secondary_id_type: str,
                    secondary_id: CustomerId, *, region: str | None = None) -> None:
    (_default or get_tracker()).merge_customers(primary_id_type, primary_id, secondary_id_type, secondary_id,
                                                region=region)


def send_operation(op: Mapping[str, Any], *, region: str | None = None) -> None:
    (_default or get_tracker()).send_operation(op, region=region)


def flush(timeout: float | None = None) -> bool:
    """Flush the default tracker (True when there is none: nothing to deliver)."""
    tracker = _default
    return True if tracker is None else tracker.flush(timeout)


async def flush_async(timeout: float | None = None) -> bool:
    """``flush`` without blocking the event loop (e.g. in a FastAPI lifespan or after a request)."""
    tracker = _default
    return True if tracker is None else await tracker.flush_async(timeout)


# The submodule ciotrack.stats is loaded first: importing a submodule for the first time sets the
# package attribute of the same name, which would otherwise replace the function below with the module
# as soon as anything imports ciotrack.stats (the tracker does). stats.py needs only the stdlib.
importlib.import_module("ciotrack.stats")


def stats() -> Stats:
    """The default tracker's :class:`ciotrack.stats.Stats` snapshot (``print(ciotrack.stats().format())``).
    Like ``track()``, makes the default tracker from ``CIOTRACK_*`` variables if ``init()`` was not called."""
    return (_default or get_tracker()).stats()


def close(timeout: float | None = None) -> None:
    """Close and forget the default tracker; a later ``init()`` (or call) makes a new one."""
    global _default
    with _default_lock:
        tracker, _default = _default, None
    if tracker is not None:
        tracker.close(timeout)


def check(timeout: float = 5.0) -> None:
    """``Tracker.check()`` on the default tracker: one authenticated read-only request per region, raising
    a :class:`~ciotrack.errors.CheckError` (wrong credentials, region mismatch, redirect, unreachable).
    Makes the default tracker from ``CIOTRACK_*`` variables if ``init()`` was not called."""
    (_default or get_tracker()).check(timeout)


def flush_result(timeout: float | None = None) -> FlushResult:
    """``Tracker.flush_result()`` on the default tracker (an empty, done result when there is none)."""
    tracker = _default
    if tracker is None:
        from ciotrack.flush_outcome import FlushResult

        return FlushResult(True)
    return tracker.flush_result(timeout)
