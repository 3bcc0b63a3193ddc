"""Track API v1 (``/api/v1/...``) applied to the same ``Workspace`` model as v2.

Each v1 call maps onto the v2 semantics (v1 ``data`` is v2 ``attributes``, v1 ``device.id`` is v2
``device.token``), so the same logical calls through either API leave identical state.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from ciotrack.emulator.state import IdentifierConflict, Workspace
from ciotrack.emulator.validate import (
    MAX_SEGMENT_IDS,
    OpError,
    device_fields,
    event_data_size,
    event_id,
    event_name,
    identifier_value,
    optional_object,
    person_attributes,
    person_identifiers,
    timestamp,
)

EVENT_TYPES = frozenset({"event", "page", "screen"})
DELIVERY_METRICS = frozenset({"bounced", "clicked", "converted", "deferred", "delivered", "dropped", "opened",
                              "spammed"})
ID_TYPES = frozenset({"id", "email", "cio_id"})
# Paths that the Track API spec lists without a security requirement.
NO_AUTH_PATHS = frozenset({"/api/v1/metrics", "/api/v1/push/events"})

Result = tuple[int, bytes]
OK: Result = (200, b"{}")
NOT_FOUND: Result = (404, b'{"meta":{"errors":["not found"]}}')


def error(message: str, status: int = 400) -> Result:
    return status, orjson.dumps({"meta": {"errors": [message]}})


def path_person(segment: str) -> tuple[str, str]:
    """A v1 path identifier: ``cio_<x>`` is cio_id x, anything else the person's id."""
    value = unquote(segment)
    if value.startswith("cio_") and len(value) > 4:
        return "cio_id", identifier_value(value[4:], "identifier")
    return "id", identifier_value(value, "identifier")


def _json_object(body: bytes, allow_empty: bool) -> dict[str, Any]:
    if not body.strip():
        if allow_empty:
            return {}
        raise OpError("", "required", "a JSON body is required")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise OpError("", "invalid", f"body is not JSON: {err}") from None
    if doc.__class__ is not dict:
        raise OpError("", "invalid", "body must be a JSON object")
    return doc


def _event(body: dict[str, Any], now: int) -> tuple[str, str, dict[str, Any] | None, int, str | None]:
    name = event_name(body.get("name"))
    kind = body.get("type", "event")
    if kind not in EVENT_TYPES:
        raise OpError("type", "invalid", "type must be event, page or screen")
    data = optional_object(body.get("data"), "data")
    if data:
        event_data_size(data, "data")
    eid = body.get("id")
    if eid is not None:
        event_id(eid)
    ts = body.get("timestamp")
    return kind, name, data or None, now if ts is None else timestamp(ts), eid


def handle(ws: Workspace | None, method: str, path: str, query: str, body: bytes, now: int,
           base_url: str, region: str) -> tuple[Result, int, int]:
    """-> ((status, body), operations accepted, operations rejected). ``ws`` is None only for NO_AUTH_PATHS."""
    parts = path.split("/")[3:]  # after "", "api", "v1"
    try:
        result = _route(ws, method, parts, query, body, now, base_url, region)
    except OpError as err:
        return error(err.message), 0, 1
    if result is None:
        return NOT_FOUND, 0, 0
    return result, (1 if result[0] == 200 and not (method == "GET") else 0), 0


