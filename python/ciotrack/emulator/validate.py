"""Customer.io Track API limits and the shape checks shared by the v1 and v2 handlers.

The checks run on the hot path (thousands of operations per batch), so the common case avoids
allocations: string sizes are measured in UTF-8 bytes only when the character count could exceed
the limit (a character is at most 4 bytes), and values are re-encoded only when they are containers.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

MAX_IDENTIFIER_BYTES: Final = 150
MAX_EVENT_NAME_BYTES: Final = 100
MAX_EVENT_DATA_BYTES: Final = 100_000
MAX_ATTRIBUTES: Final = 300
MAX_ATTRIBUTE_NAME_BYTES: Final = 150
MAX_ATTRIBUTE_VALUE_BYTES: Final = 1000
MAX_OBJECT_ATTRIBUTE_BYTES: Final = 100_000
# Body limits, the most that passes (customerio-api.md §2, line 68). The spec says "32kb" and "500kb"
# without saying whether a kb is 1000 or 1024 bytes. An operation may be 32,768 bytes (32 KiB "or
# smaller"); a batch 500,000 (under 500 KiB, though not under 500 kB: a one-byte edge left as it was,
# since it is ciotrack's own batch cap too); an entity request 32,767, as 32,768 is not "smaller than
# 32kb" under either reading.
MAX_OP_BYTES: Final = 32_768
MAX_BATCH_BYTES: Final = 500_000
MAX_ENTITY_BYTES: Final = 32_767
MAX_SEGMENT_IDS: Final = 1000
# Timestamps are unix seconds; anything outside a signed 64-bit integer is not a time.
MIN_TIMESTAMP: Final = -(2**63)
MAX_TIMESTAMP: Final = 2**63 - 1
DEVICE_PLATFORMS: Final = frozenset({"ios", "android"})
PERSON_IDENTIFIER_KINDS: Final = ("id", "email", "phone", "cio_id")

# Crockford base32, 26 characters; the first is at most 7 because a ULID is 128 bits.
_ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}\Z")
_ulid_match = _ULID.match
# E.164, as the spec describes the phone identifier: a "+", then at most 15 digits, the first not 0.
_E164 = re.compile(r"\+[1-9][0-9]{1,14}\Z")


try:
    import msgspec

    _HAVE_MSGSPEC = True
except ImportError:  # the emulator works without msgspec, on orjson alone (slower batches)
    _HAVE_MSGSPEC = False


def json_dumps(value: Any) -> bytes:
    """Compact JSON. msgspec when present: it also encodes integers beyond 64 bits, which the
    batch parser accepts (orjson would raise)."""
    if _HAVE_MSGSPEC:
        return msgspec.json.encode(value)
    return orjson.dumps(value)


def json_loads(data: Any) -> Any:
    """Parse JSON from bytes or any buffer (a ``msgspec.Raw`` slice), like the batch parser does."""
    if _HAVE_MSGSPEC:
        return msgspec.json.decode(data)
    return orjson.loads(data)


class OpError(ValueError):
    """One invalid operation (or v1 request): becomes a 207 item, a v2 400, or a v1 400."""

    def __init__(self, field: str, reason: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.reason = reason
        self.message = message

    def as_item(self) -> dict[str, Any]:
        return {"reason": self.reason, "field": self.field, "message": self.message}


def utf8_over(text: str, limit: int) -> bool:
    """True when ``text`` is longer than ``limit`` bytes in UTF-8."""
    n = len(text)
    if n * 4 <= limit:
        return False
    if n > limit:
        return True
    return len(text.encode("utf-8", "surrogatepass")) > limit


def encoded_size(value: Any) -> int:
    """Bytes of ``value`` as Customer.io counts it: a string's UTF-8 length, otherwise its JSON."""
    if value.__class__ is str:
        return len(value.encode("utf-8", "surrogatepass"))
    return len(json_dumps(value))


def identifier_value(value: Any, field: str) -> str:
    """A person identifier value: a non-empty string (or integer) of at most 150 bytes, as ``str``."""
    if value.__class__ is str:
        if not value:
            raise OpError(field, "required", f"{field} must not be empty")
        if utf8_over(value, MAX_IDENTIFIER_BYTES):
            raise OpError(field, "too_long", f"{field} is over {MAX_IDENTIFIER_BYTES} bytes")
        return value
    if value.__class__ is int:
        return str(value)
    raise OpError(field, "invalid", f"{field} must be a string")


