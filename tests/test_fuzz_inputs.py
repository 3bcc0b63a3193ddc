"""Fuzz: arbitrary Python values into every Tracker method (issue 5).

Whatever a caller passes, a method either accepts it or raises one of the documented
``ciotrack.errors`` exceptions (``SerializationError`` is a ``TypeError``, ``InvalidValueError`` and
``LimitError`` are ``ValueError``s): never another exception, never a crash of the process. And a bad
call loses nothing else: the valid events sent between the bad ones are all delivered.
"""

from __future__ import annotations

import decimal
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ciotrack import _core
from ciotrack.emulator import Emulator
from ciotrack.errors import CiotrackError

from conftest import TrackerFactory, all_events


class FailingStr:
    """An object whose str() raises: error messages must not depend on it. (Its repr works, so that
    hypothesis can print a falsifying example.)"""

    def __str__(self) -> str:
        raise RuntimeError("__str__ exploded")

    def __repr__(self) -> str:
        return "FailingStr()"


def _cyclic_dict() -> dict[str, Any]:
    d: dict[str, Any] = {"a": 1}
    d["self"] = d
    return d


def _cyclic_list() -> list[Any]:
    items: list[Any] = [1]
    items.append(items)
    return items


surrogates = st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30), surrogates,
    st.binary(max_size=8), st.decimals(allow_nan=True, allow_infinity=True), st.datetimes(), st.dates(),
    st.uuids(), st.builds(FailingStr), st.builds(_cyclic_dict), st.builds(_cyclic_list),
    st.frozensets(st.integers(), max_size=3).map(set), st.builds(object),
)
keys = st.one_of(st.text(max_size=12), st.integers(), st.none(), surrogates, st.tuples(st.integers()))
values = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
ids = st.one_of(values, st.text(min_size=1, max_size=20), st.integers(min_value=-5, max_value=10**6))
names = st.one_of(st.text(max_size=120), values)
data = st.one_of(st.none(), st.dictionaries(keys, values, max_size=5), values)

CALLS = st.one_of(
    st.tuples(st.just("identify"), st.tuples(ids, data)),
    st.tuples(st.just("track"), st.tuples(ids, names, data)),
    st.tuples(st.just("track_anonymous"), st.tuples(ids, names, data)),
    st.tuples(st.just("page"), st.tuples(ids, names, data)),
    st.tuples(st.just("screen"), st.tuples(ids, names, data)),
    st.tuples(st.just("delete"), st.tuples(ids)),
    st.tuples(st.just("suppress"), st.tuples(ids)),
    st.tuples(st.just("unsuppress"), st.tuples(ids)),
    st.tuples(st.just("add_device"), st.tuples(ids, ids, st.one_of(st.sampled_from(["ios", "android"]), values))),
    st.tuples(st.just("delete_device"), st.tuples(ids, ids)),
    st.tuples(st.just("merge_customers"),
              st.tuples(st.sampled_from(["id", "email", "cio_id", "bogus"]), ids,
                        st.sampled_from(["id", "email", "cio_id"]), ids)),
    st.tuples(st.just("send_operation"), st.tuples(st.dictionaries(keys, values, max_size=5))),
)


def test_arbitrary_values_raise_only_documented_errors_and_lose_nothing_valid(
    emulator: Emulator, make_tracker: TrackerFactory
) -> None:
    tracker = make_tracker(senders=1, dedup_ttl=0)
    control_ids: list[str] = []
    raised: dict[str, int] = {}
    # A customer no generated id can collide with, so no fuzzed delete/merge touches the controls.
    control_customer = f"control-{uuid.uuid4()}"

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(call=CALLS)
    def one_bad_call_then_a_good_one(call: tuple[str, tuple[Any, ...]]) -> None:
        method, args = call
        try:
            getattr(tracker, method)(*args)
        except CiotrackError as error:
            assert isinstance(error, (TypeError, ValueError)), error
            raised[type(error).__name__] = raised.get(type(error).__name__, 0) + 1
        event_id = _core.ulid()
        tracker.track(control_customer, "control", {"n": len(control_ids), "d": decimal.Decimal("1.5")},
                      id=event_id)
        control_ids.append(event_id)

    one_bad_call_then_a_good_one()

    assert tracker.flush(timeout=60)
    stored = {e["id"] for e in all_events(emulator.state()) if e["name"] == "control"}
    assert stored == set(control_ids), f"{len(set(control_ids) - stored)} valid events lost"
    # The fuzzer did reach the error paths (and not only valid inputs).
    assert raised.get("SerializationError", 0) > 0 and raised.get("InvalidValueError", 0) + raised.get(
        "LimitError", 0) > 0, raised
