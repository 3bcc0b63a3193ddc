"""The keyword options of ``Tracker(...)``, ``ciotrack.init(...)`` and ``CaptureTracker(...)``, typed.

``**options: Unpack[TrackerOptions]`` lets IDEs complete every option and mypy reject a misspelt one
(``flush_intervall=1`` is an error, not a silently ignored keyword). At run time an unknown option is
a :class:`~ciotrack.errors.ConfigError` with a "did you mean" (:meth:`ciotrack.config.Config.from_env`).

Each key is a :class:`~ciotrack.config.Config` field (documented there, with its default); ``site_id``,
``api_key``, ``region`` and ``endpoint`` are explicit parameters of the constructors instead. None means
"not given" (the environment variable or the default applies). A test keeps this in step with Config.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal, TypedDict

from ciotrack.config import DropHook, ErrorHook, OverflowPolicy, Region, RegionFor, SpoolHook
from ciotrack.destinations.base import Destination

if TYPE_CHECKING:
    from ciotrack.ratelimit import Limiter

__all__ = ["EXPLICIT_PARAMETERS", "TrackerOptions"]

EXPLICIT_PARAMETERS = ("site_id", "api_key", "region", "endpoint")
"""Config fields that are named parameters of the constructors rather than ``TrackerOptions`` keys."""


class TrackerOptions(TypedDict, total=False):
    """Every ``Config`` option but the four explicit parameters (see :class:`ciotrack.config.Config`)."""

    endpoints: Mapping[str, str] | None
    region_for: RegionFor | None
    regions: tuple[Region, ...] | None
    timeout: float | tuple[float, float] | None
    proxies: Mapping[str, str] | None
    verify: bool | str | None
    senders: int | None
    max_in_flight: int | None
    flush_interval: float | None
    batch_bytes: int | None
    max_queue_bytes: int | None
    max_queue_ops: int | None
    on_full: OverflowPolicy | None
    block_timeout: float | None
    max_retries: int | None
    retry_budget: float | None
    backoff_base: float | None
    backoff_cap: float | None
    retry_after_cap: float | None
    exit_timeout: float | None
    rate_limit: float | None
    rate_burst: float | None
    dedup_ttl: float | None
    dedup_max_entries: int | None
    dedup_events: Literal["id", "composite", "off"] | None
    on_error: ErrorHook | None
    on_drop: DropHook | None
    metrics: bool | None
    debug: bool | None
    disabled: bool | None
    sync: bool | None
    user_agent: str | None
    spool_dir: str | os.PathLike[str] | None
    spool_max_bytes: int | None
    spool_fsync: bool | None
    destination: Destination | Callable[[str], Destination] | None
    limiter: Callable[[str], Limiter] | None
    spool: SpoolHook | None
    redis_url: str | None
    rate_limit_redis_url: str | None
    handle_sigterm: bool | None
