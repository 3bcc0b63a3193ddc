"""Coalescing: several small work entries sent as one request.

Producers write a batch per flush interval, so under load the stream holds many entries far below
Customer.io's 500 KB, and one request per entry spends the workspace's request budget on small bodies
(the load test through a fleet carried 832 operations per request where ~2,000 fit). A worker that
reads several fresh entries at once sends up to a body's worth of them (same region) as one request,
then settles each entry on its own, as if it had gone alone:

* every operation of the entry delivered: acknowledged (a 207's rejections dead-lettered under its id);
* some delivered and some not (a 413 split whose other piece failed): the rest requeued;
* none delivered: the try is uncounted and the entry released, to be claimed and sent alone (claimed
  entries are never coalesced), so one entry's fault never counts against another's tries.

The positions of operations in the joined body are what ties a piece of the answer back to its entry:
:class:`GroupBatch` keeps them through 413 splits.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from ciotrack.delivery import Result, Verdict
from ciotrack.fleet.streams import StoredBatch, WorkEntry

__all__ = ["MAX_BODY_BYTES", "EntryShare", "GroupBatch", "pack", "shares"]

MAX_BODY_BYTES = 500_000
"""Customer.io's limit on one request body (``../shared/docs/customerio-api.md``)."""
_ENVELOPE = len(b'{"batch":[]}')


@dataclass(frozen=True, slots=True)
class GroupBatch:
    """Operations of one or more entries in one body (a ``Deliverable``); ``first`` is the position of
    its first operation among all the group's, kept by the halves of a split."""

    stored: StoredBatch
    first: int = 0

    @classmethod
    def join(cls, entries: Sequence[WorkEntry]) -> GroupBatch:
        return cls(StoredBatch.from_ops([op for entry in entries for op in entry.batch.ops()]))

    @property
    def body(self) -> bytes:
        return self.stored.body

    @property
    def count(self) -> int:
        return self.stored.count

    def ops(self) -> list[bytes]:
        return self.stored.ops()

    def split(self) -> tuple[GroupBatch, GroupBatch]:
        head, tail = self.stored.split()
        return GroupBatch(head, self.first), GroupBatch(tail, self.first + head.count)


def pack(entries: Sequence[WorkEntry], max_body: int = MAX_BODY_BYTES) -> list[list[WorkEntry]]:
    """The entries in groups of one region whose joined body fits ``max_body``, in the order read
    (an entry joins the open group of its region when it fits, else opens the next one)."""
    groups: list[list[WorkEntry]] = []
    open_group: dict[str, tuple[list[WorkEntry], int]] = {}  # region -> (group, joined body bytes)
    for entry in entries:
        ops_bytes = len(entry.batch.body) - _ENVELOPE  # its operations and the commas between them
        current = open_group.get(entry.region)
        if current is not None and current[1] + 1 + ops_bytes <= max_body:
            current[0].append(entry)
            open_group[entry.region] = (current[0], current[1] + 1 + ops_bytes)
            continue
        group = [entry]
        groups.append(group)
        open_group[entry.region] = (group, _ENVELOPE + ops_bytes)
    return groups


@dataclass(slots=True)
class EntryShare:
    """What became of one entry's operations in a coalesced request."""

    delivered: int = 0
    """Operations in delivered pieces (rejected ones included)."""
    rejected: list[bytes] = field(default_factory=list)
    reasons: set[str] = field(default_factory=set)
    """Why they were rejected (a 207's reasons)."""
    undelivered: list[bytes] = field(default_factory=list)
    """Operations in pieces that were not delivered, in order."""
    verdict: Verdict | None = None
    """The last verdict of a piece that was not delivered."""


def shares(group: Sequence[WorkEntry], results: Sequence[Result]) -> list[EntryShare]:
    """Each entry's share of ``results`` (the pieces of a :meth:`GroupBatch.join` of ``group``)."""
    starts: list[int] = []
    position = 0
    for entry in group:
        starts.append(position)
        position += entry.batch.count
    out = [EntryShare() for _ in group]
    for result in results:
        piece = result.job.batch
        assert isinstance(piece, GroupBatch)
        delivered = result.verdict is Verdict.DELIVERED
        failures = dict(result.failures) if delivered else {}
        for i, op in enumerate(piece.ops()):
            share = out[bisect.bisect_right(starts, piece.first + i) - 1]
            if delivered:
                share.delivered += 1
                why = failures.get(i)
                if why is not None:
                    share.rejected.append(op)
                    share.reasons.add(why)
            else:
                share.undelivered.append(op)
                share.verdict = result.verdict
    return out
