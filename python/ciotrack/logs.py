"""Throttled warnings: a repeated problem (a dead endpoint, a full queue) logs once per interval.

Every logger is ``ciotrack.<area>``; the package never adds a handler (tests hold us to it).
"""

from __future__ import annotations

import logging
import threading
import time

__all__ = ["ThrottledLog"]

_monotonic = time.monotonic


class ThrottledLog:
    """Logs a warning at most once per ``interval`` seconds per key, counting what it suppressed."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, message: str, *args: object, exc_info: bool = False) -> None:
        now = _monotonic()
        with self._lock:
            last, suppressed = self._last.get(key, (-1e18, 0))
            if now - last < self._interval:
                self._last[key] = (last, suppressed + 1)
                return
            self._last[key] = (now, 0)
        if suppressed:
            message += f" ({suppressed} similar messages suppressed)"
        self._logger.warning(message, *args, exc_info=exc_info)
