"""Native hot path of ciotrack (Rust, PyO3). Private: use ``ciotrack.Tracker``.

The core owns the parts that run on the caller's thread or per operation:
encoding a call to compact JSON, stamping it (ULID ``id``, unix ``timestamp``),
checking Customer.io's size limits, deduplication, the bounded queue per lane
(one lane per region), batch assembly, the token bucket and the metrics.
Policy (when to send, retries, spooling, lifecycle) lives in Python.

Invariants across the boundary:

* Every method that encodes reads the Python arguments completely before it
  returns, so a caller mutating its dict afterwards changes nothing queued.
* Encoding errors raise ``ciotrack.errors.SerializationError`` (a
  ``TypeError``) or ``ciotrack.errors.LimitError`` / ``InvalidValueError``
  (``ValueError``s). The message starts with the path of the bad field, e.g.
  ``data['items'][2]: unsupported type 'set'``. A failed call queues nothing
  and changes no counter except ``invalid``.
* An operation is one JSON object of Track API v2 (``/api/v2/batch``), at
  most ``MAX_OP_BYTES`` encoded. A batch body is
  ``{"batch":[op,op,...]}``, at most ``max_batch_bytes`` (default
  ``MAX_BATCH_BYTES``) including that envelope, operations in FIFO order.
* ``push`` results are the ``ACCEPTED``/``DEDUPED``/``FULL``/``FORKED``/``CLOSED`` codes;
  ``FORKED`` means the process forked since this core was made (detected with
  ``pthread_atfork``, so it also catches forks that skip Python's
  ``os.register_at_fork``): nothing was queued, and the caller must rebuild
  the tracker in the child and call again.
* Methods that wait (``Lane.wait``, ``Bucket.acquire``, ``Core.push_*`` under
  the ``"block"`` policy) release the GIL and return early once ``close()``
  (or ``wake()``) is called.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Literal, Self, final

__all__ = [
    "__version__",
    "ACCEPTED",
    "DEDUPED",
    "FULL",
    "FORKED",
    "CLOSED",
    "MAX_OP_BYTES",
    "MAX_BATCH_BYTES",
    "Batch",
    "Bucket",
    "Core",
    "FastCalls",
    "Lane",
    "encode",
    "histogram_bounds",
    "is_ulid",
    "ulid",
]

__version__: str

ACCEPTED: Final[int]
"""The operation is queued (or, under ``on_full="spool"``, handed to the overflow list)."""
DEDUPED: Final[int]
"""Skipped: the dedup set saw the same operation within the TTL. Counted, not queued."""
FULL: Final[int]
"""Refused: the lane is full (by count or bytes) and the policy dropped this operation."""
FORKED: Final[int]
"""Refused: the process forked since this core was created; rebuild and retry."""
CLOSED: Final[int]
"""Refused: ``Core.close()`` was called; nothing was queued (the caller counts it as dropped ``closed``)."""

MAX_OP_BYTES: Final[int]
"""32768: Customer.io's limit for one v2 operation."""
MAX_BATCH_BYTES: Final[int]
"""500000: Customer.io's limit for one ``/api/v2/batch`` request body."""

# Stub-only aliases (private: they do not exist at runtime).
_Timestamp = int | float | datetime | None
_CustomerId = str | int
_OverflowPolicy = Literal["drop_newest", "drop_oldest", "block", "spool"]

