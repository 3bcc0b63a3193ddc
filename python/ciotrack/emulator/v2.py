"""Track API v2: ``POST /api/v2/batch`` and ``POST /api/v2/entity`` applied to a ``Workspace``.

``apply_batch`` is the emulator's hot path. It applies operations in order (a later operation may
depend on an earlier one, e.g. a merge after an identify) and turns each ``OpError`` into a 207 item;
the operations that pass are applied even when others fail, as Customer.io documents.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import orjson

from ciotrack.emulator.state import Workspace, _relationships
from ciotrack.emulator.validate import (
    MAX_ENTITY_BYTES,
    MAX_OP_BYTES,
    OpError,
    device_fields,
    event_id,
    event_name,
    identifier_value,
    optional_object,
    person_attributes,
    person_identifiers,
    timestamp,
)

_fastpath: ModuleType | None
try:
    from ciotrack.emulator import fastpath as _fastpath
except ImportError:  # msgspec is missing: the general path alone is as correct, about 3x slower
    _fastpath = None

Response = tuple[int, bytes]
EMPTY_OK = b"{}"


def _identify(ws: Workspace, op: dict[str, Any], now: int) -> None:
    kind, value = person_identifiers(op.get("identifiers"))
    attributes = optional_object(op.get("attributes"), "attributes") or {}
    person_attributes(attributes)
    if op.get("timestamp") is not None:
        timestamp(op["timestamp"])
    ws.identify(kind, value, attributes, op.get("cio_relationships"))


def _event(ws: Workspace, op: dict[str, Any], now: int) -> None:
    name = event_name(op.get("name"))
    eid = op.get("id")
    if eid is not None:
        event_id(eid)
    data = op.get("attributes")
    if data is not None and data.__class__ is not dict:
        raise OpError("attributes", "invalid", "attributes must be an object")
    ts = op.get("timestamp")
    ts = now if ts is None else timestamp(ts)
    event = (op["action"], name, data or None, ts, eid)
    # identifiers is required (customerio-api.md lines 70-77: one of id, email, phone, cio_id). v2
    # documents no anonymous person event (only v1 POST /api/v1/events does); the one v2 form in
    # production use is identifiers {"anonymous_id": ...} on an event, page or screen, which Segment's
    # and RudderStack's Customer.io destinations send to /api/v2/batch. The emulator takes that form,
    # for these actions only, and refuses anything else (a top-level anonymous_id, which nothing uses).
    identifiers = op.get("identifiers")
    if identifiers.__class__ is dict and len(identifiers) == 1 and "anonymous_id" in identifiers:
        ws.add_anonymous_event(identifier_value(identifiers["anonymous_id"], "identifiers.anonymous_id"), event)
        return
    kind, value = person_identifiers(identifiers)
    ws.add_event(kind, value, event)


def _delete(ws: Workspace, op: dict[str, Any], now: int) -> None:
    ws.delete(*person_identifiers(op.get("identifiers")))


def _suppress(ws: Workspace, op: dict[str, Any], now: int) -> None:
    ws.set_suppressed(*person_identifiers(op.get("identifiers")), True)


def _unsuppress(ws: Workspace, op: dict[str, Any], now: int) -> None:
    ws.set_suppressed(*person_identifiers(op.get("identifiers")), False)


def _add_device(ws: Workspace, op: dict[str, Any], now: int) -> None:
    kind, value = person_identifiers(op.get("identifiers"))
    token, platform, last_used, attributes = device_fields(op.get("device"), "token")
    ws.add_device(kind, value, token, platform, last_used, attributes)


def _delete_device(ws: Workspace, op: dict[str, Any], now: int) -> None:
    kind, value = person_identifiers(op.get("identifiers"))
    token = device_fields(op.get("device"), "token")[0]
    ws.delete_device(kind, value, token)


def _merge(ws: Workspace, op: dict[str, Any], now: int) -> None:
    primary = person_identifiers(op.get("primary"), "primary")
    secondary = person_identifiers(op.get("secondary"), "secondary")
    ws.merge(primary, secondary)


def _add_relationships(ws: Workspace, op: dict[str, Any], now: int) -> None:
    kind, value = person_identifiers(op.get("identifiers"))
    ws.add_relationships(kind, value, _required_relationships(op))


def _delete_relationships(ws: Workspace, op: dict[str, Any], now: int) -> None:
    kind, value = person_identifiers(op.get("identifiers"))
    ws.delete_relationships(kind, value, _required_relationships(op))


def _required_relationships(op: dict[str, Any]) -> Any:
    rels = op.get("cio_relationships")
    if rels is None:
        raise OpError("cio_relationships", "required", "cio_relationships is required")
    return rels


PERSON_ACTIONS: dict[str, Callable[[Workspace, dict[str, Any], int], None]] = {
    "identify": _identify,
    "event": _event,
    "page": _event,
    "screen": _event,
    "delete": _delete,
    "suppress": _suppress,
    "unsuppress": _unsuppress,
    "add_device": _add_device,
    "delete_device": _delete_device,
    "merge": _merge,
    "add_relationships": _add_relationships,
    "delete_relationships": _delete_relationships,
}
OBJECT_ACTIONS = frozenset({"identify", "identify_anonymous", "delete", "add_relationships", "delete_relationships"})
DELIVERY_METRICS = frozenset({"opened", "converted", "delivered"})


def _object(ws: Workspace, op: dict[str, Any]) -> None:
    action = op.get("action")
    if action not in OBJECT_ACTIONS:
        raise OpError("action", "invalid", f"unknown object action {action!r}")
    if action == "identify_anonymous":
        key = "anonymous:" + identifier_value(op.get("anonymous_id"), "anonymous_id")
    else:
        idents = op.get("identifiers")
        if idents.__class__ is not dict:
            raise OpError("identifiers", "required", "identifiers is required")
        if "cio_object_id" in idents:
            key = "cio_" + identifier_value(idents["cio_object_id"], "identifiers.cio_object_id")
        else:
            type_id = identifier_value(idents.get("object_type_id"), "identifiers.object_type_id")
            key = type_id + ":" + identifier_value(idents.get("object_id"), "identifiers.object_id")
    attributes = optional_object(op.get("attributes"), "attributes") or {}
    if action in ("add_relationships", "delete_relationships"):
        _relationships(_required_relationships(op))
    elif action == "delete":
        ws.delete_object(key)
    else:
        person_attributes(attributes)
        ws.identify_object(key, attributes)


def _delivery(ws: Workspace, op: dict[str, Any], now: int) -> None:
    if op.get("action") != "event":
        raise OpError("action", "invalid", "delivery operations take action 'event'")
    idents = op.get("identifiers")
    if idents.__class__ is not dict:
        raise OpError("identifiers", "required", "identifiers.id (the delivery id) is required")
    delivery_id = identifier_value(idents.get("id"), "identifiers.id")
    name = op.get("name")
    if name not in DELIVERY_METRICS:
        raise OpError("name", "invalid", "delivery event name must be opened, converted or delivered")
    attributes = optional_object(op.get("attributes"), "attributes") or {}
    if not attributes.get("device_token"):
        raise OpError("attributes.device_token", "required", "attributes.device_token is required")
    ts = op.get("timestamp")
    ws.deliveries.append({"delivery_id": delivery_id, "name": name, "attributes": attributes,
                          "timestamp": now if ts is None else timestamp(ts)})


def apply_op(ws: Workspace, op: Any, now: int) -> None:
    if op.__class__ is not dict:
        raise OpError("", "invalid", "an operation must be an object")
    kind = op.get("type")
    if kind == "person":
        handler = PERSON_ACTIONS.get(op.get("action"))  # type: ignore[arg-type]
        if handler is None:
            raise OpError("action", "invalid", f"unknown person action {op.get('action')!r}")
        handler(ws, op, now)
    elif kind == "object":
        _object(ws, op)
    elif kind == "delivery":
        _delivery(ws, op, now)
    else:
        raise OpError("type", "invalid" if kind is not None else "required", "type must be person, object or delivery")


def apply_batch(ws: Workspace, ops: list[Any], now: int, check_op_sizes: bool) -> tuple[int, list[dict[str, Any]]]:
    """Apply ``ops`` in order under the caller's ``ws.lock``; returns (accepted, 207 error items).

    ``check_op_sizes`` is False when the whole body is within 32 KB, since then no operation can exceed it.
    """
    errors: list[dict[str, Any]] = []
    dumps = orjson.dumps
    person = PERSON_ACTIONS
    for index, op in enumerate(ops):
        try:
            if check_op_sizes and len(dumps(op)) > MAX_OP_BYTES:
                raise OpError("", "too_large", f"operation is over {MAX_OP_BYTES} bytes")
            # Inline dispatch for the common case: a person operation.
            if op.__class__ is dict and op.get("type") == "person":
                handler = person.get(op.get("action"))  # type: ignore[arg-type]
                if handler is not None:
                    handler(ws, op, now)
                    continue
            apply_op(ws, op, now)
        except OpError as err:
            errors.append({"batch_index": index, "reason": err.reason, "field": err.field, "message": err.message})
    return len(ops) - len(errors), errors


def _bad_request(field: str, message: str) -> Response:
    return 400, orjson.dumps({"errors": [{"reason": "invalid", "field": field, "message": message}]})


def handle_batch(ws: Workspace, body: bytes, now: int) -> tuple[Response, int, int]:
    """-> ((status, body), operations accepted, operations rejected). Body size was checked by the caller."""
    if _fastpath is not None:
        try:
            raws = _fastpath.split_batch(body)
        except _fastpath.MalformedBody as err:
            return _bad_request("batch", str(err)), 0, 0
        with ws.lock:
            accepted, errors = _fastpath.apply_raw_batch(ws, raws, now, apply_op)
    else:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as err:
            return _bad_request("batch", f"body is not JSON: {err}"), 0, 0
        ops = doc.get("batch") if doc.__class__ is dict else None
        if not isinstance(ops, list):
            return _bad_request("batch", "body must be an object with a 'batch' list"), 0, 0
        with ws.lock:
            accepted, errors = apply_batch(ws, ops, now, len(body) > MAX_OP_BYTES)
    if errors:
        return (207, orjson.dumps({"errors": errors})), accepted, len(errors)
    return (200, EMPTY_OK), accepted, 0


def handle_entity(ws: Workspace, body: bytes, now: int) -> tuple[Response, int, int]:
    try:
        op = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        return _bad_request("", f"body is not JSON: {err}"), 0, 0
    if len(body) > MAX_ENTITY_BYTES:
        return (413, orjson.dumps({"errors": [{"reason": "too_large", "field": "",
                                               "message": f"request body is over {MAX_ENTITY_BYTES} bytes"}]})), 0, 1
    try:
        with ws.lock:
            apply_op(ws, op, now)
    except OpError as err:
        return (400, orjson.dumps({"errors": [err.as_item()]})), 0, 1
    return (200, EMPTY_OK), 1, 0
