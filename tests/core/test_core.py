"""The native core (ciotrack._core) through its Python interface: encoding rules, operation layout,
Customer.io limits, dedup, overflow policies, batches, waits across threads, and fork detection."""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import enum
import json
import os
import threading
import time
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ciotrack import _core
from ciotrack._core import ACCEPTED, CLOSED, DEDUPED, FORKED, FULL, Batch, Bucket, Core
from ciotrack.errors import ConfigError, InvalidValueError, LimitError, SerializationError

ULID_A = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
ULID_B = "01BX5ZZKBKACTAV9WEVGEMMVRZ"
ULID_C = "01BX5ZZKBKACTAV9WEVGEMMVS0"


def drained(core: Core, lane: int = 0) -> list[dict[str, Any]]:
    return [json.loads(op) for op in core.lane(lane).drain_ops()]


def counters(core: Core) -> dict[str, int]:
    result: dict[str, int] = core.stats()["counters"]
    return result


# --- encoding: each supported type -----------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    PAIR = (1, "two")


class Level(enum.IntEnum):
    HIGH = 3


class Plan(enum.StrEnum):
    PRO = "pro"


class MyStr(str):
    pass


class MyInt(int):
    pass


class MyFloat(float):
    pass


class MyDict(dict):  # type: ignore[type-arg]
    pass


class MyList(list):  # type: ignore[type-arg]
    pass


PLUS_ONE = dt.timezone(dt.timedelta(hours=1))
ODD_OFFSET = dt.timezone(dt.timedelta(hours=-3, minutes=-30, microseconds=-250_000))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", b'"plain"'),
        ('q"b\\s/\n\t\x00\x1f', b'"q\\"b\\\\s/\\n\\t\\u0000\\u001f"'),
        ("héllo 中 😀", '"héllo 中 😀"'.encode()),
        (0, b"0"),
        (-42, b"-42"),
        (2**63 - 1, b"9223372036854775807"),
        (-(2**63), b"-9223372036854775808"),
        (2**64 - 1, b"18446744073709551615"),
        (1.5, b"1.5"),
        (0.1, b"0.1"),
        (-0.0, b"-0.0"),
        (1e300, b"1e+300"),
        (True, b"true"),
        (False, b"false"),
        (None, b"null"),
        ({}, b"{}"),
        ([], b"[]"),
        ((), b"[]"),
        ({"a": 1, "b": [1, 2, {"c": None}]}, b'{"a":1,"b":[1,2,{"c":null}]}'),
        ((1, ("x", 2.5)), b'[1,["x",2.5]]'),
        (dt.datetime(2024, 1, 1, 0, 0, 0), b"1704067200"),
        (dt.datetime(2024, 1, 1, 1, 0, 0, tzinfo=PLUS_ONE), b"1704067200"),
        (dt.datetime(2024, 1, 1, tzinfo=dt.UTC), b"1704067200"),
        (dt.datetime(1970, 1, 1, 0, 0, 1, 999_999), b"1"),
        (dt.datetime(1969, 12, 31, 23, 59, 59, 500_000), b"-1"),
        (dt.datetime(2024, 1, 1, 0, 0, 0, tzinfo=ODD_OFFSET), b"1704079800"),
        (dt.date(2024, 2, 29), b'"2024-02-29"'),
        (dt.date(5, 1, 1), b'"0005-01-01"'),
        (decimal.Decimal("3.14159265358979323846264338327950288"), b"3.14159265358979323846264338327950288"),
        (decimal.Decimal("1.10"), b"1.10"),
        (decimal.Decimal("1E+3"), b"1E+3"),
        (decimal.Decimal("-0"), b"-0"),
        (decimal.Decimal("0.000001"), b"0.000001"),
        (decimal.Decimal("1E-7"), b"1E-7"),
        (decimal.Decimal("1.7976931348623157E+308"), b"1.7976931348623157E+308"),  # the largest double
        (decimal.Decimal("1E-400"), b"1E-400"),  # read as 0 by a double parser: not refused
        (uuid.UUID("12345678-1234-5678-1234-567812345678"), b'"12345678-1234-5678-1234-567812345678"'),
        (Color.RED, b'"red"'),
        (Color.PAIR, b'[1,"two"]'),
        (Level.HIGH, b"3"),
        (Plan.PRO, b'"pro"'),
        ([Color.RED, {"lvl": Level.HIGH}], b'["red",{"lvl":3}]'),
        (MyStr("sub"), b'"sub"'),
        (MyInt(7), b"7"),
        (MyFloat(2.5), b"2.5"),
        (MyDict(k=MyList([1])), b'{"k":[1]}'),
        (collections.OrderedDict([("z", 1), ("a", 2)]), b'{"z":1,"a":2}'),
        ({MyStr("k"): 1}, b'{"k":1}'),
    ],
)
def test_each_supported_type_encodes_to_exact_json(value: Any, expected: bytes) -> None:
    assert _core.encode(value) == expected


def test_aware_datetime_is_converted_exactly_through_its_offset() -> None:
    moment = dt.datetime(2030, 6, 1, 12, 30, 15, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=45)))
    assert _core.encode(moment) == str(int(moment.timestamp())).encode()