@final
class Batch:
    """A ready ``/api/v2/batch`` body taken from a lane, plus what the sender needs to account for it.

    Exports the body as a read-only buffer: ``memoryview(batch)`` is ``body`` without the copy that
    ``body`` makes (no ``__buffer__`` in this stub: on Python 3.11 the buffer slot has no method)."""

    body: bytes
    """``{"batch":[...]}``: the exact bytes to POST. Retries send these same bytes (same event ids)."""
    count: int
    """Number of operations in the body."""
    lane: int | None
    """The lane it was taken from; None for a batch made by ``from_ops`` (and its halves)."""
    start: int
    """Take ordinal of the first operation in its lane: operations ``[start, end)``. For a
    ``from_ops`` batch, positions in that batch instead (``0`` and ``count``; halves keep them)."""
    end: int
    @staticmethod
    def from_ops(ops: Sequence[bytes]) -> Batch:
        """A standalone batch of already-encoded operations (e.g. read back from Redis, to resend or
        split on a 413): ``body`` is byte-identical to what a lane builds from the same operations,
        ``ops()`` returns them, ``split()`` works. It belongs to no lane: ``lane`` is None, and
        ``Core.ack`` refuses it (ValueError) since no core counted its operations as accepted;
        ``oldest_age()`` counts from this call. Raises ValueError for an empty ``ops``,
        ``LimitError`` for an operation that is empty or over ``MAX_OP_BYTES``, TypeError for an
        item that is not bytes."""
    def ops(self) -> list[bytes]:
        """The encoded operations, in order (``ops()[i]`` is ``batch_index`` i of a 207 answer)."""
    def split(self) -> tuple[Batch, Batch]:
        """Two batches holding the first and second half of the operations (for a 413). Needs ``count >= 2``."""
    def oldest_age(self) -> float:
        """Seconds since the oldest operation of this batch was accepted."""

@final
class Lane:
    """One bounded lock-free queue of encoded operations (one per region), drained into batches."""

    index: int
    def __len__(self) -> int:
        """Operations queued now."""
    def queued_bytes(self) -> int:
        """Encoded bytes queued now."""
    def pushed(self) -> int:
        """Operations ever queued in this lane (a monotonic count)."""
    def taken(self) -> int:
        """Operations ever taken out (into batches, or evicted by ``drop_oldest``); never exceeds ``pushed()``."""
    def wait(self, min_bytes: int, timeout: float) -> bool:
        """Block, GIL released, until at least ``min_bytes`` are queued, ``timeout`` seconds pass, or ``wake()``/``close()``.

        Returns True when the byte threshold was reached. ``min_bytes=1`` waits for anything.
        """
    def next_batch(self, max_bytes: int | None = None, max_ops: int | None = None) -> Batch | None:
        """Assemble the next batch (GIL released): FIFO, at most ``max_bytes`` (default the core's
        ``max_batch_bytes``) and ``max_ops`` operations. None when the lane is empty. Safe to call
        from several sender threads; each operation goes into exactly one batch.
        """
    def drain_ops(self) -> list[bytes]:
        """Take every queued operation out, unbatched (for spooling at exit)."""
    def clear(self) -> int:
        """Drop everything queued (the child after a fork); returns how many were dropped."""

