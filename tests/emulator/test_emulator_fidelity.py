"""Emulator fidelity: each test is one fact of shared/docs/customerio-api.md (line numbers in the test
docstrings) checked over real HTTP, where the emulator used to answer otherwise."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests

from ciotrack.emulator import Emulator

SITE, KEY = "site-f", "key-f"
AUTH = (SITE, KEY)
APP_KEY = "app-fidelity"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(workspaces={SITE: KEY}, app_api_keys={SITE: APP_KEY}) as em:
        yield em


def post(em: Emulator, path: str, body: bytes) -> requests.Response:
    return requests.post(f"{em.url}{path}", data=body, auth=AUTH, timeout=10,
                         headers={"Content-Type": "application/json"})


def batch(em: Emulator, ops: list[Any]) -> requests.Response:
    return post(em, "/api/v2/batch", orjson.dumps({"batch": ops}))


def identify(pid: str, attributes: dict[str, Any]) -> dict[str, Any]:
    return {"type": "person", "identifiers": {"id": pid}, "action": "identify", "attributes": attributes}


def send(em: Emulator, kind: str, body: Any) -> requests.Response:
    return requests.post(f"{em.url}/v1/send/{kind}", json=body, timeout=10,
                         headers={"Authorization": f"Bearer {APP_KEY}"})


def test_rate_limit_429_promises_no_retry_after() -> None:
    """Lines 166 and 172: no 429 body or Retry-After is documented for the Track API (nor for the App
    API), so a client must not be shown one it cannot count on."""
    with Emulator(workspaces={SITE: KEY}, app_api_keys={SITE: APP_KEY}, rate_limit=0.5, burst=1) as em:
        assert batch(em, []).status_code == 200
        limited = batch(em, [])
        assert limited.status_code == 429
        assert "Retry-After" not in limited.headers
        template = {"transactional_message_id": "t", "identifiers": {"id": "1"}}
        assert send(em, "push", template).status_code == 200
        limited = send(em, "push", template)
        assert limited.status_code == 429
        assert "Retry-After" not in limited.headers


def test_entity_request_must_be_smaller_than_32kb(emulator: Emulator) -> None:
    """Line 68: ``/api/v2/entity`` takes a request *under* 32 KB: one of exactly 32,768 bytes is not."""
    attrs: dict[str, Any] = {}
    while len(orjson.dumps(identify("big", attrs))) < 32_000:
        attrs[f"k{len(attrs)}"] = "x" * 100
    attrs["last"] = ""
    attrs["last"] = "y" * (32_768 - len(orjson.dumps(identify("big", attrs))))
    body = orjson.dumps(identify("big", attrs))
    assert len(body) == 32_768
    assert post(emulator, "/api/v2/entity", body).status_code == 413
    assert emulator.state()["people"] == {}
    attrs["last"] = attrs["last"][1:]
    assert post(emulator, "/api/v2/entity", orjson.dumps(identify("big", attrs))).status_code == 200


@pytest.mark.parametrize("phone", ["555-1234", "14155552671", "+0155552671", "+1415555267100000", "+1 415 555"])
def test_phone_identifier_must_be_e164(emulator: Emulator, phone: str) -> None:
    """Line 73: the ``phone`` identifier is E.164 (a ``+`` and at most 15 digits, no leading 0)."""
    op = {"type": "person", "identifiers": {"phone": phone}, "action": "identify", "attributes": {"a": 1}}
    response = batch(emulator, [op])
    assert response.status_code == 207
    assert response.json()["errors"][0]["field"] == "identifiers.phone"
    assert emulator.state()["people"] == {}
    op["identifiers"] = {"phone": "+14155552671"}
    assert batch(emulator, [op]).status_code == 200


def test_a_person_holds_at_most_300_attributes(emulator: Emulator) -> None:
    """Line 179: at most 300 attributes per person, not only per identify call."""
    assert batch(emulator, [identify("p", {f"a{i}": i for i in range(200)})]).status_code == 200
    response = batch(emulator, [identify("p", {f"b{i}": i for i in range(101)})])
    assert response.status_code == 207
    assert response.json()["errors"][0]["reason"] == "too_many"
    assert len(emulator.state()["people"]["p"]["attributes"]) == 200
    # Updating existing attributes and removing some is fine; so is reaching exactly 300.
    assert batch(emulator, [identify("p", {**{f"a{i}": None for i in range(10)},
                                           **{f"b{i}": i for i in range(110)}})]).status_code == 200
    assert len(emulator.state()["people"]["p"]["attributes"]) == 300
    v1 = requests.put(f"{emulator.url}/api/v1/customers/p", json={"one_more": 1}, auth=AUTH, timeout=10)
    assert v1.status_code == 400
    assert len(emulator.state()["people"]["p"]["attributes"]) == 300


def test_objects_hold_at_most_100kb_of_attributes(emulator: Emulator) -> None:
    """Line 180: objects have the person limits plus 100 KB of attributes in total."""
    def obj(attributes: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "identifiers": {"object_type_id": "1", "object_id": "acme"},
                "action": "identify", "attributes": attributes}

    ops = [obj({f"k{n}-{i}": "x" * 900 for i in range(30)}) for n in range(3)]  # ~83 KB in all
    assert batch(emulator, ops).status_code == 200
    response = batch(emulator, [obj({f"k3-{i}": "x" * 900 for i in range(30)})])  # ~111 KB
    assert response.status_code == 207
    assert response.json()["errors"][0]["reason"] == "too_large"
    assert len(emulator.state()["objects"]["1:acme"]) == 90
    response = batch(emulator, [obj({f"n{i}": 1 for i in range(211)})])  # 301 attributes
    assert response.status_code == 207
    assert response.json()["errors"][0]["reason"] == "too_many"


def test_v1_identify_with_another_persons_identifier_is_200_and_not_applied(emulator: Emulator) -> None:
    """Line 197: identify may answer 200 yet record an "Attribute Update Failure" when the path and
    the body identify different people."""
    url = f"{emulator.url}/api/v1/customers"
    assert requests.put(f"{url}/x", json={"email": "x@example.com"}, auth=AUTH, timeout=10).status_code == 200
    assert requests.put(f"{url}/y", json={"plan": "free"}, auth=AUTH, timeout=10).status_code == 200
    response = requests.put(f"{url}/y", json={"email": "x@example.com", "plan": "pro"}, auth=AUTH, timeout=10)
    assert response.status_code == 200
    assert response.json() == {}
    state = emulator.state()
    assert state["people"]["y"]["attributes"] == {"plan": "free"}
    assert state["people"]["x"]["attributes"] == {"email": "x@example.com"}
    assert [f["field"] for f in state["attribute_update_failures"]] == ["attributes.email"]


def test_transactional_send_at_is_at_most_90_days_ahead(emulator: Emulator) -> None:
    """Line 251: ``send_at`` is a unix timestamp up to 90 days in the future."""
    template = {"transactional_message_id": "t", "identifiers": {"id": "1"}}
    now = int(time.time())
    response = send(emulator, "push", {**template, "send_at": now + 91 * 86_400})
    assert response.status_code == 400
    assert "send_at" in response.json()["meta"]["error"]
    assert send(emulator, "push", {**template, "send_at": now + 89 * 86_400}).status_code == 200
    assert send(emulator, "push", {**template, "send_at": now - 86_400}).status_code == 200  # sent at once


def test_transactional_identifiers_are_id_email_or_cio_id(emulator: Emulator) -> None:
    """Line 249: transactional ``identifiers`` is ``{id}``, ``{email}`` or ``{cio_id}``."""
    response = send(emulator, "sms", {"transactional_message_id": "t", "identifiers": {"phone": "+14155552671"}})
    assert response.status_code == 400
    assert "identifiers" in response.json()["meta"]["error"]
    assert emulator.transactional_sends() == []


def test_a_v2_anonymous_event_names_its_visitor_in_identifiers(emulator: Emulator) -> None:
    """Lines 70-77: a v2 person operation names the person in ``identifiers`` (one of id, email, phone,
    cio_id); an anonymous event is documented only as v1 ``POST /api/v1/events`` (line 32). The v2 form in
    production use (Segment's and RudderStack's Customer.io destinations) is ``identifiers: {anonymous_id}``
    on an event, page or screen: taken; a top-level ``anonymous_id``, or an anonymous identify, is not."""
    refused = [{"type": "person", "anonymous_id": "anon-1", "action": "event", "name": "viewed"},
               {"type": "person", "identifiers": {"anonymous_id": "anon-1"}, "action": "identify",
                "attributes": {"plan": "pro"}}]
    response = batch(emulator, refused)
    assert response.status_code == 207
    assert [e["field"] for e in response.json()["errors"]] == ["identifiers", "identifiers.anonymous_id"]
    assert emulator.state()["anonymous_events"] == {} and emulator.state()["people"] == {}
    taken = [{"type": "person", "identifiers": {"anonymous_id": "anon-1"}, "action": action, "name": name}
             for action, name in (("event", "viewed"), ("page", "/home"), ("screen", "Home"))]
    assert batch(emulator, taken).status_code == 200
    v1 = requests.post(f"{emulator.url}/api/v1/events", json={"name": "viewed", "anonymous_id": "anon-2"},
                       auth=AUTH, timeout=10)
    assert v1.status_code == 200
    assert sorted(emulator.state()["anonymous_events"]) == ["anon-1", "anon-2"]
    assert len(emulator.state()["anonymous_events"]["anon-1"]) == 3
