"""The destination seam: where a ready batch body goes, and what its answer means.

A destination takes the exact bytes of one batch (``{"batch":[op,op,...]}``, at most 500 KB) and
answers with an :class:`Outcome`. It never raises for a delivery problem: a refused connection, a
timeout, a 5xx or a response it cannot parse is an Outcome too. The delivery loop
(:mod:`ciotrack.delivery`) turns outcomes into retries, splits and verdicts, so a destination holds
no retry state and needs no lock beyond what its own transport needs (``send`` is called from
several threads at once).

A destination in ten lines (a test double, a proxy, a queue)::

    from ciotrack.destinations import Outcome

    class Recorder:
        name = "recorder"
        def __init__(self): self.bodies = []
        def send(self, body: bytes) -> Outcome:
            self.bodies.append(body)
            return Outcome.delivered()
        def probe(self) -> bool:
            return True
        def close(self) -> None: pass

    tracker = ciotrack.Tracker(destination=Recorder())
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

__all__ = ["Destination", "Outcome", "OutcomeKind"]

OutcomeKind = Literal["delivered", "partial", "retry", "split", "final"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to one send. Build it with the constructors (``Outcome.retry(429, 2.0)``).

    ``status`` is the HTTP status (or the destination's own code), None when no answer arrived.
    ``reason`` (and each ``failures`` reason) is ``code`` or ``code: detail``: a short machine-friendly
    code (``http_503``, ``connection_error``, a 207's ``invalid``) then, optionally, text for humans.
    The code alone labels the ``stats().failed`` counters; the whole text reaches ``on_error``.
    """

    kind: OutcomeKind
    status: int | None = None
    reason: str = ""
    retry_after: float | None = None
    """For ``retry``: the server's ``Retry-After`` in seconds, when it sent one."""
    failures: tuple[tuple[int, str], ...] = ()
    """For ``partial``: ``(batch_index, reason)`` of each rejected operation."""

    @classmethod
    def delivered(cls, status: int | None = 200) -> Outcome:
        """Every operation of the batch was accepted."""
        return _DELIVERED if status == 200 else cls("delivered", status)

    @classmethod
    def partial(cls, failures: Iterable[tuple[int, str]], status: int | None = 207) -> Outcome:
        """Accepted, except the operations at these batch indexes (each with its reason)."""
        return cls("partial", status, "partial", failures=tuple((int(i), str(why)) for i, why in failures))

    @classmethod
    def retry(cls, status: int | None = None, retry_after: float | None = None, reason: str = "") -> Outcome:
        """Not accepted now; the same bytes may succeed later (after ``retry_after`` s, if given)."""
        return cls("retry", status, reason or (f"http_{status}" if status is not None else "no_answer"),
                   retry_after=retry_after)

    @classmethod
    def split(cls, status: int | None = 413) -> Outcome:
        """Too large: send each half on its own."""
        return cls("split", status, f"http_{status}" if status is not None else "too_large")

    @classmethod
    def final(cls, status: int | None, reason: str) -> Outcome:
        """Will never be accepted (bad credentials, a malformed batch, a certificate that fails)."""
        return cls("final", status, reason)


_DELIVERED = Outcome("delivered", 200)


@runtime_checkable
class Destination(Protocol):
    """Receives batch bodies. ``name`` labels logs and metrics (a region, ``redis``, ...).

    ``send`` is called concurrently from the sender threads and must not raise for delivery
    problems. ``probe`` is a cheap health check (an authenticated no-op, a PING) used while the
    destination is believed down: True when it answers. ``close`` releases what the destination owns.

    A destination with a class attribute ``accepts_buffers = True`` may be given a read-only
    ``memoryview`` of the body instead of bytes (the built-in HTTP destination does: no copy of the
    body is made); without it, ``send`` always gets bytes.
    """

    name: str

    def send(self, body: bytes) -> Outcome: ...

    def probe(self) -> bool: ...

    def close(self) -> None: ...