@final
class Core:
    """The per-tracker native state: lanes, dedup set, metrics."""

    def __new__(
        cls,
        *,
        lanes: int = 1,
        max_queue_ops: int = 1_000_000,
        max_queue_bytes: int = 67_108_864,
        max_batch_bytes: int = 500_000,
        on_full: _OverflowPolicy = "drop_newest",
        block_timeout: float = 0.0,
        dedup_ttl: float = 300.0,
        dedup_max_entries: int = 100_000,
        dedup_events: Literal["id", "composite", "off"] = "id",
        metrics: bool = True,
    ) -> Self:
        """Bounds apply per lane (``max_queue_bytes`` default: 64 MiB). ``dedup_ttl=0`` disables identify
        and event dedup. Unusable values raise ``ciotrack.errors.ConfigError``."""
    def lane(self, index: int) -> Lane: ...
    @property
    def lanes(self) -> int: ...
    def identify(
        self, lane: int, customer_id: _CustomerId, attributes: Mapping[str, Any] | None, timestamp: _Timestamp = None
    ) -> int:
        """Queue ``{"type":"person","identifiers":{...},"action":"identify","attributes":{...},"timestamp":N}``.

        Checks: id non-empty and <= 150 bytes; <= 300 attributes; attribute names <= 150 bytes;
        each attribute value <= 1000 bytes encoded. Dedup: skipped (``DEDUPED``) when the same
        customer's last accepted identify had identical encoded attributes within the TTL.
        """
    def event(
        self,
        lane: int,
        action: Literal["event", "page", "screen"],
        customer_id: _CustomerId | None,
        anonymous_id: str | None,
        name: str,
        data: Mapping[str, Any] | None = None,
        id: str | None = None,
        timestamp: _Timestamp = None,
    ) -> int:
        """Queue ``{"type":"person","identifiers":{...},"action":action,"name":...,"id":ULID,"timestamp":N,"attributes":{...}}``.

        Exactly one of ``customer_id`` / ``anonymous_id``; with ``anonymous_id`` the op carries
        ``"anonymous_id"`` instead of ``identifiers``. ``id`` must be a ULID (26 Crockford base32
        characters); a fresh one is made when None. Name non-empty and <= 100 bytes (stripped).
        Dedup: by ``id`` (``dedup_events="id"``; only a caller-supplied id is checked and recorded,
        since a fresh one cannot repeat) or by customer+action+name+data (``"composite"``). A
        caller's ULID is sent upper-cased (its canonical form), so dedup ignores case.
        """
    def person(self, lane: int, action: str, customer_id: _CustomerId, fields: Mapping[str, Any] | None = None) -> int:
        """Queue ``{"type":"person","identifiers":{...},"action":action, **fields}`` (delete,
        suppress, unsuppress, add_device, delete_device, ...). ``fields`` is encoded like data."""
    def raw(self, lane: int, op: Mapping[str, Any]) -> int:
        """Encode ``op`` as given (merge, the drop-in ``batch()``); only the 32 KB op limit is checked.
        A delete, suppress or merge of people forgets their identify dedup keys."""
    def forget_lost(self, ops: Iterable[bytes]) -> int:
        """Forget the dedup keys recorded for these encoded operations, which failed for good, so that
        sending them again is not deduplicated. Non-bytes items are skipped; returns the keys forgotten."""
    def take_overflow(self, lane: int | None = None) -> list[bytes]:
        """Operations refused by a full lane under ``on_full="spool"``, oldest first (the caller spools them).

        ``lane``: take only that lane's refused operations (each lane's go to its own region's
        spool records); None takes every lane's, lane 0's first. The lists are unbounded until
        taken (counted as ``overflowed``; their total length is the gauge ``overflow_ops``): the
        caller must take them regularly."""
    def requeue(self, lane: int, ops: Sequence[bytes]) -> int:
        """Push already-encoded operations back (spool replay). Returns how many fitted; never dedups
        and counts nothing. Stops at the first one that does not fit, so order is kept: the caller
        keeps ``ops[n:]``. Returns 0 in a forked child."""
    def wake(self) -> None:
        """Wake every thread waiting in ``Lane.wait`` (e.g. for ``flush()``)."""
    def close(self) -> None:
        """Wake all waiters and make every later wait return at once; every later push answers ``CLOSED``.
        Queued data stays drainable."""
    def fork_generation(self) -> int:
        """Incremented in the child by a ``pthread_atfork`` handler on every fork."""
    def stats(self) -> dict[str, Any]:
        """Snapshot: ``counters`` (dict name -> int: ``accepted``, ``invalid``, ``deduped_identify``,
        ``deduped_event``, ``dropped_full``, ``dropped_oldest`` and every named counter),
        ``gauges`` (``lane{i}_ops``, ``lane{i}_bytes``, ``overflow_ops``), ``histograms`` (name ->
        dict with count, sum, p50, p95, p99, max, and ``buckets``: a list of ``(le, values <= le)``,
        cumulative, at ``histogram_bounds(name)``; computed here from the log buckets, exact because
        every bound is a bucket edge; ``+Inf`` is ``count``)."""
    def incr(self, counter: str, n: int = 1) -> None:
        """Add to a named counter (sender side: delivered, failed, retried, spooled, replayed, bytes_sent, ...). Any name is accepted."""
    def observe(self, histogram: str, value: float) -> None:
        """Record into a log-bucket histogram (request_latency_seconds, batch_ops, batch_bytes, ...)."""
    def ack(self, batch: Batch, failed: Sequence[int] = ()) -> None:
        """The batch is finished: records end-to-end latency for each delivered op and counts
        ``delivered`` (count minus failed). Raises ValueError, counting nothing, for a batch this
        core did not hand out (one made by ``Batch.from_ops``, or taken from another core's lane)."""

