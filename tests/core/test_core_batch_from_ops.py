"""``Batch.from_ops``: a batch rebuilt from already-encoded operations (as a fleet worker reads them
back from Redis) is the batch a lane would have built, splits like one, and belongs to no lane."""

from __future__ import annotations

import json

import pytest
import requests

from ciotrack._core import MAX_OP_BYTES, Batch, Core
from ciotrack.emulator import Emulator
from ciotrack.errors import LimitError

from conftest import API_KEY, SITE_ID, all_events


def lane_batch(core: Core, n: int, pad: int = 50) -> Batch:
    """``n`` events queued in lane 0 and taken as one batch (no byte limit in the way)."""
    for i in range(n):
        core.event(0, "event", f"user-{i}", None, "purchase", {"i": i, "pad": "x" * pad})
    batch = core.lane(0).next_batch(max_bytes=1 << 30)
    assert batch is not None and batch.count == n
    return batch


def test_from_ops_rebuilds_the_lane_batch_byte_for_byte() -> None:
    taken = lane_batch(Core(), 9)
    rebuilt = Batch.from_ops(taken.ops())
    assert rebuilt.body == taken.body
    assert rebuilt.ops() == taken.ops()
    assert rebuilt.count == 9
    assert (rebuilt.lane, rebuilt.start, rebuilt.end) == (None, 0, 9)
    assert [op["attributes"]["i"] for op in json.loads(rebuilt.body)["batch"]] == list(range(9))
    assert "lane=None" in repr(rebuilt) and "ops=9" in repr(rebuilt)

    first, second = rebuilt.split()
    lane_first, lane_second = taken.split()
    assert (first.body, second.body) == (lane_first.body, lane_second.body)
    assert (first.start, first.end, second.start, second.end) == (0, 4, 4, 9)
    assert (first.lane, second.lane) == (None, None)
    assert first.ops() + second.ops() == taken.ops()


def test_from_ops_accepts_any_sequence_of_bytes() -> None:
    ops = [b'{"type":"person","identifiers":{"id":"1"},"action":"identify","attributes":{}}', b"{}"]
    assert Batch.from_ops(tuple(ops)).body == b'{"batch":[' + b",".join(ops) + b"]}"
    assert Batch.from_ops(iter(ops)).ops() == ops


def test_a_core_refuses_to_ack_what_it_did_not_hand_out() -> None:
    core = Core()
    taken = lane_batch(core, 4)
    rebuilt = Batch.from_ops(taken.ops())
    with pytest.raises(ValueError, match="Batch.from_ops"):
        core.ack(rebuilt)
    with pytest.raises(ValueError, match="Batch.from_ops"):
        core.ack(rebuilt.split()[0])
    other = Core()
    with pytest.raises(ValueError, match="another Core"):
        other.ack(taken)
    assert core.stats()["counters"].get("delivered", 0) == 0
    assert other.stats()["counters"].get("delivered", 0) == 0
    # The lane's own batch (and a half of it) still acks as before.
    first, second = taken.split()
    core.ack(first, [0])
    core.ack(second)
    assert core.stats()["counters"]["delivered"] == 3


def test_from_ops_refuses_what_no_lane_could_hold() -> None:
    with pytest.raises(ValueError, match="at least one operation"):
        Batch.from_ops([])
    with pytest.raises(LimitError, match=r"ops\[1\] is 32769 bytes"):
        Batch.from_ops([b"{}", b"x" * (MAX_OP_BYTES + 1)])
    with pytest.raises(LimitError):
        Batch.from_ops([b""])
    with pytest.raises(TypeError):
        Batch.from_ops(["{}"])  # type: ignore[list-item]


def test_a_rebuilt_batch_split_on_413_delivers_every_operation(emulator: Emulator) -> None:
    # What the fleet worker does: ops read back as bytes, rebuilt, POSTed; a 413 splits them.
    taken = lane_batch(Core(), 60, pad=10_000)  # about 600 kB: over Customer.io's 500 kB
    rebuilt = Batch.from_ops(taken.ops())
    url = f"{emulator.url}/api/v2/batch"
    pending, statuses = [rebuilt], []
    while pending:
        batch = pending.pop(0)
        response = requests.post(url, data=batch.body, auth=(SITE_ID, API_KEY), timeout=30,
                                 headers={"Content-Type": "application/json"})
        statuses.append(response.status_code)
        if response.status_code == 413:
            pending.extend(batch.split())
    assert statuses == [413, 200, 200]
    events = all_events(emulator.state())
    sent_ids = [json.loads(op)["id"] for op in taken.ops()]
    assert sorted(e["id"] for e in events) == sorted(sent_ids)