def test_output_is_compact() -> None:
    assert b" " not in _core.encode({"a": [1, 2], "b": {"c": "d"}})


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_json_values_round_trip_through_a_standard_parser(value: Any) -> None:
    assert json.loads(_core.encode(value)) == value


# --- encoding: errors name the path ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ({"items": [1, 2, {3}]}, SerializationError, "data['items'][2]: unsupported type 'set'"),
        ({"b": b"bytes"}, SerializationError, "data['b']: unsupported type 'bytes'"),
        ({"o": object()}, SerializationError, "data['o']: unsupported type 'object'"),
        ({"t": dt.time(1, 2)}, SerializationError, "data['t']: unsupported type 'time'"),
        ({"k": {1: "x"}}, SerializationError, "data['k']: dict key 1 is not a str ('int')"),
        ({"f": float("nan")}, InvalidValueError, "data['f']: float NaN is not allowed"),
        ({"f": [float("inf")]}, InvalidValueError, "data['f'][0]: float inf is not allowed"),
        ({"n": 2**64}, InvalidValueError, "data['n']: int does not fit in 64 bits"),
        ({"n": -(2**63) - 1}, InvalidValueError, "data['n']: int does not fit in 64 bits"),
        ({"s": "a\ud800b"}, InvalidValueError, "data['s']: string contains a lone surrogate"),
        ({"d": decimal.Decimal("NaN")}, InvalidValueError, "data['d']: Decimal('NaN') is not a finite number"),
        ({"d": decimal.Decimal("-Infinity")}, InvalidValueError, "data['d']: Decimal('-Infinity') is not"),
        ({"d": decimal.Decimal("sNaN")}, InvalidValueError, "data['d']: Decimal('sNaN') is not"),
        # Valid JSON, but infinity to Customer.io's (every double-based) parser: refused like float('inf').
        ({"d": decimal.Decimal("1E+400")}, InvalidValueError, "data['d']: Decimal('1E+400') is not a finite number"),
        ({"d": decimal.Decimal("-1.8E+308")}, InvalidValueError, "data['d']: Decimal('-1.8E+308') is not"),
        ({"d": decimal.Decimal("9" * 400)}, InvalidValueError, "data['d']: Decimal('" + "9" * 40 + "...') is not"),
        ({"it's": {"x": {2}}}, SerializationError, "data[\"it's\"]['x']: unsupported type 'set'"),
    ],
)
def test_errors_have_the_right_class_and_name_the_path(value: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as raised:
        _core.encode(value, "data")
    assert str(raised.value).startswith(message), str(raised.value)


def test_error_classes_are_stdlib_errors_too() -> None:
    with pytest.raises(TypeError):
        _core.encode({1, 2})
    with pytest.raises(ValueError):
        _core.encode(float("nan"))


def test_lone_surrogate_in_a_key_is_invalid() -> None:
    with pytest.raises(InvalidValueError, match=r"^data: key '\\ud800' contains a lone surrogate"):
        _core.encode({"\ud800": 1}, "data")


def test_the_default_root_is_value() -> None:
    with pytest.raises(SerializationError, match=r"^value\[0\]: unsupported type 'set'"):
        _core.encode([set()])


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_nesting_up_to_64_containers_is_fine_and_65_is_not() -> None:
    assert _core.encode(nested(64)).count(b"{") == 64
    with pytest.raises(SerializationError, match=r"nesting deeper than 64"):
        _core.encode(nested(65))


def test_a_cycle_is_reported_not_followed() -> None:
    cyclic: dict[str, Any] = {}
    cyclic["a"] = cyclic
    with pytest.raises(SerializationError) as raised:
        _core.encode(cyclic, "data")
    assert str(raised.value).startswith("data['a']['a']")
    assert "...: nesting deeper than 64 (cyclic?)" in str(raised.value)
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match=r"^value\[0\]\[0\].*nesting deeper than 64"):
        _core.encode(loop)


def test_an_exception_from_python_code_in_a_value_propagates() -> None:
    class BadOffset(dt.tzinfo):
        def utcoffset(self, _: dt.datetime | None) -> dt.timedelta:
            raise RuntimeError("no offset today")

    with pytest.raises(RuntimeError, match="no offset today"):
        _core.encode(dt.datetime(2024, 1, 1, tzinfo=BadOffset()))


# --- operations: exact layout -----------------------------------------------------------------------


def test_identify_layout() -> None:
    core = Core()
    assert core.identify(0, "u1", {"plan": "pro", "n": 1}, timestamp=1_700_000_000) == ACCEPTED
    assert core.identify(0, 42, None, timestamp=1_700_000_001.9) == ACCEPTED
    assert core.identify(0, "cio_abc", {}, timestamp=dt.datetime(2024, 1, 1)) == ACCEPTED
    assert core.lane(0).drain_ops() == [
        b'{"type":"person","identifiers":{"id":"u1"},"action":"identify",'
        b'"attributes":{"plan":"pro","n":1},"timestamp":1700000000}',
        b'{"type":"person","identifiers":{"id":"42"},"action":"identify","attributes":{},"timestamp":1700000001}',
        b'{"type":"person","identifiers":{"cio_id":"abc"},"action":"identify","attributes":{},"timestamp":1704067200}',
    ]


