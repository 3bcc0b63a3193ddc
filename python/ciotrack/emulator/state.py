"""One workspace's data with Customer.io's semantics, shared by the v1 and v2 handlers.

Invariants:
* Every mutating method validates everything it needs first and raises ``OpError`` before it
  changes anything, so an invalid operation leaves no trace.
* A person is reachable from ``people`` (by cio_id) and from ``by_id`` / ``by_email`` / ``by_phone``
  for each identifier it holds; ``device_owner`` maps each device token to the one person holding it.
* An event is stored either as a tuple ``(type, name, data, timestamp, id)``, where ``data`` is
  the parsed dict from the request (never mutated afterwards), the raw JSON slice of the v2
  operation (whose ``attributes`` hold the data), or None for "no data"; or, from the v2 fast path,
  as the operation's raw JSON slice alone when that carries everything (including a timestamp).
  ``snapshot()`` decodes and builds the plain-dict view, so the hot path allocates almost nothing.
* Callers hold ``lock`` around every call (the server applies one request at a time per workspace).

Semantics this emulator had to choose where Customer.io's docs are silent (see the README):
* Events, devices and relationships for an unknown ``id``/``email``/``phone`` create the person;
  an unknown ``cio_id`` is an error (``not_found``). Identify with ``_update: true`` never creates.
* An attribute set to ``null`` or ``""`` is removed. ``id`` in identify attributes changes the
  person's id (the ``cio_<x>`` path feature); ``email``/``phone`` attributes are also identifiers.
  An identifier already held by another person is a ``conflict`` error.
* Merge: the primary must exist (``not_found`` otherwise); a missing secondary is a no-op. The
  secondary's attributes fill the primary's gaps (primary wins), its events are appended after the
  primary's, its devices join (primary wins per token), its relationships join; its id is taken
  when the primary has none; the primary's suppression flag stays; the secondary is deleted.
* Suppress / unsuppress / delete / delete_device on an unknown person are accepted no-ops.
* Anonymous events stay under their anonymous_id (no event merging on identify).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ciotrack.emulator.validate import (
    MAX_ATTRIBUTES,
    MAX_OBJECT_ATTRIBUTE_BYTES,
    OpError,
    identifier_value,
    json_dumps,
    json_loads,
)

if TYPE_CHECKING:
    import msgspec

# data: a dict (v1 / general path), the operation's raw JSON slice (v2 fast path), or None.
Event = tuple[str, str, Any, int, "str | None"]

# Keys of an identify body that steer the call rather than being stored as attributes.
_IDENTIFY_CONTROL_KEYS = frozenset({"id", "cio_id", "_update", "_timestamp", "cio_relationships"})


class IdentifierConflict(OpError):
    """An identify whose body names an identifier (id, email, phone) another person holds. Track v1
    answers such an identify 200 and records an "Attribute Update Failure" instead of applying it
    (customerio-api.md line 197): ``v1`` does the same. For v2 that is not documented; it stays a
    207 item / 400 there, the louder choice."""


class Person:
    __slots__ = ("cio_id", "id", "attributes", "events", "devices", "suppressed", "relationships")

    def __init__(self, cio_id: str) -> None:
        self.cio_id = cio_id
        self.id: str | None = None
        self.attributes: dict[str, Any] = {}
        self.events: list[Event | msgspec.Raw] = []
        self.devices: dict[str, dict[str, Any]] = {}
        self.suppressed = False
        self.relationships: list[dict[str, Any]] = []

    def key(self) -> str:
        return self.id if self.id is not None else f"cio_{self.cio_id}"


def event_data(stored: Any) -> dict[str, Any]:
    if stored is None:
        return {}
    if stored.__class__ is dict:
        return dict(stored)
    attributes = json_loads(stored).get("attributes")
    return attributes if attributes else {}


def _event_view(event: Event | msgspec.Raw) -> dict[str, Any]:
    if not isinstance(event, tuple):
        # A v2 event operation stored as its raw JSON slice: it carries its own timestamp.
        op = json_loads(event)
        attributes = op.get("attributes")
        return {"name": op["name"], "type": op["action"], "data": attributes if attributes else {},
                "timestamp": op["timestamp"], "id": op.get("id")}
    kind, name, data, ts, eid = event
    return {"name": name, "type": kind, "data": event_data(data), "timestamp": ts, "id": eid}


class Workspace:
    def __init__(self, site_id: str, api_key: str, environment_id: int) -> None:
        self.site_id = site_id
        self.api_key = api_key
        self.environment_id = environment_id
        self.lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        self.people: dict[str, Person] = {}
        self.by_id: dict[str, Person] = {}
        self.by_email: dict[str, Person] = {}
        self.by_phone: dict[str, Person] = {}
        self.device_owner: dict[str, Person] = {}
        self.anonymous_events: dict[str, list[Event | msgspec.Raw]] = {}
        self.event_ids: set[str] = set()
        self.objects: dict[str, dict[str, Any]] = {}
        self.deliveries: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.segments: dict[str, dict[str, set[str]]] = {}
        # v1 identifies answered 200 but not applied (see IdentifierConflict), oldest first.
        self.attribute_update_failures: list[dict[str, Any]] = []
        self._next_cio = 1
        self.events_stored = 0
        self.duplicates = 0

    # -- people ------------------------------------------------------------------------------

    def find(self, kind: str, value: str) -> Person | None:
        if kind == "id":
            return self.by_id.get(value)
        if kind == "cio_id":
            return self.people.get(value)
        if kind == "email":
            return self.by_email.get(value)
        return self.by_phone.get(value)

    def find_or_create(self, kind: str, value: str) -> Person:
        person = self.find(kind, value)
        if person is not None:
            return person
        if kind == "cio_id":
            raise OpError("identifiers.cio_id", "not_found", "no person has this cio_id")
        person = Person(f"{self._next_cio:08x}")
        self._next_cio += 1
        self.people[person.cio_id] = person
        if kind == "id":
            person.id = value
            self.by_id[value] = person
        else:
            person.attributes[kind] = value
            (self.by_email if kind == "email" else self.by_phone)[value] = person
        return person

    def _check_free(self, index: dict[str, Person], value: Any, person: Person | None, field: str) -> None:
        if value.__class__ is str and value:
            holder = index.get(value)
            if holder is not None and holder is not person:
                raise IdentifierConflict(field, "conflict", f"{field} already belongs to another person")

    def identify(self, kind: str, value: str, attributes: dict[str, Any], relationships: Any = None) -> None:
        person = self.find(kind, value)
        if person is None:
            if attributes.get("_update") is True:
                return
            if kind == "cio_id":
                raise OpError("identifiers.cio_id", "not_found", "no person has this cio_id")
        new_id = attributes.get("id")
        if new_id is not None:
            new_id = identifier_value(new_id, "attributes.id")
            self._check_free(self.by_id, new_id, person, "attributes.id")
            if person is None and kind == "id" and new_id != value:
                raise OpError("attributes.id", "conflict", "id in the body differs from the identifier")
        self._check_free(self.by_email, attributes.get("email"), person, "attributes.email")
        self._check_free(self.by_phone, attributes.get("phone"), person, "attributes.phone")
        rels = _relationships(relationships if relationships is not None else attributes.get("cio_relationships"))
        stored_now = person.attributes if person is not None else {}
        if len(stored_now) + len(attributes) >= MAX_ATTRIBUTES:
            self._check_attribute_count(stored_now, attributes, kind if person is None else None)

        if person is None:
            person = self.find_or_create(kind, value)
        if new_id is not None and new_id != person.id:
            if person.id is not None:
                del self.by_id[person.id]
            person.id = new_id
            self.by_id[new_id] = person
        stored = person.attributes
        for name, val in attributes.items():
            if name in _IDENTIFY_CONTROL_KEYS:
                continue
            if val is None or val == "":
                old = stored.pop(name, None)
                if name in ("email", "phone") and old is not None:
                    self._index_for(name).pop(old, None)
                continue
            if name in ("email", "phone"):
                index = self._index_for(name)
                old = stored.get(name)
                if old is not None and old != val:
                    index.pop(old, None)
                if val.__class__ is str:
                    index[val] = person
            stored[name] = val
        if rels:
            _add_relationships(person, rels)

    @staticmethod
    def _check_attribute_count(stored: dict[str, Any], attributes: dict[str, Any], new_kind: str | None) -> None:
        """At most 300 attributes per person (customerio-api.md line 179), counted after this call:
        a null or empty value removes one. ``new_kind``: the identifier a new person is created by
        (an email or phone identifier is stored as an attribute too)."""
        count = len(stored) + (new_kind in ("email", "phone") and new_kind not in attributes)
        for name, val in attributes.items():
            if name in _IDENTIFY_CONTROL_KEYS:
                continue
            if val is None or val == "":
                count -= name in stored
            elif name not in stored:
                count += 1
        if count > MAX_ATTRIBUTES:
            raise OpError("attributes", "too_many", f"a person holds at most {MAX_ATTRIBUTES} attributes "
                          f"({count} after this call)")

    def _index_for(self, name: str) -> dict[str, Person]:
        return self.by_email if name == "email" else self.by_phone

    def _remove(self, person: Person) -> None:
        del self.people[person.cio_id]
        if person.id is not None:
            self.by_id.pop(person.id, None)
        for name in ("email", "phone"):
            val = person.attributes.get(name)
            if val.__class__ is str and self._index_for(name).get(val) is person:
                del self._index_for(name)[val]
        for token in person.devices:
            if self.device_owner.get(token) is person:
                del self.device_owner[token]

    def delete(self, kind: str, value: str) -> None:
        person = self.find(kind, value)
        if person is not None:
            self._remove(person)

    def set_suppressed(self, kind: str, value: str, suppressed: bool) -> None:
        person = self.find(kind, value)
        if person is not None:
            person.suppressed = suppressed

    # -- events ------------------------------------------------------------------------------

    def seen_event(self, event_id: str | None) -> bool:
        """Record ``event_id``; True (and counted) when the workspace had already seen it.

        A repeated event id is ignored (customerio-api.md line 51), but no dedup window or scope is
        documented (line 52). The emulator remembers every id of the workspace (v1 and v2, any
        person) until reset: the most forgiving reading, so a client must not count on it for
        redeliveries far apart; ``stats()["duplicates"]`` shows what it hid."""
        if event_id is None:
            return False
        if event_id in self.event_ids:
            self.duplicates += 1
            return True
        self.event_ids.add(event_id)
        return False

    def add_event(self, kind: str, value: str, event: Event) -> None:
        if kind == "cio_id" and value not in self.people:
            raise OpError("identifiers.cio_id", "not_found", "no person has this cio_id")
        if self.seen_event(event[4]):
            return
        self.find_or_create(kind, value).events.append(event)
        self.events_stored += 1

    def add_anonymous_event(self, anonymous_id: str, event: Event) -> None:
        if self.seen_event(event[4]):
            return
        events = self.anonymous_events.get(anonymous_id)
        if events is None:
            self.anonymous_events[anonymous_id] = [event]
        else:
            events.append(event)
        self.events_stored += 1

    # -- devices -----------------------------------------------------------------------------

    def add_device(self, kind: str, value: str, token: str, platform: str | None, last_used: int | None,
                   attributes: dict[str, Any]) -> None:
        if platform is None:
            raise OpError("device.platform", "required", "device.platform is required")
        person = self.find_or_create(kind, value)
        owner = self.device_owner.get(token)
        if owner is not None and owner is not person:
            # A push token identifies one app install, so it moves to the person who registered it last.
            owner.devices.pop(token, None)
        device = person.devices.get(token)
        if device is None:
            device = person.devices[token] = {"platform": platform, "last_used": last_used, "attributes": {}}
        device["platform"] = platform
        if last_used is not None:
            device["last_used"] = last_used
        device["attributes"].update(attributes)
        self.device_owner[token] = person

    def delete_device(self, kind: str, value: str, token: str) -> None:
        person = self.find(kind, value)
        if person is not None and person.devices.pop(token, None) is not None:
            self.device_owner.pop(token, None)

    # -- merge and relationships ------------------------------------------------------------

    def merge(self, primary: tuple[str, str], secondary: tuple[str, str]) -> None:
        keep = self.find(*primary)
        if keep is None:
            raise OpError("primary", "not_found", "the primary person does not exist")
        gone = self.find(*secondary)
        if gone is None or gone is keep:
            return
        self._remove(gone)
        for name, val in gone.attributes.items():
            if name not in keep.attributes:
                keep.attributes[name] = val
                if name in ("email", "phone") and val.__class__ is str:
                    self._index_for(name).setdefault(val, keep)
        if keep.id is None and gone.id is not None and gone.id not in self.by_id:
            keep.id = gone.id
            self.by_id[gone.id] = keep
        keep.events.extend(gone.events)
        for token, device in gone.devices.items():
            if token not in keep.devices:
                keep.devices[token] = device
                self.device_owner[token] = keep
        _add_relationships(keep, gone.relationships)

    def add_relationships(self, kind: str, value: str, relationships: Any) -> None:
        rels = _relationships(relationships)
        _add_relationships(self.find_or_create(kind, value), rels)

    def delete_relationships(self, kind: str, value: str, relationships: Any) -> None:
        rels = _relationships(relationships)
        person = self.find(kind, value)
        if person is not None:
            drop = [r["identifiers"] for r in rels]
            person.relationships = [r for r in person.relationships if r["identifiers"] not in drop]

    # -- objects, deliveries, metrics, segments ---------------------------------------------

    def identify_object(self, key: str, attributes: dict[str, Any]) -> None:
        """Objects have the person limits plus 100 KB of attributes in all (customerio-api.md line 180;
        read as 100,000 bytes of JSON, the smaller kb)."""
        merged = {**self.objects.get(key, {}), **attributes}
        if len(merged) > MAX_ATTRIBUTES:
            raise OpError("attributes", "too_many", f"an object holds at most {MAX_ATTRIBUTES} attributes")
        if len(json_dumps(merged)) > MAX_OBJECT_ATTRIBUTE_BYTES:
            raise OpError("attributes", "too_large",
                          f"an object's attributes are over {MAX_OBJECT_ATTRIBUTE_BYTES} bytes in all")
        self.objects[key] = merged

    def delete_object(self, key: str) -> None:
        self.objects.pop(key, None)

    def segment_update(self, segment_id: str, id_type: str, ids: list[str], add: bool) -> None:
        members = self.segments.setdefault(segment_id, {}).setdefault(id_type, set())
        if add:
            members.update(ids)
        else:
            members.difference_update(ids)

    # -- inspection --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        people = {}
        for person in self.people.values():
            people[person.key()] = {
                "id": person.id,
                "cio_id": person.cio_id,
                "attributes": dict(person.attributes),
                "events": [_event_view(e) for e in person.events],
                "devices": {t: {"platform": d["platform"], "last_used": d["last_used"],
                                "attributes": dict(d["attributes"])} for t, d in person.devices.items()},
                "suppressed": person.suppressed,
                "relationships": [dict(r) for r in person.relationships],
            }
        return {
            "site_id": self.site_id,
            "people": people,
            "anonymous_events": {a: [_event_view(e) for e in evs] for a, evs in self.anonymous_events.items()},
            "objects": {k: dict(v) for k, v in self.objects.items()},
            "deliveries": [dict(d) for d in self.deliveries],
            "metrics": [dict(m) for m in self.metrics],
            "segments": {s: {t: sorted(ids) for t, ids in kinds.items()} for s, kinds in self.segments.items()},
            "attribute_update_failures": [dict(f) for f in self.attribute_update_failures],
        }


def _relationships(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if value.__class__ is not list:
        raise OpError("cio_relationships", "invalid", "cio_relationships must be a list")
    out = []
    for i, rel in enumerate(value):
        field = f"cio_relationships[{i}]"
        if rel.__class__ is not dict or rel.get("identifiers").__class__ is not dict:
            raise OpError(f"{field}.identifiers", "required", "a relationship needs identifiers")
        idents = rel["identifiers"]
        if not ("cio_object_id" in idents or ("object_type_id" in idents and "object_id" in idents)):
            raise OpError(f"{field}.identifiers", "invalid",
                          "relationship identifiers need object_type_id and object_id, or cio_object_id")
        attrs = rel.get("relationship_attributes")
        if attrs is not None and attrs.__class__ is not dict:
            raise OpError(f"{field}.relationship_attributes", "invalid", "must be an object")
        out.append({"identifiers": dict(idents), "relationship_attributes": dict(attrs or {})})
    return out


def _add_relationships(person: Person, rels: list[dict[str, Any]]) -> None:
    for rel in rels:
        for existing in person.relationships:
            if existing["identifiers"] == rel["identifiers"]:
                existing["relationship_attributes"].update(rel["relationship_attributes"])
                break
        else:
            person.relationships.append({"identifiers": dict(rel["identifiers"]),
                                         "relationship_attributes": dict(rel["relationship_attributes"])})
