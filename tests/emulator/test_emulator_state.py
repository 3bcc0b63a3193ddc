"""Emulator state semantics (merge, _update, identifiers, devices, relationships, suppress, delete)
and the equivalence of the v2 fast path with the general path."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ciotrack.emulator import Emulator, fastpath, v2
from ciotrack.emulator.state import Workspace

SITE, KEY = "site-s", "key-s"
ULIDS = ["01HV5Z9Q8N6W3X2Y1T0S9R8P7" + c for c in "ABCDEFGH"]


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(workspaces={SITE: KEY}) as em:
        yield em


def op(pid: str | None, action: str, ident: str = "id", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "person", "action": action, **extra}
    if pid is not None:
        out["identifiers"] = {ident: pid}
    return out


def send(em: Emulator, *ops: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(f"{em.url}/api/v2/batch", json={"batch": list(ops)}, auth=(SITE, KEY), timeout=10)
    assert response.status_code in (200, 207), response.text
    result: dict[str, Any] = response.json()
    return result


def test_update_only_identify_never_creates(emulator: Emulator) -> None:
    send(emulator, op("1", "identify", attributes={"_update": True, "a": 1}))
    assert emulator.state()["people"] == {}
    send(emulator, op("1", "identify", attributes={"a": 1}), op("1", "identify", attributes={"_update": True, "b": 2}))
    assert emulator.state()["people"]["1"]["attributes"] == {"a": 1, "b": 2}


def test_null_or_empty_attribute_removes_it(emulator: Emulator) -> None:
    send(emulator, op("1", "identify", attributes={"a": 1, "b": 2, "email": "a@x"}),
         op("1", "identify", attributes={"a": None, "b": "", "email": None}))
    assert emulator.state()["people"]["1"]["attributes"] == {}
    # The email no longer finds the person.
    assert send(emulator, op("a@x", "suppress", ident="email")) == {}
    assert emulator.state()["people"]["1"]["suppressed"] is False


def test_people_by_email_and_cio_id(emulator: Emulator) -> None:
    send(emulator, op("e@x.io", "identify", ident="email", attributes={"plan": "pro"}))
    people = emulator.state()["people"]
    (key,) = people
    person = people[key]
    assert person["id"] is None and key == f"cio_{person['cio_id']}"
    assert person["attributes"] == {"email": "e@x.io", "plan": "pro"}
    send(emulator, op(person["cio_id"], "identify", ident="cio_id", attributes={"id": "u-1"}),
         op("e@x.io", "event", ident="email", name="login"),
         op(person["cio_id"], "event", ident="cio_id", name="logout"))
    people = emulator.state()["people"]
    assert list(people) == ["u-1"] and [e["name"] for e in people["u-1"]["events"]] == ["login", "logout"]
    errors = send(emulator, op("nope", "event", ident="cio_id", name="x"))["errors"]
    assert errors[0]["reason"] == "not_found"


def test_identifier_conflicts_are_rejected(emulator: Emulator) -> None:
    send(emulator, op("1", "identify", attributes={"email": "a@x"}), op("2", "identify", attributes={"b": 1}))
    result = send(emulator, op("2", "identify", attributes={"email": "a@x", "c": 3}),
                  op("2", "identify", attributes={"id": "1"}))
    assert [(e["field"], e["reason"]) for e in result["errors"]] == [
        ("attributes.email", "conflict"), ("attributes.id", "conflict")]
    assert emulator.state()["people"]["2"]["attributes"] == {"b": 1}


def test_merge_semantics(emulator: Emulator) -> None:
    send(emulator,
         op("p", "identify", attributes={"plan": "pro", "name": "P"}),
         op("p", "event", name="a", id=ULIDS[0], timestamp=1),
         op("p", "add_device", device={"token": "shared", "platform": "ios", "attributes": {"v": "p"}}),
         op("s", "identify", attributes={"plan": "free", "email": "s@x", "age": 30}),
         op("s", "event", name="b", id=ULIDS[1], timestamp=2),
         op("s", "add_device", device={"token": "s-only", "platform": "android"}),
         op("s", "add_relationships", cio_relationships=[{"identifiers": {"object_type_id": "1", "object_id": "o"}}]),
         op("s", "suppress"),
         {"type": "person", "action": "merge", "primary": {"id": "p"}, "secondary": {"email": "s@x"}})
    people = emulator.state()["people"]
    assert list(people) == ["p"]
    merged = people["p"]
    assert merged["attributes"] == {"plan": "pro", "name": "P", "email": "s@x", "age": 30}  # primary wins
    assert [e["name"] for e in merged["events"]] == ["a", "b"]
    assert sorted(merged["devices"]) == ["s-only", "shared"]
    assert merged["devices"]["shared"]["attributes"] == {"v": "p"}
    assert merged["relationships"] == [{"identifiers": {"object_type_id": "1", "object_id": "o"},
                                        "relationship_attributes": {}}]
    assert merged["suppressed"] is False  # the primary's flag stays
    # The secondary's email now finds the primary; the secondary's id is free again.
    send(emulator, op("s@x", "event", ident="email", name="c"))
    assert [e["name"] for e in emulator.state()["people"]["p"]["events"]] == ["a", "b", "c"]
    # Merging with a missing secondary, or a person with itself, changes nothing.
    assert send(emulator, {"type": "person", "action": "merge", "primary": {"id": "p"}, "secondary": {"id": "zz"}},
                {"type": "person", "action": "merge", "primary": {"id": "p"}, "secondary": {"id": "p"}}) == {}
    assert list(emulator.state()["people"]) == ["p"]


def test_merge_gives_the_primary_the_secondary_id_when_it_has_none(emulator: Emulator) -> None:
    send(emulator, op("p@x", "identify", ident="email", attributes={}), op("s-id", "identify", attributes={}),
         {"type": "person", "action": "merge", "primary": {"email": "p@x"}, "secondary": {"id": "s-id"}})
    people = emulator.state()["people"]
    assert list(people) == ["s-id"] and people["s-id"]["attributes"] == {"email": "p@x"}


def test_devices_move_to_the_latest_owner_and_update(emulator: Emulator) -> None:
    send(emulator, op("1", "add_device", device={"token": "t", "platform": "ios", "last_used": 5,
                                                 "attributes": {"a": "1"}}),
         op("1", "add_device", device={"token": "t", "platform": "ios", "attributes": {"b": "2"}}))
    assert emulator.state()["people"]["1"]["devices"]["t"] == {"platform": "ios", "last_used": 5,
                                                                "attributes": {"a": "1", "b": "2"}}
    send(emulator, op("2", "add_device", device={"token": "t", "platform": "android"}))
    people = emulator.state()["people"]
    assert people["1"]["devices"] == {} and people["2"]["devices"]["t"]["platform"] == "android"
    send(emulator, op("1", "delete_device", device={"token": "t"}))  # not 1's any more: no-op
    assert "t" in emulator.state()["people"]["2"]["devices"]
    send(emulator, op("2", "delete_device", device={"token": "t"}))
    assert emulator.state()["people"]["2"]["devices"] == {}


def test_relationships(emulator: Emulator) -> None:
    rel = {"identifiers": {"object_type_id": "1", "object_id": "acme"}, "relationship_attributes": {"role": "a"}}
    send(emulator, op("1", "add_relationships", cio_relationships=[rel]),
         op("1", "add_relationships", cio_relationships=[{**rel, "relationship_attributes": {"since": 2}}]),
         op("2", "identify", attributes={}, cio_relationships=[{"identifiers": {"cio_object_id": "x"}}]))
    people = emulator.state()["people"]
    assert people["1"]["relationships"] == [{"identifiers": rel["identifiers"],
                                             "relationship_attributes": {"role": "a", "since": 2}}]
    assert people["2"]["relationships"][0]["identifiers"] == {"cio_object_id": "x"}
    send(emulator, op("1", "delete_relationships", cio_relationships=[{"identifiers": rel["identifiers"]}]))
    assert emulator.state()["people"]["1"]["relationships"] == []
    errors = send(emulator, op("1", "add_relationships"), op("1", "add_relationships", cio_relationships=[{}]))
    assert [e["batch_index"] for e in errors["errors"]] == [0, 1]


def test_suppress_delete_and_unknown_people(emulator: Emulator) -> None:
    assert send(emulator, op("ghost", "suppress"), op("ghost", "delete"), op("ghost", "unsuppress")) == {}
    assert emulator.state()["people"] == {}
    send(emulator, op("1", "event", name="x"), op("1", "add_device", device={"token": "t", "platform": "ios"}),
         op("1", "delete"), op("2", "add_device", device={"token": "t", "platform": "ios"}))
    people = emulator.state()["people"]
    assert list(people) == ["2"]  # the deleted person's events and devices went with them


def test_snapshot_is_a_copy(emulator: Emulator) -> None:
    send(emulator, op("1", "identify", attributes={"a": 1}), op("1", "event", name="x", attributes={"k": 1}))
    snapshot = emulator.state()
    snapshot["people"]["1"]["attributes"]["a"] = 99
    snapshot["people"]["1"]["events"][0]["data"]["k"] = 99
    fresh = emulator.state()["people"]["1"]
    assert fresh["attributes"] == {"a": 1} and fresh["events"][0]["data"] == {"k": 1}


def test_integer_identifiers_are_strings(emulator: Emulator) -> None:
    send(emulator, {"type": "person", "identifiers": {"id": 42}, "action": "event", "name": "x"})
    assert list(emulator.state()["people"]) == ["42"]


# -- fast path == general path ------------------------------------------------------------------

_names = st.sampled_from(["checkout", " padded ", "", "n" * 26, "é" * 30, "x" * 101])
_ids = st.sampled_from([None, *ULIDS[:3], ULIDS[0].lower(), "bad", 7])
_pids: st.SearchStrategy[Any] = st.sampled_from(["1", "2", "", "p" * 40, "p" * 151, 5, None, True])
_attrs = st.sampled_from([None, {}, {"a": 1}, [1], "s", {"nested": {"b": [1, 2]}}])
_ts = st.sampled_from([None, 1_700_000_000, 1.5, "x", True, -5])


@st.composite
def _ops(draw: st.DrawFn) -> Any:
    kind = draw(st.sampled_from(["event", "event", "page", "screen", "anonymous", "identify", "other", "junk"]))
    if kind == "junk":
        return draw(st.sampled_from([1, "x", None, [], {"type": "person"}]))
    if kind == "identify":
        return op(draw(_pids), "identify", attributes={"n": draw(st.integers(0, 3))})
    if kind == "other":
        return op(draw(_pids), draw(st.sampled_from(["delete", "suppress", "fly"])))
    out: dict[str, Any] = {"type": "person", "action": "event" if kind == "anonymous" else kind,
                           "name": draw(_names)}
    if kind == "anonymous":
        out["identifiers"] = {"anonymous_id": draw(st.sampled_from(["a-1", "", None]))}
    else:
        pid = draw(_pids)
        out["identifiers"] = {"id": pid} if pid is not None else {"email": "e@x"}
    for key, strategy in (("id", _ids), ("attributes", _attrs), ("timestamp", _ts)):
        value = draw(strategy)
        if value is not None or draw(st.booleans()):
            out[key] = value
    if draw(st.integers(0, 9)) == 0:
        out["extra_field"] = 1
    return out


def _orjson_can(value: Any) -> bool:
    try:
        orjson.dumps(value)
        return True
    except TypeError:
        return False


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ops(), max_size=12))
def test_fast_path_matches_general_path(ops: list[Any]) -> None:
    body = orjson.dumps({"batch": [o for o in ops if _orjson_can(o)]})
    ops = orjson.loads(body)["batch"]
    fast_ws = Workspace("s", "k", 1)
    _, fast_errors = fastpath.apply_raw_batch(fast_ws, fastpath.split_batch(body), 1_000, v2.apply_op)
    slow_ws = Workspace("s", "k", 1)
    _, slow_errors = v2.apply_batch(slow_ws, ops, 1_000, check_op_sizes=True)
    assert fast_ws.snapshot() == slow_ws.snapshot()
    assert fast_errors == slow_errors
    assert (fast_ws.events_stored, fast_ws.duplicates) == (slow_ws.events_stored, slow_ws.duplicates)