def person_identifiers(identifiers: Any, field: str = "identifiers") -> tuple[str, str]:
    """``{"id": x}`` (or email / phone / cio_id): exactly one kind, returned as (kind, value)."""
    if identifiers.__class__ is not dict:
        if identifiers is None:
            raise OpError(field, "required", f"{field} is required")
        raise OpError(field, "invalid", f"{field} must be an object")
    if len(identifiers) != 1:
        raise OpError(field, "invalid", f"{field} must hold exactly one of id, email, phone, cio_id")
    for kind, value in identifiers.items():
        if kind not in PERSON_IDENTIFIER_KINDS:
            raise OpError(f"{field}.{kind}", "invalid", f"unknown identifier {kind!r}")
        text = identifier_value(value, f"{field}.{kind}")
        if kind == "phone" and _E164.match(text) is None:
            raise OpError(f"{field}.phone", "invalid", "phone must be in E.164 format (+ and up to 15 digits)")
        return kind, text
    raise AssertionError("unreachable")


def event_name(name: Any, field: str = "name") -> str:
    """Non-empty after trimming (Customer.io trims spaces) and at most 100 bytes."""
    if name.__class__ is not str:
        if name is None:
            raise OpError(field, "required", "event name is required")
        raise OpError(field, "invalid", "event name must be a string")
    stripped: str = name.strip()
    if not stripped:
        raise OpError(field, "required", "event name must not be empty")
    if utf8_over(stripped, MAX_EVENT_NAME_BYTES):
        raise OpError(field, "too_long", f"event name is over {MAX_EVENT_NAME_BYTES} bytes")
    return stripped


def event_id(value: Any) -> str:
    if value.__class__ is not str or _ulid_match(value) is None:
        raise OpError("id", "invalid", "id must be a ULID (26 Crockford base32 characters)")
    return value


def timestamp(value: Any, field: str = "timestamp") -> int:
    if value.__class__ is not int or not MIN_TIMESTAMP <= value <= MAX_TIMESTAMP:
        raise OpError(field, "invalid", f"{field} must be an integer unix time in seconds")
    return value


def optional_object(value: Any, field: str) -> dict[str, Any] | None:
    if value is None or value.__class__ is dict:
        return value
    raise OpError(field, "invalid", f"{field} must be an object")


def event_data_size(data: dict[str, Any], field: str) -> None:
    """v1 only: a v2 event cannot reach 100,000 bytes because its whole operation is at most 32 KB."""
    if len(json_dumps(data)) > MAX_EVENT_DATA_BYTES:
        raise OpError(field, "too_large", f"event data is over {MAX_EVENT_DATA_BYTES} bytes")


def person_attributes(attributes: dict[str, Any], field: str = "attributes") -> None:
    """Identify limits: at most 300 attributes, names <= 150 bytes, values <= 1000 bytes."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise OpError(field, "too_many", f"more than {MAX_ATTRIBUTES} attributes in one call")
    for name, value in attributes.items():
        if utf8_over(name, MAX_ATTRIBUTE_NAME_BYTES):
            raise OpError(f"{field}.{name[:40]}", "too_long", f"attribute name over {MAX_ATTRIBUTE_NAME_BYTES} bytes")
        cls = value.__class__
        if cls is str:
            if utf8_over(value, MAX_ATTRIBUTE_VALUE_BYTES):
                raise OpError(f"{field}.{name}", "too_long", f"attribute value over {MAX_ATTRIBUTE_VALUE_BYTES} bytes")
        elif (cls is dict or cls is list) and encoded_size(value) > MAX_ATTRIBUTE_VALUE_BYTES:
            raise OpError(f"{field}.{name}", "too_long", f"attribute value over {MAX_ATTRIBUTE_VALUE_BYTES} bytes")


def device_fields(device: Any, token_key: str,
                  field: str = "device") -> tuple[str, str | None, int | None, dict[str, Any]]:
    """(token, platform, last_used, attributes). Keys other than the known ones join ``attributes``
    because the official Python client puts its ``**kwargs`` directly inside the v1 device object."""
    if device.__class__ is not dict:
        raise OpError(field, "required" if device is None else "invalid", f"{field} must be an object")
    token = device.get(token_key)
    if token.__class__ is not str or not token:
        raise OpError(f"{field}.{token_key}", "required", f"{field}.{token_key} must be a non-empty string")
    if utf8_over(token, 1000):
        raise OpError(f"{field}.{token_key}", "too_long", "device token over 1000 bytes")
    platform = device.get("platform")
    if platform is not None and platform not in DEVICE_PLATFORMS:
        raise OpError(f"{field}.platform", "invalid", "platform must be 'ios' or 'android'")
    last_used = device.get("last_used")
    if last_used is not None:
        timestamp(last_used, f"{field}.last_used")
    attributes = optional_object(device.get("attributes"), f"{field}.attributes") or {}
    extra = {k: v for k, v in device.items() if k not in (token_key, "platform", "last_used", "attributes")}
    if extra:
        attributes = {**attributes, **extra}
    return token, platform, last_used, attributes
