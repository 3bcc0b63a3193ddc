"""``Core.requeue`` (spool replay) checks every item before it pushes any: a bad item leaves the lane
as it was, instead of half the list queued and an exception for the rest."""

from __future__ import annotations

import pytest

from ciotrack._core import Core


def test_a_bad_item_leaves_the_lane_untouched() -> None:
    core = Core()
    with pytest.raises(TypeError):
        core.requeue(0, [b"{}", "{}", b"{}"])  # type: ignore[list-item]
    assert len(core.lane(0)) == 0
    assert core.requeue(0, [b'{"i":1}', b'{"i":2}']) == 2
    assert core.lane(0).drain_ops() == [b'{"i":1}', b'{"i":2}']


def test_requeue_stops_at_the_first_op_that_does_not_fit() -> None:
    core = Core(max_queue_ops=2)
    assert core.requeue(0, [b'{"i":1}', b'{"i":2}', b'{"i":3}']) == 2
    with pytest.raises(IndexError, match="lane 1 does not exist"):
        core.requeue(1, [b"{}"])
