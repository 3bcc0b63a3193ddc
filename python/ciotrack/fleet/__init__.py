"""Fleet mode: app processes hand ready batches to a Redis stream, ``ciotrack worker`` replicas deliver
them under one workspace-wide rate limit (``pip install 'ciotrack[fleet]'``).

* :mod:`ciotrack.fleet.streams` — key names and the stream entry schema
* :mod:`ciotrack.fleet.producer` — ``RedisStreamDestination`` (what ``Tracker(redis_url=...)`` uses)
* :mod:`ciotrack.fleet.limiter` — ``RedisLimiter``, GCRA in Lua on Redis' clock
* :mod:`ciotrack.fleet.worker` — the consumer (``ciotrack worker``)
* :mod:`ciotrack.fleet.metrics` — Prometheus metrics, ``/healthz`` and ``/readyz``

Nothing here is imported by ``import ciotrack``: ``redis`` is an optional dependency.
"""

from __future__ import annotations

import importlib.util


def require_extra(*modules: str) -> None:
    """ModuleNotFoundError (which ``ciotrack``'s CLI turns into "pip install 'ciotrack[fleet]'") when one
    of ``modules`` is not installed; nothing is imported (importing redis would create its loggers)."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
