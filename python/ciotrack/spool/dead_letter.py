"""Dead letters: spooled operations that keep failing on replay are set aside, not replayed forever.

A batch the destination refuses with "retry" every time (a 5xx triggered by one malformed operation,
say) would otherwise cycle for ever: retries run out, it is spooled, a probe finds the API up, it is
replayed, its retries run out again. :class:`PoisonWatch` counts, per replayed operation, how many
times it was sent and handed back to the spool; an operation handed back after :data:`MAX_REPLAYS`
such replays goes to a dead-letter file in the spool directory instead (``dead-<time>-<pid>.dead``:
the spool's record format, so the spool's own reader opens it; never claimed nor replayed, kept for
inspection), counted and reported (``on_drop("dead_letter", n)``).

Only replays that were attempted count. Replay runs only while the destination answers its probe,
and once one batch of a round runs out of retries the rest of the round goes back to the spool
without a request (the destination is known down): those operations were never tried, so neither
an outage nor a flapping one (probes answer, batches fail) ages them. Counts are kept in memory, per
process: a restart starts them over (the poison batch then cycles :data:`MAX_REPLAYS` more times before
it is set aside again).
"""

from __future__ import annotations

import os
import pathlib
import threading
import time
from collections.abc import Sequence

from ciotrack.spool.records import encode_record

__all__ = ["MAX_REPLAYS", "PoisonWatch"]

MAX_REPLAYS = 5
"""Replays of one operation after which, handed back to the spool once more, it is a dead letter."""
MAX_TRACKED = 200_000
"""Operations whose replay count is kept (past it, the counts start over: memory stays bounded)."""


class PoisonWatch:
    """Replay counts of spooled operations (keyed by ``hash(op)``: a collision can only set an
    operation aside early, onto disk, never lose it) and the dead-letter file they go to."""

    def __init__(self, directory: pathlib.Path, *, fsync: bool) -> None:
        self.directory = directory
        self._fsync = fsync
        self._counts: dict[int, int] = {}
        self._lock = threading.Lock()
        self._path: pathlib.Path | None = None

    def replayed(self, ops: Sequence[bytes]) -> None:
        """Replay requeued ``ops``: watched from now on (not counted: they may never be sent)."""
        with self._lock:
            counts = self._counts
            if len(counts) + len(ops) > MAX_TRACKED:
                counts.clear()
            for op in ops:
                counts.setdefault(hash(op), 0)

    def attempted(self, ops: Sequence[bytes]) -> None:
        """``ops`` were sent and are handed back to the spool: one more failed replay for the watched ones."""
        counts = self._counts
        if not counts:
            return
        with self._lock:
            for op in ops:
                key = hash(op)
                if key in counts:
                    counts[key] += 1

    def split(self, ops: Sequence[bytes]) -> tuple[list[bytes], list[bytes]]:
        """``(to_spool, dead)``: the operations handed back to the spool that replayed too often."""
        counts = self._counts
        if not counts:
            return list(ops), []
        keep: list[bytes] = []
        dead: list[bytes] = []
        with self._lock:
            for op in ops:
                if counts.get(hash(op), 0) >= MAX_REPLAYS:
                    counts.pop(hash(op), None)
                    dead.append(op)
                else:
                    keep.append(op)
        return keep, dead

    def write(self, ops: Sequence[bytes], region: str) -> pathlib.Path:
        """Append ``ops`` to this process's dead-letter file (one record); its path."""
        with self._lock:
            if self._path is None or not self._path.parent.is_dir():
                self.directory.mkdir(parents=True, exist_ok=True)
                self._path = self.directory / f"dead-{time.time_ns()}-{os.getpid()}.dead"
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, encode_record(region, ops))
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            return self._path