def test_event_layout_for_person_and_anonymous() -> None:
    core = Core()
    assert core.event(0, "event", "u1", None, "  Signed Up ", {"plan": "pro"}, ULID_A, 5) == ACCEPTED
    assert core.event(0, "page", None, "anon-1", "/home", None, ULID_B, 6) == ACCEPTED
    assert core.event(0, "screen", 7, None, "Main", {}, ULID_C.lower(), 7) == ACCEPTED
    assert core.lane(0).drain_ops() == [
        b'{"type":"person","identifiers":{"id":"u1"},"action":"event","name":"Signed Up",'
        b'"id":"01ARZ3NDEKTSV4RRFFQ69G5FAV","timestamp":5,"attributes":{"plan":"pro"}}',
        b'{"type":"person","identifiers":{"anonymous_id":"anon-1"},"action":"page","name":"/home",'
        b'"id":"01BX5ZZKBKACTAV9WEVGEMMVRZ","timestamp":6}',
        b'{"type":"person","identifiers":{"id":"7"},"action":"screen","name":"Main",'
        b'"id":"01BX5ZZKBKACTAV9WEVGEMMVS0","timestamp":7,"attributes":{}}',
    ]


def test_event_defaults_a_fresh_ulid_and_the_current_time() -> None:
    core = Core(dedup_ttl=0)
    before = int(time.time())
    for _ in range(3):
        core.event(0, "event", "u1", None, "Tick")
    after = int(time.time())
    ops = drained(core)
    ids = [op["id"] for op in ops]
    assert len(set(ids)) == 3 and all(_core.is_ulid(i) and i == i.upper() for i in ids)
    assert all(before <= op["timestamp"] <= after for op in ops)
    assert all("attributes" not in op for op in ops)


def test_person_and_raw_layouts() -> None:
    core = Core()
    device = {"token": "tok", "platform": "ios"}
    assert core.person(0, "add_device", "u1", {"device": device}) == ACCEPTED
    assert core.person(0, "delete", "cio_9") == ACCEPTED
    merge = {"type": "person", "action": "merge", "primary": {"id": "a"}, "secondary": {"id": "b"}}
    assert core.raw(0, merge) == ACCEPTED
    assert core.lane(0).drain_ops() == [
        b'{"type":"person","identifiers":{"id":"u1"},"action":"add_device","device":{"token":"tok","platform":"ios"}}',
        b'{"type":"person","identifiers":{"cio_id":"9"},"action":"delete"}',
        b'{"type":"person","action":"merge","primary":{"id":"a"},"secondary":{"id":"b"}}',
    ]


def test_person_fields_cannot_override_the_operation_keys() -> None:
    with pytest.raises(InvalidValueError, match=r"^fields\['action'\]"):
        Core().person(0, "delete", "u1", {"action": "identify"})


def test_a_non_dict_mapping_is_accepted_as_data() -> None:
    core = Core()
    from types import MappingProxyType

    core.event(0, "event", "u1", None, "E", MappingProxyType({"a": 1}), ULID_A, 1)
    assert drained(core)[0]["attributes"] == {"a": 1}
    with pytest.raises(SerializationError, match=r"^data: must be a dict, not 'list'"):
        core.event(0, "event", "u1", None, "E", [1], ULID_B, 1)  # type: ignore[arg-type]


def test_mutating_the_arguments_after_the_call_changes_nothing_queued() -> None:
    core = Core()
    data: dict[str, Any] = {"items": [1, 2], "user": {"name": "a"}}
    core.event(0, "event", "u1", None, "E", data, ULID_A, 1)
    data["items"].append(3)
    data["user"]["name"] = "changed"
    data["new"] = True
    assert drained(core)[0]["attributes"] == {"items": [1, 2], "user": {"name": "a"}}


