"""Throttled warnings: a repeated problem (a dead endpoint, a full queue) logs once per interval.

Every logger is ``ciotrack.<area>``; the package never adds a handler (tests hold us to it).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

__all__ = ["ThrottledLog"]

_monotonic = time.monotonic


@dataclass
class _Held:
    """One key's state: when it last logged, and what it held back since."""

    last: float
    suppressed: int = 0
    count: int = 0
    """Operations of the held-back :meth:`ThrottledLog.count` lines, not yet in any line."""
    message: str = ""
    args: tuple[object, ...] = ()
    """The last held-back counted line's message and its arguments after the count (for :meth:`flush`)."""


class ThrottledLog:
    """Logs a warning at most once per ``interval`` seconds per key, counting what it suppressed."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, message: str, *args: object, exc_info: bool = False) -> None:
        admitted = self._admit(key, 0, message, args)
        if admitted is None:
            return
        suppressed, _ = admitted
        if suppressed:
            message += f" ({suppressed} similar messages suppressed)"
        self._logger.warning(message, *args, exc_info=exc_info)

    def count(self, key: str, message: str, count: int, *args: object) -> None:
        """A warning whose first ``%d`` is a number of operations (a loss line). Throttled like
        :meth:`warning`, but what it holds back is added up: the next line of ``key`` says the total since
        the last one, and :meth:`flush` says what no later line did (a burst of drops that ended within
        the interval would otherwise reach the log as its first line's count)."""
        admitted = self._admit(key, count, message, args)
        if admitted is None:
            return
        suppressed, total = admitted
        if suppressed:
            message += f" (the total since the last such line; {suppressed} similar messages suppressed)"
        self._logger.warning(message, total, *args)

    def _admit(self, key: str, count: int, message: str, args: tuple[object, ...]) -> tuple[int, int] | None:
        """None: ``key`` logged less than an interval ago, so this line is held back (its ``count`` added
        up). Else ``(lines held back since the last, their count plus this one's)``, and the interval
        starts again."""
        now = _monotonic()
        with self._lock:
            held = self._held.get(key)
            if held is not None and now - held.last < self._interval:
                held.suppressed += 1
                if count:
                    held.count += count
                    held.message, held.args = message, args
                return None
            self._held[key] = _Held(now)
            return (held.suppressed, held.count + count) if held is not None else (0, count)

    def flush(self) -> None:
        """Log the operations counted lines held back and no later line reported (at ``close()``)."""
        with self._lock:
            pending = []
            for held in self._held.values():
                if held.count:
                    pending.append((held.message, held.count, held.args, held.suppressed))
                    held.count, held.suppressed = 0, 0
        for message, total, args, suppressed in pending:
            self._logger.warning(message + f" (the total of {suppressed} similar messages suppressed since the last "
                                           "such line)", total, *args)