def _route(ws: Workspace | None, method: str, parts: list[str], query: str, body: bytes, now: int,
           base_url: str, region: str) -> Result | None:
    n = len(parts)
    head = parts[0] if parts else ""
    if head in ("metrics", "push") :
        return _metric(ws, parts, method, body)
    assert ws is not None
    if head == "customers" and n >= 2 and parts[1]:
        kind, value = path_person(parts[1])
        if n == 2 and method == "PUT":
            attributes = _json_object(body, allow_empty=True)
            person_attributes(attributes, "body")
            with ws.lock:
                try:
                    ws.identify(kind, value, attributes)
                except IdentifierConflict as err:
                    # 200, nothing applied, an "Attribute Update Failure" recorded (customerio-api.md line 197).
                    ws.attribute_update_failures.append({"identifier": value, **err.as_item()})
            return OK
        if n == 2 and method == "DELETE":
            with ws.lock:
                ws.delete(kind, value)
            return OK
        if n == 3 and method == "POST" and parts[2] == "events":
            event = _event(_json_object(body, allow_empty=False), now)
            with ws.lock:
                ws.add_event(kind, value, event)
            return OK
        if n == 3 and method == "POST" and parts[2] in ("suppress", "unsuppress"):
            with ws.lock:
                ws.set_suppressed(kind, value, parts[2] == "suppress")
            return OK
        if n == 3 and method == "PUT" and parts[2] == "devices":
            doc = _json_object(body, allow_empty=False)
            token, platform, last_used, attributes = device_fields(doc.get("device"), "id")
            with ws.lock:
                ws.add_device(kind, value, token, platform, last_used, attributes)
            return OK
        if n == 4 and method == "DELETE" and parts[2] == "devices" and parts[3]:
            token = unquote(parts[3])
            with ws.lock:
                ws.delete_device(kind, value, token)
            return OK
        return None
    if head == "events" and n == 1 and method == "POST":
        doc = _json_object(body, allow_empty=False)
        event = _event(doc, now)
        anonymous_id = doc.get("anonymous_id")
        if anonymous_id is None:
            # Customer.io's "invite" event: no person, a recipient in data. Kept under the "" key.
            if not (event[2] or {}).get("recipient"):
                raise OpError("anonymous_id", "required", "anonymous_id (or data.recipient) is required")
            key = ""
        else:
            key = identifier_value(anonymous_id, "anonymous_id")
        with ws.lock:
            ws.add_anonymous_event(key, event)
        return OK
    if head == "merge_customers" and n == 1 and method == "POST":
        doc = _json_object(body, allow_empty=False)
        primary = _merge_side(doc.get("primary"), "primary")
        secondary = _merge_side(doc.get("secondary"), "secondary")
        with ws.lock:
            ws.merge(primary, secondary)
        return OK
    if head == "segments" and n == 3 and method == "POST" and parts[2] in ("add_customers", "remove_customers"):
        return _segment(ws, unquote(parts[1]), parts[2] == "add_customers", query, body)
    if head == "accounts" and n == 2 and parts[1] == "region" and method == "GET":
        return 200, orjson.dumps({"url": base_url, "region": region, "environment_id": ws.environment_id})
    return None


def _merge_side(value: Any, field: str) -> tuple[str, str]:
    kind, ident = person_identifiers(value, field)
    if kind not in ID_TYPES:
        raise OpError(field, "invalid", f"{field} must be one of id, email, cio_id")
    return kind, ident


def _segment(ws: Workspace, segment_id: str, add: bool, query: str, body: bytes) -> Result:
    id_type = parse_qs(query).get("id_type", ["id"])[-1]
    if id_type not in ID_TYPES:
        raise OpError("id_type", "invalid", "id_type must be id, email or cio_id")
    ids = _json_object(body, allow_empty=False).get("ids")
    if ids.__class__ is not list:
        raise OpError("ids", "required", "ids must be a list")
    if len(ids) > MAX_SEGMENT_IDS:
        raise OpError("ids", "too_many", f"at most {MAX_SEGMENT_IDS} ids per request")
    values = [identifier_value(v, "ids") for v in ids]
    with ws.lock:
        ws.segment_update(segment_id, id_type, values, add)
    return OK


def _metric(ws: Workspace | None, parts: list[str], method: str, body: bytes) -> Result | None:
    is_push = parts == ["push", "events"]
    if method != "POST" or not (parts == ["metrics"] or is_push):
        return None
    doc = _json_object(body, allow_empty=False)
    if doc.get("delivery_id").__class__ is not str or not doc["delivery_id"]:
        raise OpError("delivery_id", "required", "delivery_id is required")
    if is_push:
        if doc.get("event") not in ("opened", "converted", "delivered"):
            raise OpError("event", "invalid", "event must be opened, converted or delivered")
    elif doc.get("metric") not in DELIVERY_METRICS:
        raise OpError("metric", "invalid", "unknown metric")
    if doc.get("timestamp") is not None:
        timestamp(doc["timestamp"])
    if ws is not None:
        with ws.lock:
            ws.metrics.append({"path": "/api/v1/" + "/".join(parts), **doc})
    return OK