# --- operations: validation and limits ------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda c: c.identify(0, "", None), InvalidValueError, "customer_id: must not be empty"),
        (lambda c: c.identify(0, "x" * 151, None), LimitError, "customer_id: 151 bytes, Customer.io allows 150"),
        (lambda c: c.identify(0, True, None), SerializationError, "customer_id: must be a str or int"),
        (lambda c: c.identify(0, 2**64, None), InvalidValueError, "customer_id: int does not fit"),
        (lambda c: c.identify(0, 1.5, None), SerializationError, "customer_id: must be a str, not 'float'"),
        (lambda c: c.event(0, "event", "u", None, "  "), InvalidValueError, "name: must not be empty"),
        (lambda c: c.event(0, "event", "u", None, "n" * 101), LimitError, "name: 101 bytes, Customer.io allows 100"),
        (lambda c: c.event(0, "track", "u", None, "n"), InvalidValueError, "action: 'track' is not one of"),
        (lambda c: c.event(0, "event", "u", "a", "n"), InvalidValueError, "customer_id/anonymous_id: exactly one"),
        (lambda c: c.event(0, "event", None, None, "n"), SerializationError, "customer_id: must be a str, not"),
        (lambda c: c.event(0, "event", None, "", "n"), InvalidValueError, "anonymous_id: must not be empty"),
        (lambda c: c.event(0, "event", "u", None, "n", id="not-a-ulid"), InvalidValueError, "id: 'not-a-ulid' is not"),
        (lambda c: c.event(0, "event", "u", None, "n", id="8" + ULID_A[1:]), InvalidValueError, "id: "),
        (lambda c: c.event(0, "event", "u", None, "n", timestamp="now"), SerializationError, "timestamp: must be"),
        (lambda c: c.event(0, "event", "u", None, "n", timestamp=float("nan")), InvalidValueError, "timestamp: "),
        (lambda c: c.event(0, "event", "u", None, "n", {"x": {1}}), SerializationError, "data['x']: unsupported"),
        (lambda c: c.identify(0, "u", {"x": [{1}]}), SerializationError, "attributes['x'][0]: unsupported"),
        (lambda c: c.person(0, "", "u"), InvalidValueError, "action: must not be empty"),
        (lambda c: c.raw(0, {"a": float("inf")}), InvalidValueError, "op['a']: float inf"),
        (lambda c: c.identify(0, "\ud800", None), InvalidValueError, "customer_id: string contains a lone"),
    ],
)
def test_invalid_calls_raise_queue_nothing_and_count_invalid(call: Any, error: type[Exception], message: str) -> None:
    core = Core()
    with pytest.raises(error) as raised:
        call(core)
    assert str(raised.value).startswith(message), str(raised.value)
    assert len(core.lane(0)) == 0
    stats = counters(core)
    assert stats["invalid"] == 1
    assert stats["accepted"] == 0


def test_customer_id_and_event_name_at_exactly_the_limit() -> None:
    core = Core()
    assert core.identify(0, "x" * 150, None) == ACCEPTED
    assert core.event(0, "event", "u", None, "é" * 50, id=ULID_A) == ACCEPTED  # 100 bytes
    with pytest.raises(LimitError):
        core.event(0, "event", "u", None, "é" * 50 + "x", id=ULID_B)


def test_identify_attribute_limits() -> None:
    core = Core(dedup_ttl=0)
    assert core.identify(0, "u", {f"a{i}": i for i in range(300)}) == ACCEPTED
    with pytest.raises(LimitError, match=r"^attributes: 301 attributes, Customer.io allows 300"):
        core.identify(0, "u", {f"a{i}": i for i in range(301)})
    assert core.identify(0, "u", {"k" * 150: 1}) == ACCEPTED
    with pytest.raises(LimitError, match=r"^attributes\['kkk.*'\]: name is 151 bytes"):
        core.identify(0, "u", {"k" * 151: 1})
    assert core.identify(0, "u", {"bio": "b" * 998}) == ACCEPTED  # 1000 bytes with quotes
    with pytest.raises(LimitError) as raised:
        core.identify(0, "u", {"bio": "b" * 1198})
    assert str(raised.value) == "attributes['bio']: value is 1200 bytes, Customer.io allows 1000"


def test_event_data_values_have_no_per_value_limit() -> None:
    assert Core().event(0, "event", "u", None, "E", {"big": "b" * 5000}, ULID_A) == ACCEPTED


def test_operation_size_limit_at_exactly_32768_and_one_over() -> None:
    core = Core(dedup_events="off")
    core.event(0, "event", "u", None, "E", {"x": ""}, ULID_A, 1)
    base = len(core.lane(0).drain_ops()[0])
    fill = _core.MAX_OP_BYTES - base
    assert core.event(0, "event", "u", None, "E", {"x": "a" * fill}, ULID_A, 1) == ACCEPTED
    assert len(core.lane(0).drain_ops()[0]) == _core.MAX_OP_BYTES
    with pytest.raises(LimitError) as raised:
        core.event(0, "event", "u", None, "E", {"x": "a" * (fill + 1)}, ULID_B, 1)
    assert str(raised.value) == ("event 'E': operation is 32769 bytes encoded, Customer.io allows 32768; "
                                 "largest property in data: 'x' (32631 bytes encoded)")
    with pytest.raises(LimitError, match=r"^op: operation is \d+ bytes"):
        core.raw(0, {"x": "a" * 40_000})


def test_lane_index_is_checked() -> None:
    with pytest.raises(IndexError):
        Core(lanes=2).identify(2, "u", None)