@final
class FastCalls:
    """``Tracker``'s common calls as native bound methods (lane 0 only), bound on a tracker built
    without ``region_for``. Same signatures as the ``Tracker`` methods; anything but the common call
    (before ``activate()``, ``region=``, a refusal code, after ``retire()``) runs the ``Tracker``
    method itself."""

    def __new__(cls, core: Core, tracker: Any) -> Self: ...
    def activate(self) -> None:
        """The tracker's senders run: calls take the fast path from now on."""
    def retire(self) -> None:
        """Every later call takes the ``Tracker`` method (after ``close()``, a fork rebuild)."""
    @property
    def live(self) -> bool: ...
    def entry(self, name: str) -> Callable[..., None]:
        """``name`` (``track``, ``track_anonymous``, ``page``, ``screen``, ``identify``) as a builtin
        function bound to this object: a call with positional arguments only goes straight to the
        native code, any other to the method of that name (same parsing, same errors). ValueError for
        another name."""
    def track(
        self, customer_id: _CustomerId, name: str, data: Mapping[str, Any] | None = None, *,
        id: str | None = None, timestamp: _Timestamp = None, region: str | None = None,
    ) -> None: ...
    def track_anonymous(
        self, anonymous_id: str, name: str, data: Mapping[str, Any] | None = None, *,
        id: str | None = None, timestamp: _Timestamp = None, region: str | None = None,
    ) -> None: ...
    def page(
        self, customer_id: _CustomerId, url: str, data: Mapping[str, Any] | None = None, *,
        id: str | None = None, timestamp: _Timestamp = None, region: str | None = None,
    ) -> None: ...
    def screen(
        self, customer_id: _CustomerId, name: str, data: Mapping[str, Any] | None = None, *,
        id: str | None = None, timestamp: _Timestamp = None, region: str | None = None,
    ) -> None: ...
    def identify(
        self, customer_id: _CustomerId, attributes: Mapping[str, Any] | None = None, /, *,
        region: str | None = None, **attrs: Any,
    ) -> None: ...

@final
class Bucket:
    """Token bucket (requests/s), lock-free, shared by every sender of one (workspace, region)."""

    def __new__(cls, rate: float, burst: float) -> Self:
        """``rate <= 0`` disables limiting (acquire always succeeds at once). Starts full."""
    def acquire(self, timeout: float) -> bool:
        """Take one token, waiting (GIL released) up to ``timeout`` s; False on timeout or ``close()``."""
    def try_acquire(self) -> float:
        """Take one token now and return 0.0, or return the seconds until one is available."""
    def pause(self, seconds: float) -> None:
        """No token is handed out for ``seconds`` (a 429 with Retry-After); extends, never shortens, a pause."""
    def tokens(self) -> float: ...
    def close(self) -> None: ...

def encode(value: Any, path: str = "value") -> bytes:
    """Encode one value with the core's rules (for tests, the capture tracker and the spool)."""

def ulid() -> str:
    """A fresh ULID."""

def is_ulid(value: str) -> bool: ...
def histogram_bounds(name: str) -> list[float]:
    """The Prometheus ``le`` bounds ``Core.stats()`` reports for the histogram ``name``, ascending: names
    ending ``_seconds`` 1/256 ... 3840, ``_bytes`` 256 ... 524288, anything else (counts) 1 ... 10240.
    Each is an edge of the core's log buckets (buckets are closed above, like ``le``)."""
