"""Fuzz: hypothesis feeds arbitrary Python values to every Tracker method. Only the documented
exceptions (:mod:`ciotrack.errors`) may come out, nothing may crash, and a valid event sent after
each bad call must be delivered (none lost, none dropped, each once)."""

from __future__ import annotations

import datetime
import decimal
import math
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ciotrack import _core
from ciotrack.emulator import Emulator
from ciotrack.errors import CiotrackError, DeliveryError
from ciotrack.tracker import Tracker

from conftest import API_KEY, SITE_ID, all_events

# The hostile objects below fail only while a Tracker method runs: hypothesis itself must still be
# able to repr a failing example, or its report hides the real error behind theirs.
_hostile = threading.local()


def hostile(what: str) -> None:
    if getattr(_hostile, "on", False):
        raise RuntimeError(f"no {what} for you")


class FailingStr:
    """``str()``/``repr()``/``format()`` raise; so does hashing."""

    def __str__(self) -> str:
        hostile("str")
        return "FailingStr()"

    def __repr__(self) -> str:
        hostile("repr")
        return "FailingStr()"

    def __format__(self, spec: str) -> str:
        hostile("format")
        return "FailingStr()"

    def __hash__(self) -> int:
        hostile("hash")
        return 0


class FailingEq(FailingStr):
    """Also refuses comparison (``x in (...)``) and truthiness."""

    def __eq__(self, other: object) -> bool:
        hostile("eq")
        return self is other

    def __bool__(self) -> bool:
        hostile("bool")
        return True

    __hash__ = FailingStr.__hash__


class StrSubclass(str):
    def __str__(self) -> str:
        hostile("str of a str subclass")
        return str.__str__(self)


class IntSubclass(int):
    def __repr__(self) -> str:
        hostile("repr of an int subclass")
        return int.__repr__(self)


def cyclic_list() -> list[Any]:
    value: list[Any] = [1]
    value.append(value)
    return value


def cyclic_dict() -> dict[str, Any]:
    value: dict[str, Any] = {"a": 1}
    value["self"] = value
    return value


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"d": value}
    return value


surrogates = st.characters(categories=["Cs"])
texts = st.one_of(st.text(max_size=40),
                  st.builds(lambda a, b: a + b, st.text(max_size=4), st.text(surrogates, min_size=1, max_size=3)),
                  st.sampled_from(["", " ", "\x00", "a" * 200, "x" * 40_000, "ok"]))
leaves = st.one_of(
    st.none(), st.booleans(), texts, st.binary(max_size=16), st.builds(bytearray, st.binary(max_size=8)),
    st.integers(), st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**400, -(10**400)]),
    st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, -0.0]),
    st.complex_numbers(max_magnitude=10), st.decimals(allow_nan=True), st.datetimes(), st.dates(),
    st.timedeltas(), st.builds(FailingStr), st.builds(FailingEq), st.builds(StrSubclass, texts),
    st.builds(IntSubclass, st.integers()), st.builds(object), st.just(Ellipsis), st.just(print),
    st.builds(cyclic_list), st.builds(cyclic_dict), st.builds(deep, st.integers(30, 300)),
)
hashable_keys = st.one_of(texts, st.integers(), st.none(), st.booleans(), st.floats(allow_nan=False),
                          st.tuples(st.integers()), st.builds(StrSubclass, texts), st.binary(max_size=4))
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner),
        st.dictionaries(hashable_keys, inner, max_size=4),
        st.frozensets(st.integers(), max_size=3), st.sets(texts, max_size=3),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)
ids = st.one_of(values, st.just(None), st.builds(lambda: _core.ulid()), st.text(max_size=30))
customers = st.one_of(values, st.text(min_size=1, max_size=20), st.integers(0, 10**6))
names = st.one_of(values, st.text(min_size=1, max_size=30))
regions = st.one_of(st.none(), st.just("us"), st.just("eu"), values)

Call = tuple[str, tuple[Any, ...], dict[str, Any]]
EXAMPLES = int(os.environ.get("CIOTRACK_FUZZ_EXAMPLES", "600"))  # raise it for a longer hunt


def call(method: str, args: st.SearchStrategy[tuple[Any, ...]],
         kwargs: st.SearchStrategy[dict[str, Any]] | None = None) -> st.SearchStrategy[Call]:
    return st.tuples(st.just(method), args, st.just({}) if kwargs is None else kwargs)


def optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