@pytest.mark.parametrize(
    "options",
    [{"lanes": 0}, {"on_full": "drop_all"}, {"dedup_events": "name"}, {"max_batch_bytes": 500_001},
     {"max_queue_ops": 0}, {"block_timeout": float("nan")}],
)
def test_bad_options_raise_config_error(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Core(**options)


# --- ULIDs ----------------------------------------------------------------------------------------


def test_ulids_are_well_formed_time_ordered_and_unique() -> None:
    crockford = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
    ids = [_core.ulid() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 26 and set(i) <= crockford and i[0] <= "7" for i in ids[:1000])
    now_ms = int(time.time() * 1000)
    decoded_ms = int("".join(f"{'0123456789ABCDEFGHJKMNPQRSTVWXYZ'.index(c):05b}" for c in ids[-1])[2:50], 2)
    assert abs(decoded_ms - now_ms) < 60_000


@pytest.mark.parametrize(
    ("value", "valid"),
    [(ULID_A, True), (ULID_A.lower(), True), ("7ZZZZZZZZZZZZZZZZZZZZZZZZZ", True),
     ("8ZZZZZZZZZZZZZZZZZZZZZZZZZ", False),
     (ULID_A[:-1], False), (ULID_A + "0", False), (ULID_A[:-1] + "U", False), (ULID_A[:-1] + "I", False), ("", False),
     ("\ud800" * 26, False)],
)
def test_is_ulid(value: str, valid: bool) -> None:
    assert _core.is_ulid(value) is valid


# --- dedup ------------------------------------------------------------------------------------------


def test_identify_dedup_same_attributes_and_a_to_b_to_a() -> None:
    core = Core()
    assert core.identify(0, "u1", {"plan": "a"}, timestamp=1) == ACCEPTED
    assert core.identify(0, "u1", {"plan": "a"}, timestamp=2) == DEDUPED
    assert core.identify(0, "u2", {"plan": "a"}) == ACCEPTED  # another person
    assert core.identify(0, "u1", {"plan": "b"}) == ACCEPTED
    assert core.identify(0, "u1", {"plan": "a"}) == ACCEPTED  # A -> B -> A is a change each time
    assert core.identify(0, "u1", {"plan": "a"}) == DEDUPED
    assert core.identify(0, 7, None) == ACCEPTED
    assert core.identify(0, "7", {}) == DEDUPED  # int 7 and "7" are the same person, None == {}
    stats = counters(core)
    assert stats["deduped_identify"] == 3 and stats["accepted"] == 5
    assert len(core.lane(0)) == 5


def test_delete_forgets_identify_dedup_so_the_person_is_recreated() -> None:
    core = Core()
    assert core.identify(0, "u1", {"plan": "a"}) == ACCEPTED
    assert core.identify(0, "u2", {"plan": "a"}) == ACCEPTED
    assert core.person(0, "delete", "u1") == ACCEPTED
    # Identical to the identify before the delete: it must go out again, or u1 stays deleted.
    assert core.identify(0, "u1", {"plan": "a"}) == ACCEPTED
    assert core.identify(0, "u2", {"plan": "a"}) == DEDUPED  # other people keep their entries
    # Suppress deletes too, and identifies sent while suppressed are refused: after an unsuppress the
    # last identify must go out again as well.
    for action in ("suppress", "unsuppress"):
        assert core.identify(0, "u1", {"plan": "a"}) == DEDUPED
        assert core.person(0, action, "u1") == ACCEPTED
        assert core.identify(0, "u1", {"plan": "a"}) == ACCEPTED
    assert core.person(0, "add_device", "u1", {"device": {"token": "t", "platform": "ios"}}) == ACCEPTED
    assert core.identify(0, "u1", {"plan": "a"}) == DEDUPED  # other person actions forget nothing


def test_raw_deletes_and_merges_forget_their_peoples_identify_dedup() -> None:
    core = Core()
    for person in ("keep", "gone", "merged", "primary", "cio"):
        assert core.identify(0, person, {"plan": "a"}) == ACCEPTED
    assert core.identify(0, "cio_c9", {"plan": "a"}) == ACCEPTED
    assert core.raw(0, {"type": "person", "identifiers": {"id": "gone"}, "action": "delete"}) == ACCEPTED
    assert core.raw(0, {"type": "person", "action": "merge", "primary": {"id": "primary"},
                        "secondary": {"id": "merged"}}) == ACCEPTED
    assert core.raw(0, {"type": "person", "identifiers": {"cio_id": "c9"}, "action": "suppress"}) == ACCEPTED
    assert core.raw(0, {"type": "person", "identifiers": {"id": "keep"}, "action": "add_device",
                        "device": {"token": "t"}}) == ACCEPTED
    for person in ("gone", "merged", "primary", "cio_c9"):
        assert core.identify(0, person, {"plan": "a"}) == ACCEPTED, person
    assert core.identify(0, "keep", {"plan": "a"}) == DEDUPED


def test_forget_lost_gives_back_the_keys_of_operations_that_failed_for_good() -> None:
    for events in ("id", "composite"):
        core = Core(dedup_events=events)
        assert core.identify(0, "u1", {"plan": "a"}) == ACCEPTED
        assert core.identify(0, "u2", {"plan": "a"}) == ACCEPTED
        assert core.event(0, "page", "u1", None, "/caf\u00e9 \"q\"", {"n": [1, 2.5]}, ULID_A) == ACCEPTED
        assert core.event(0, "event", None, "anon-1", "E", None, ULID_B) == ACCEPTED
        [identify_u1, _, page, anonymous] = core.lane(0).drain_ops()
        assert core.forget_lost([identify_u1, page, anonymous, b"not an op", "not bytes"]) == 3
        # What failed can be sent again; what was delivered is still a duplicate.
        assert core.identify(0, "u1", {"plan": "a"}) == ACCEPTED
        assert core.identify(0, "u2", {"plan": "a"}) == DEDUPED
        assert core.event(0, "page", "u1", None, "/caf\u00e9 \"q\"", {"n": [1, 2.5]}, ULID_A) == ACCEPTED
        assert core.event(0, "event", None, "anon-1", "E", None, ULID_B) == ACCEPTED
        assert core.event(0, "event", None, "anon-1", "E", None, ULID_B) == DEDUPED
    assert Core(dedup_ttl=0).forget_lost([identify_u1]) == 0


def test_dedup_ttl_zero_disables_dedup() -> None:
    core = Core(dedup_ttl=0)
    assert core.identify(0, "u1", {"plan": "a"}) == ACCEPTED
    assert core.identify(0, "u1", {"plan": "a"}) == ACCEPTED
    assert core.event(0, "event", "u1", None, "E", id=ULID_A) == ACCEPTED
    assert core.event(0, "event", "u1", None, "E", id=ULID_A) == ACCEPTED


def test_event_dedup_by_id() -> None:
    core = Core()
    assert core.event(0, "event", "u1", None, "E", {"a": 1}, ULID_A) == ACCEPTED
    assert core.event(0, "event", "u2", None, "Other", None, ULID_A.lower()) == DEDUPED
    assert core.event(0, "event", "u1", None, "E", {"a": 1}, ULID_B) == ACCEPTED
    assert core.event(0, "event", "u1", None, "E", {"a": 1}) == ACCEPTED  # fresh ids never collide
    assert core.event(0, "event", "u1", None, "E", {"a": 1}) == ACCEPTED
    assert counters(core)["deduped_event"] == 1


def test_event_dedup_composite() -> None:
    core = Core(dedup_events="composite")
    assert core.event(0, "event", "u1", None, "E", {"a": 1}) == ACCEPTED
    assert core.event(0, "event", "u1", None, "E", {"a": 1}) == DEDUPED
    assert core.event(0, "event", "u1", None, "E", {"a": 2}) == ACCEPTED
    assert core.event(0, "event", "u1", None, "E") == ACCEPTED
    assert core.event(0, "event", "u1", None, "E", {}) == ACCEPTED
    assert core.event(0, "page", "u1", None, "E", {"a": 1}) == ACCEPTED
    assert core.event(0, "event", "u2", None, "E", {"a": 1}) == ACCEPTED
    assert core.event(0, "event", None, "u1", "E", {"a": 1}) == ACCEPTED  # anonymous is someone else
    assert counters(core)["deduped_event"] == 1


def test_event_dedup_off() -> None:
    core = Core(dedup_events="off")
    assert core.event(0, "event", "u1", None, "E", id=ULID_A) == ACCEPTED
    assert core.event(0, "event", "u1", None, "E", id=ULID_A) == ACCEPTED


def test_a_refused_op_is_not_recorded_for_dedup() -> None:
    core = Core(max_queue_ops=1)
    assert core.identify(0, "u0", None) == ACCEPTED
    assert core.identify(0, "u1", {"a": 1}) == FULL
    core.lane(0).clear()
    assert core.identify(0, "u1", {"a": 1}) == ACCEPTED


# --- overflow policies ------------------------------------------------------------------------------


def fill(core: Core, n: int, start: int = 0) -> list[int]:
    return [core.person(0, "delete", f"u{i}") for i in range(start, start + n)]


def ids_in(ops: list[bytes]) -> list[str]:
    return [json.loads(op)["identifiers"]["id"] for op in ops]


def test_drop_newest_refuses_and_counts() -> None:
    core = Core(max_queue_ops=2)
    assert fill(core, 3) == [ACCEPTED, ACCEPTED, FULL]
    assert ids_in(core.lane(0).drain_ops()) == ["u0", "u1"]
    assert counters(core)["dropped_full"] == 1


def test_byte_bound_refuses_too() -> None:
    core = Core(max_queue_bytes=150)
    assert fill(core, 3) == [ACCEPTED, ACCEPTED, FULL]
    assert core.lane(0).queued_bytes() <= 150


def test_drop_oldest_evicts_and_counts() -> None:
    core = Core(max_queue_ops=2, on_full="drop_oldest")
    assert fill(core, 4) == [ACCEPTED] * 4
    assert ids_in(core.lane(0).drain_ops()) == ["u2", "u3"]
    stats = counters(core)
    assert stats["dropped_oldest"] == 2 and stats["dropped_full"] == 0 and stats["accepted"] == 4
    lane = core.lane(0)
    assert lane.pushed() == 4 and lane.taken() == 4


def test_spool_policy_hands_refused_ops_to_the_overflow_list() -> None:
    core = Core(max_queue_ops=2, on_full="spool")
    assert fill(core, 4) == [ACCEPTED] * 4
    assert ids_in(core.take_overflow()) == ["u2", "u3"]
    assert core.take_overflow() == []
    assert ids_in(core.lane(0).drain_ops()) == ["u0", "u1"]


def test_block_policy_gives_up_after_the_timeout() -> None:
    core = Core(max_queue_ops=1, on_full="block", block_timeout=0.05)
    assert fill(core, 2) == [ACCEPTED, FULL]
    assert counters(core)["dropped_full"] == 1


def test_block_policy_waits_for_a_consumer() -> None:
    core = Core(max_queue_ops=1, on_full="block", block_timeout=30)
    fill(core, 1)
    lane = core.lane(0)
    taken: list[bytes] = []
    about_to_push = threading.Event()

    def consume() -> None:
        about_to_push.wait(10)
        deadline = time.monotonic() + 10
        while len(taken) < 2 and time.monotonic() < deadline:
            batch = lane.next_batch()
            if batch is not None:
                taken.extend(batch.ops())
            else:
                lane.wait(1, 0.05)

    consumer = threading.Thread(target=consume)
    consumer.start()
    about_to_push.set()
    assert core.person(0, "delete", "u1") == ACCEPTED
    consumer.join(15)
    assert ids_in(taken) == ["u0", "u1"]


def test_close_releases_a_blocked_producer() -> None:
    core = Core(max_queue_ops=1, on_full="block", block_timeout=60)
    fill(core, 1)
    threading.Timer(0.05, core.close).start()
    started = time.monotonic()
    assert core.person(0, "delete", "u1") == FULL
    assert time.monotonic() - started < 30  # far below the 60 s timeout: close() woke it


def test_requeue_pushes_encoded_ops_back_in_order_until_full() -> None:
    core = Core(max_queue_ops=3)
    ops = [b'{"n":1}', b'{"n":2}', b'{"n":3}', b'{"n":4}']
    assert core.requeue(0, ops) == 3
    assert core.lane(0).drain_ops() == ops[:3]
    assert counters(core)["accepted"] == 0


# --- batches ----------------------------------------------------------------------------------------


def test_batches_are_valid_fifo_and_within_the_byte_limit() -> None:
    core = Core(dedup_ttl=0)
    for i in range(4000):
        core.event(0, "event", f"user-{i}", None, "Viewed", {"i": i, "pad": "p" * 100})
    lane = core.lane(0)
    seen: list[int] = []
    expected_start = 0
    while (batch := lane.next_batch()) is not None:
        assert isinstance(batch, Batch)
        assert len(batch.body) <= _core.MAX_BATCH_BYTES
        body = json.loads(batch.body)
        assert batch.count == len(body["batch"]) == len(batch.ops())
        assert batch.body == b'{"batch":[' + b",".join(batch.ops()) + b"]}"
        assert (batch.start, batch.end) == (expected_start, expected_start + batch.count)
        assert batch.lane == 0 and batch.oldest_age() >= 0
        expected_start = batch.end
        seen.extend(op["attributes"]["i"] for op in body["batch"])
    assert seen == list(range(4000))
    assert lane.taken() == lane.pushed() == 4000


def test_small_batches_respect_max_bytes_and_max_ops() -> None:
    core = Core(max_batch_bytes=1000)
    fill(core, 50)
    lane = core.lane(0)
    first = lane.next_batch(max_ops=3)
    assert first is not None and first.count == 3
    order = ids_in(first.ops())
    while (batch := lane.next_batch()) is not None:
        assert len(batch.body) <= 1000
        order += ids_in(batch.ops())
    assert order == [f"u{i}" for i in range(50)]


def test_batch_split_halves_keep_order_and_validity() -> None:
    core = Core()
    fill(core, 5)
    batch = core.lane(0).next_batch()
    assert batch is not None
    first, second = batch.split()
    assert first.ops() + second.ops() == batch.ops()
    assert (first.count, second.count) == (2, 3) or (first.count, second.count) == (3, 2)
    assert (first.start, first.end, second.start, second.end) == (0, first.count, first.count, 5)
    for half in (first, second):
        assert json.loads(half.body)["batch"] == [json.loads(op) for op in half.ops()]
    fill(core, 1, start=5)
    single = core.lane(0).next_batch()
    assert single is not None and single.count == 1
    with pytest.raises(ValueError):
        single.split()


def test_empty_lane_gives_no_batch() -> None:
    assert Core().lane(0).next_batch() is None


def test_ack_counts_delivered_and_records_latency() -> None:
    core = Core()
    fill(core, 4)
    batch = core.lane(0).next_batch()
    assert batch is not None
    core.ack(batch, [1, 3])
    stats = core.stats()
    assert stats["counters"]["delivered"] == 2
    latency = stats["histograms"]["delivery_latency_seconds"]
    assert latency["count"] == 2 and latency["max"] >= 0


def test_stats_shape() -> None:
    core = Core(lanes=2)
    fill(core, 3)
    core.incr("retried", 2)
    core.observe("batch_ops", 3.0)
    stats = core.stats()
    for name in ("accepted", "invalid", "deduped_identify", "deduped_event", "dropped_full", "dropped_oldest"):
        assert name in stats["counters"]
    assert stats["counters"]["retried"] == 2 and stats["counters"]["accepted"] == 3
    assert stats["gauges"]["lane0_ops"] == 3 and stats["gauges"]["lane1_ops"] == 0
    assert stats["gauges"]["lane0_bytes"] == core.lane(0).queued_bytes() > 0
    assert set(stats["histograms"]["batch_ops"]) == {"count", "sum", "p50", "p95", "p99", "max", "buckets"}
    bounds = _core.histogram_bounds("batch_ops")
    assert stats["histograms"]["batch_ops"]["buckets"] == [(le, int(le >= 3.0)) for le in bounds]
    assert core.lanes == 2


# --- waiting across threads -------------------------------------------------------------------------


def run_in_thread(target: Any) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    started = threading.Event()

    def body() -> None:
        started.set()
        result.append(target())

    thread = threading.Thread(target=body)
    thread.start()
    started.wait(5)
    return thread, result


def test_wait_returns_when_bytes_arrive_from_another_thread() -> None:
    core = Core()
    lane = core.lane(0)
    thread, result = run_in_thread(lambda: lane.wait(1, 30))
    core.person(0, "delete", "u1")
    thread.join(10)
    assert result == [True]


def test_close_releases_waiters_and_later_waits() -> None:
    core = Core()
    lane = core.lane(0)
    fill(core, 1)
    thread, result = run_in_thread(lambda: lane.wait(10_000, 60))
    core.close()
    thread.join(10)
    assert not thread.is_alive() and result == [False]
    started = time.monotonic()
    assert lane.wait(10_000, 60) is False
    assert time.monotonic() - started < 30
    assert lane.next_batch() is not None  # what was queued stays drainable after close


def test_a_push_after_close_is_refused_not_queued() -> None:
    # A call that passed its tracker's "open" check just before close() and pushes after close()'s final
    # drain was accepted and never sent nor reported. Now the core answers CLOSED and queues nothing.
    core = Core()
    core.close()
    assert core.person(0, "delete", "u1") == CLOSED
    assert core.event(0, "event", "u1", None, "n") == CLOSED
    assert core.lane(0).drain_ops() == [] and counters(core)["accepted"] == 0


def test_wake_releases_a_waiter_without_closing() -> None:
    core = Core()
    lane = core.lane(0)
    thread, result = run_in_thread(lambda: lane.wait(10_000, 60))
    deadline = time.monotonic() + 10
    while thread.is_alive() and time.monotonic() < deadline:
        core.wake()  # repeated: the waiter may not be parked yet on the first call
        thread.join(0.05)
    assert result == [False]


# --- fork ---------------------------------------------------------------------------------------


def test_forked_child_gets_forked_and_fresh_ulids() -> None:
    core = Core()
    generation = core.fork_generation()
    _core.ulid()  # seed this thread's generator before forking
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read_fd)
            report = {
                "identify": core.identify(0, "u", None),
                "event": core.event(0, "event", "u", None, "E"),
                "queued": len(core.lane(0)),
                "generation": core.fork_generation(),
                "fresh_core": Core().identify(0, "u", None),
                "ulids": [_core.ulid() for _ in range(200)],
            }
            os.write(write_fd, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        report = json.loads(pipe.read())
    os.waitpid(pid, 0)
    parent_ulids = {_core.ulid() for _ in range(200)}
    assert report["identify"] == FORKED and report["event"] == FORKED
    assert report["queued"] == 0
    assert report["generation"] == generation + 1
    assert report["fresh_core"] == ACCEPTED
    assert core.fork_generation() == generation
    assert not parent_ulids & set(report["ulids"])
    assert {u[10:] for u in parent_ulids}.isdisjoint(u[10:] for u in report["ulids"])


# --- token bucket ---------------------------------------------------------------------------------


def test_bucket_burst_then_wait() -> None:
    bucket = Bucket(rate=1.0, burst=2.0)
    assert bucket.try_acquire() == 0.0
    assert bucket.try_acquire() == 0.0
    wait = bucket.try_acquire()
    assert 0 < wait <= 1.0
    assert bucket.tokens() < 1


def test_bucket_unlimited_and_pause() -> None:
    unlimited = Bucket(rate=0, burst=0)
    assert all(unlimited.try_acquire() == 0.0 for _ in range(1000))
    paused = Bucket(rate=100, burst=10)
    paused.pause(30)
    assert paused.try_acquire() > 20
    assert paused.acquire(0.01) is False


def test_bucket_close_releases_acquire() -> None:
    bucket = Bucket(rate=0.001, burst=1)
    assert bucket.acquire(0) is True
    thread, result = run_in_thread(lambda: bucket.acquire(60))
    bucket.close()
    thread.join(10)
    assert not thread.is_alive() and result == [False]


def test_module_constants() -> None:
    assert (ACCEPTED, _core.DEDUPED, FULL, FORKED) == (0, 1, 2, 3)
    assert _core.MAX_OP_BYTES == 32768 and _core.MAX_BATCH_BYTES == 500000
    assert isinstance(_core.__version__, str)


def test_a_container_mutated_by_python_code_during_encoding_does_not_crash() -> None:
    victims: dict[str, Any] = {}
    items: list[Any] = []

    class Mutating(decimal.Decimal):
        def __str__(self) -> str:
            victims.clear()
            items.clear()
            victims.update({f"new{i}": "x" * 100 for i in range(50)})
            return "1"

    victims.update({"a": Mutating(1), "b": "x" * 1000, "c": [3]})
    json.loads(_core.encode(victims))
    items.extend([1, Mutating(2), "tail" * 100, 4])
    assert json.loads(_core.encode(items))[:2] == [1, 1]
