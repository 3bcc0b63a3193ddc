"""Encoder errors that must name the field: a Decimal/UUID subclass whose ``__str__`` fails, and the
operation-size error of an event, which names the event and its largest property."""

from __future__ import annotations

import collections
import decimal
import uuid

import pytest

from ciotrack import _core
from ciotrack._core import ACCEPTED, Core
from ciotrack.errors import LimitError, SerializationError

ULID_A = "01ARZ3NDEKTSV4RRFFQ69G5FAV"


class RaisingDecimal(decimal.Decimal):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


class NonStrDecimal(decimal.Decimal):
    def __str__(self) -> str:
        return 42  # type: ignore[return-value]


class RaisingUUID(uuid.UUID):
    def __str__(self) -> str:
        raise KeyError("boom")


def test_decimal_subclass_whose_str_raises_is_a_serialization_error_at_its_field() -> None:
    core = Core()
    with pytest.raises(SerializationError) as raised:
        core.event(0, "event", "u", None, "E", {"cart": {"total": RaisingDecimal("1.5")}})
    assert str(raised.value) == ("data['cart']['total']: Decimal subclass 'RaisingDecimal' could not be "
                                 "converted: str() raised RuntimeError: no text for you")
    assert not isinstance(raised.value, RuntimeError)
    with pytest.raises(SerializationError, match=r"^data\['n'\]: Decimal subclass 'NonStrDecimal' could not be "
                                                 r"converted: str\(\) raised TypeError: "):
        core.event(0, "event", "u", None, "E", {"n": NonStrDecimal(2)})
    assert len(core.lane(0)) == 0 and core.stats()["counters"]["invalid"] == 2


def test_uuid_subclass_whose_str_raises_is_a_serialization_error_at_its_field() -> None:
    value = RaisingUUID("12345678-1234-5678-1234-567812345678")
    with pytest.raises(SerializationError) as raised:
        Core().identify(0, "u", {"refs": [1, value]})
    assert str(raised.value) == ("attributes['refs'][1]: UUID subclass 'RaisingUUID' could not be converted: "
                                 "str() raised KeyError: 'boom'")
    with pytest.raises(SerializationError, match=r"^value\[0\]: UUID subclass"):
        _core.encode([value])


def _over_the_limit(core: Core, data: dict[str, object]) -> str:
    with pytest.raises(LimitError) as raised:
        core.event(0, "event", "u", None, "checkout", data, ULID_A, 1)
    return str(raised.value)


def test_oversized_event_names_the_event_and_its_largest_property() -> None:
    core = Core(dedup_events="off")
    data = {"small": "s" * 10, "payload": "p" * 40_000, "middle": ["m" * 100] * 30}
    message = _over_the_limit(core, data)
    assert message.startswith("event 'checkout': operation is ")
    assert message.endswith(", Customer.io allows 32768; largest property in data: 'payload' (40002 bytes encoded)")
    # A Mapping that is not a dict is measured too; so is a nested value.
    nested = collections.OrderedDict(a=1, deep={"x": ["y" * 20_000, "z" * 20_000]})
    assert _over_the_limit(core, nested).endswith("largest property in data: 'deep' (40013 bytes encoded)")
    assert core.stats()["counters"]["invalid"] == 2 and len(core.lane(0)) == 0
    # Under the limit nothing changes.
    assert core.event(0, "event", "u", None, "checkout", {"payload": "p" * 1000}, ULID_A, 1) == ACCEPTED