calls = st.one_of(
    call("identify", st.tuples(customers, values), optional(region=regions)),
    call("identify", st.tuples(customers), st.dictionaries(st.text(min_size=1, max_size=10).filter(
        lambda k: k != "region"), values, max_size=3)),
    *[call(m, st.tuples(customers, names, values), optional(id=ids, timestamp=values, region=regions))
      for m in ("track", "page", "screen")],
    call("track_anonymous", st.tuples(customers, names, values), optional(id=ids, timestamp=values)),
    *[call(m, st.tuples(customers), optional(region=regions)) for m in ("delete", "suppress", "unsuppress")],
    call("add_device", st.tuples(customers, values, st.one_of(st.sampled_from(["ios", "android"]), values)),
         optional(last_used=values, attributes=values, region=regions)),
    call("delete_device", st.tuples(customers, values), optional(region=regions)),
    call("merge_customers", st.tuples(st.one_of(st.sampled_from(["id", "email", "cio_id"]), values), customers,
                                      st.one_of(st.sampled_from(["id", "email", "cio_id"]), values), customers)),
    call("send_operation", st.tuples(values), optional(region=regions)),
    call("send_operation", st.tuples(st.dictionaries(st.text(max_size=12), values, max_size=5))),
)


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")  # a 40 kB string's repr
@pytest.mark.parametrize("routing", ["default", "region_for"])
def test_arbitrary_values_raise_only_documented_errors_and_valid_events_all_arrive(routing: str) -> None:
    errors: list[DeliveryError] = []
    drops: list[tuple[str, int]] = []
    valid_sent: list[int] = []
    with Emulator(workspaces={SITE_ID: API_KEY}) as emulator:
        extra: dict[str, Any] = {}
        if routing == "region_for":  # the per-customer routing path (mapping lookups of fuzzed ids)
            extra = dict(endpoints={"us": emulator.url, "eu": emulator.url}, region_for={"0": "eu", 1: "eu"})
        tracker = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, rate_limit=0, flush_interval=0.02,
                          on_error=errors.append, on_drop=lambda r, n: drops.append((r, n)),
                          dedup_ttl=0, **extra)  # fuzzed identifies must not dedup away what we count

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(calls)
        def bad_then_good(fuzzed: Call) -> None:
            method, args, kwargs = fuzzed
            _hostile.on = True
            try:
                getattr(tracker, method)(*args, **kwargs)
            except CiotrackError:
                pass  # documented: SerializationError / InvalidValueError / LimitError / ConfigError
            except Exception as exc:  # say where (a FailingStr argument makes hypothesis's report useless)
                shapes = [type(a).__name__ for a in args], {k: type(v).__name__ for k, v in kwargs.items()}
                raise AssertionError(f"{method}{shapes} raised an undocumented {type(exc).__name__}") from exc
            finally:
                _hostile.on = False
            n = len(valid_sent)
            tracker.track("fuzz-valid", "valid", {"n": n}, timestamp=datetime.datetime(2026, 1, 1))
            valid_sent.append(n)

        bad_then_good()
        assert tracker.flush(timeout=60)
        tracker.close(timeout=10)
        valid = [e for e in all_events(emulator.state()) if e["name"] == "valid"]
    assert sorted(e["data"]["n"] for e in valid) == valid_sent  # every valid event, once
    assert drops == []
    # What the fuzzer sent that Customer.io refuses is reported per operation, never a valid one.
    assert not any(b'"fuzz-valid"' in op for error in errors for op in error.ops)


def test_the_value_zoo_is_really_hostile() -> None:
    """The fuzz strategies above reach what the issue lists, at any depth (so the fuzz test cannot
    pass vacuously)."""
    seen: set[str] = set()
    checks: dict[str, Callable[[Any], bool]] = {
        "nan": lambda v: isinstance(v, float) and math.isnan(v),
        "huge_int": lambda v: isinstance(v, int) and abs(v) >= 2**64,
        "bytes": lambda v: isinstance(v, (bytes, bytearray)),
        "set": lambda v: isinstance(v, (set, frozenset)),
        "cycle": lambda v: isinstance(v, list) and any(x is v for x in v),
        "surrogate": lambda v: isinstance(v, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in v),
        "non_str_key": lambda v: isinstance(v, dict) and any(not isinstance(k, str) for k in v),
        "failing_str": lambda v: isinstance(v, FailingStr),
        "decimal": lambda v: isinstance(v, decimal.Decimal),
    }

    def walk(value: Any, visited: set[int]) -> None:
        if id(value) in visited:
            return
        visited.add(id(value))
        for name, check in checks.items():
            if check(value):
                seen.add(name)
        if isinstance(value, dict):
            for key, item in value.items():
                walk(key, visited)
                walk(item, visited)
        elif isinstance(value, (list, tuple, set, frozenset)):
            for item in value:
                walk(item, visited)

    @settings(max_examples=3000, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(values)
    def collect(value: Any) -> None:
        walk(value, set())

    collect()
    assert seen == set(checks)
