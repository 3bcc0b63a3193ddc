"""Emulator, Track API v2 over real sockets: batch and entity, statuses 200/207/400/401/413,
limits, workspaces, stats and the control endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests

from ciotrack.emulator import Emulator

SITE, KEY = "site-a", "key-a"
ULID_1 = "01HV5Z9Q8N6W3X2Y1T0S9R8P7A"
ULID_2 = "01HV5Z9Q8N6W3X2Y1T0S9R8P7B"


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with Emulator(workspaces={SITE: KEY, "site-b": "key-b"}) as em:
        yield em


def post(em: Emulator, path: str, body: bytes, auth: tuple[str, str] = (SITE, KEY)) -> requests.Response:
    return requests.post(f"{em.url}{path}", data=body, auth=auth, timeout=10,
                         headers={"Content-Type": "application/json"})


def batch(em: Emulator, ops: list[Any], auth: tuple[str, str] = (SITE, KEY)) -> requests.Response:
    return post(em, "/api/v2/batch", orjson.dumps({"batch": ops}), auth)


def event(pid: str, name: str = "checkout", eid: str | None = None, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"type": "person", "identifiers": {"id": pid}, "action": "event", "name": name, **extra}
    if eid is not None:
        op["id"] = eid
    return op


def person_op(pid: str, action: str, **extra: Any) -> dict[str, Any]:
    return {"type": "person", "identifiers": {"id": pid}, "action": action, **extra}


def test_batch_applies_identify_and_events(emulator: Emulator) -> None:
    response = batch(emulator, [
        person_op("42", "identify", attributes={"email": "a@x.io", "plan": "pro"}, timestamp=100),
        event("42", eid=ULID_1, timestamp=1_700_000_000, attributes={"total": 5}),
        person_op("42", "screen", name="Home"),
    ])
    assert response.status_code == 200
    assert response.json() == {}
    state = emulator.state()
    person = state["people"]["42"]
    assert person["attributes"] == {"email": "a@x.io", "plan": "pro"}
    assert person["events"][0] == {"name": "checkout", "type": "event", "data": {"total": 5},
                                   "timestamp": 1_700_000_000, "id": ULID_1}
    assert person["events"][1]["type"] == "screen" and person["events"][1]["data"] == {}
    assert isinstance(person["events"][1]["timestamp"], int)  # receive time when none is given
    stats = emulator.stats()
    assert stats["operations"] == 3 and stats["events"] == 2 and stats["by_status"] == {"200": 1}
    assert stats["batches"] == 1
    assert stats["bytes_received"] == len(response.request.body or b"")


def test_event_names_are_trimmed(emulator: Emulator) -> None:
    assert batch(emulator, [event("1", name="  signed up ")]).status_code == 200
    assert emulator.state()["people"]["1"]["events"][0]["name"] == "signed up"


def test_partial_failure_is_207_and_applies_the_rest(emulator: Emulator) -> None:
    response = batch(emulator, [event("1", eid=ULID_1), event("2", name=""), event("3", eid="not-a-ulid"),
                                event("4"), {"type": "person", "action": "identify"}, "not an object",
                                {"type": "robot", "action": "event"}, person_op("5", "fly")])
    assert response.status_code == 207
    errors = response.json()["errors"]
    assert [(e["batch_index"], e["field"]) for e in errors] == [
        (1, "name"), (2, "id"), (4, "identifiers"), (5, ""), (6, "type"), (7, "action")]
    assert all(e["reason"] and e["message"] for e in errors)
    assert sorted(emulator.state()["people"]) == ["1", "4"]
    assert emulator.stats()["operations_rejected"] == 6


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"batch": {}}', b'{"ops": []}', b'{"batch": [1,]}'])
def test_malformed_batch_body_is_400(emulator: Emulator, body: bytes) -> None:
    response = post(emulator, "/api/v2/batch", body)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert errors and {"reason", "field", "message"} <= set(errors[0])
    assert emulator.stats()["by_status"] == {"400": 1}


def test_invalid_utf8_is_400(emulator: Emulator) -> None:
    assert post(emulator, "/api/v2/batch", b'{"batch":[{"type":"person","name":"\xff"}]}').status_code == 400


def test_oversize_batch_is_413_and_applies_nothing(emulator: Emulator) -> None:
    ops = [event(str(i), attributes={"pad": "x" * 900}) for i in range(600)]
    body = orjson.dumps({"batch": ops})
    assert len(body) > 500_000
    response = post(emulator, "/api/v2/batch", body)
    assert response.status_code == 413
    assert response.json()["errors"][0]["reason"] == "too_large"
    assert emulator.state()["people"] == {}
    # The connection stays usable: the body was drained.
    assert batch(emulator, [event("ok")]).status_code == 200


def test_batch_of_exactly_500000_bytes_is_accepted(emulator: Emulator) -> None:
    op = event("1", attributes={"pad": ""})
    base = len(orjson.dumps({"batch": [op]}))
    op["attributes"]["pad"] = "x" * (500_000 - base - 1)  # one byte short, then one op byte more below
    op["attributes"]["pad"] += "x"
    body = orjson.dumps({"batch": [op]})
    assert len(body) == 500_000
    response = post(emulator, "/api/v2/batch", body)
    # 500,000 bytes of body, but the single operation is far over 32 KB: a 207 item, not a 413.
    assert response.status_code == 207
    assert response.json()["errors"][0]["reason"] == "too_large"


def test_integer_beyond_64_bits_is_a_207_item(emulator: Emulator) -> None:
    body = b'{"batch":[{"type":"person","identifiers":{"id":"1"},"action":"event","name":"x",' \
           b'"timestamp":1180591620717411303424},' + orjson.dumps(event("2")) + b"]}"
    response = post(emulator, "/api/v2/batch", body)
    assert response.status_code == 207
    assert [e["batch_index"] for e in response.json()["errors"]] == [0]
    assert list(emulator.state()["people"]) == ["2"]


@pytest.mark.parametrize("number", [b"1E+400", b"-1e400", b"1" + b"0" * 400 + b".5"])
def test_a_number_beyond_a_double_is_a_207_item_and_the_state_stays_readable(emulator: Emulator,
                                                                              number: bytes) -> None:
    head = b'{"type":"person","identifiers":{"id":"%s"},"action":'
    ops = [
        head % b"fast" + b'"event","name":"x","timestamp":1700000000,"attributes":{"n":' + number + b"}}",  # fast path
        head % b"general" + b'"identify","attributes":{"n":' + number + b"}}",  # general path
        orjson.dumps(event("kept", attributes={"note": "1E+400 in a string", "big": 1.5e308})),
    ]
    response = post(emulator, "/api/v2/batch", b'{"batch":[' + b",".join(ops) + b"]}")
    assert response.status_code == 207
    assert [(e["batch_index"], e["reason"]) for e in response.json()["errors"]] == [(0, "invalid"), (1, "invalid")]
    state = requests.get(f"{emulator.url}/_emulator/state", params={"site_id": SITE}, timeout=10)
    assert state.status_code == 200  # it answered 400 until a reset, the stored number unreadable
    assert list(state.json()["people"]) == ["kept"]


def test_operation_over_32kb_is_a_207_item(emulator: Emulator) -> None:
    big = event("1", attributes={"pad": "x" * 33_000})
    response = batch(emulator, [big, event("2")])
    assert response.status_code == 207
    assert response.json()["errors"] == [{"batch_index": 0, "reason": "too_large", "field": "",
                                          "message": "operation is over 32768 bytes"}]
    assert list(emulator.state()["people"]) == ["2"]


@pytest.mark.parametrize(("op", "field"), [
    (person_op("x" * 151, "identify"), "identifiers.id"),
    (person_op("", "identify"), "identifiers.id"),
    ({"type": "person", "identifiers": {"id": "1", "email": "a@x"}, "action": "delete"}, "identifiers"),
    ({"type": "person", "identifiers": {"login": "1"}, "action": "delete"}, "identifiers.login"),
    (event("1", name="n" * 101), "name"),
    (event("1", name="é" * 51), "name"),  # 102 bytes in UTF-8
    (event("1", timestamp="yesterday"), "timestamp"),
    (event("1", timestamp=1.5), "timestamp"),
    (event("1", attributes=[1]), "attributes"),
    (event("1", eid="01HV5Z9Q8N6W3X2Y1T0S9R8P7"), "id"),  # 25 characters
    (event("1", eid="81HV5Z9Q8N6W3X2Y1T0S9R8P7A"), "id"),  # first character over 7
    (event("1", eid="01HV5Z9Q8N6W3X2Y1T0S9R8P7U"), "id"),  # U is not Crockford base32
    (person_op("1", "identify", attributes={f"a{i}": i for i in range(301)}), "attributes"),
    (person_op("1", "identify", attributes={"n" * 151: 1}), "attributes." + "n" * 40),
    (person_op("1", "identify", attributes={"bio": "b" * 1001}), "attributes.bio"),
    (person_op("1", "identify", attributes={"tags": ["t" * 500, "t" * 500]}), "attributes.tags"),
    (person_op("1", "add_device", device={"token": "t"}), "device.platform"),
    (person_op("1", "add_device", device={"platform": "ios"}), "device.token"),
    (person_op("1", "add_device", device={"token": "t", "platform": "windows"}), "device.platform"),
    ({"type": "person", "action": "merge", "primary": {"id": "nobody"}, "secondary": {"id": "2"}}, "primary"),
    ({"type": "person", "action": "event", "name": "x"}, "identifiers"),
])
def test_invalid_operations(emulator: Emulator, op: dict[str, Any], field: str) -> None:
    response = batch(emulator, [op])
    assert response.status_code == 207, response.text
    (error,) = response.json()["errors"]
    assert error["batch_index"] == 0 and error["field"] == field
    assert emulator.state()["people"] == {}


def test_limits_at_their_edges_are_accepted(emulator: Emulator) -> None:
    ops = [
        person_op("i" * 150, "identify", attributes={**{f"a{i}": i for i in range(299)}, "n" * 150: "v" * 1000}),
        event("1", name="n" * 100, eid=ULID_1.lower()),
        event("2", name="é" * 50),  # exactly 100 bytes
    ]
    assert batch(emulator, ops).status_code == 200
    assert len(emulator.state()["people"]["i" * 150]["attributes"]) == 300


def test_entity_endpoint(emulator: Emulator) -> None:
    ok = post(emulator, "/api/v2/entity", orjson.dumps(person_op("7", "identify", attributes={"a": 1})))
    assert ok.status_code == 200 and ok.json() == {}
    bad = post(emulator, "/api/v2/entity", orjson.dumps(event("7", name="")))
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["field"] == "name"
    assert post(emulator, "/api/v2/entity", b"{").status_code == 400
    big = post(emulator, "/api/v2/entity", orjson.dumps(event("7", attributes={"pad": "x" * 33_000})))
    assert big.status_code == 413
    assert emulator.state()["people"]["7"]["events"] == []


def test_object_and_delivery_operations(emulator: Emulator) -> None:
    response = batch(emulator, [
        {"type": "object", "identifiers": {"object_type_id": "1", "object_id": "acme"}, "action": "identify",
         "attributes": {"name": "Acme"}},
        {"type": "object", "identifiers": {"object_type_id": "1", "object_id": "acme"},
         "action": "add_relationships", "cio_relationships": [{"identifiers": {"id": "42"}}]},
        {"type": "delivery", "identifiers": {"id": "dlv-1"}, "action": "event", "name": "opened",
         "attributes": {"device_token": "tok"}},
        {"type": "delivery", "identifiers": {"id": "dlv-2"}, "action": "event", "name": "opened"},
        {"type": "object", "identifiers": {"object_id": "acme"}, "action": "identify"},
    ])
    assert response.status_code == 207
    assert [e["batch_index"] for e in response.json()["errors"]] == [1, 3, 4]
    state = emulator.state()
    assert state["objects"] == {"1:acme": {"name": "Acme"}}
    assert [d["delivery_id"] for d in state["deliveries"]] == ["dlv-1"]


def test_bad_credentials_are_401_and_change_nothing(emulator: Emulator) -> None:
    assert batch(emulator, [event("1")], auth=(SITE, "wrong")).status_code == 401
    assert batch(emulator, [event("1")], auth=("nobody", KEY)).status_code == 401
    no_auth = requests.post(f"{emulator.url}/api/v2/batch", json={"batch": [event("1")]}, timeout=10)
    assert no_auth.status_code == 401
    bearer = requests.post(f"{emulator.url}/api/v2/batch", json={"batch": [event("1")]}, timeout=10,
                           headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 401
    assert emulator.state()["people"] == {}
    assert emulator.stats()["by_status"] == {"401": 4}


def test_workspaces_are_separate(emulator: Emulator) -> None:
    assert batch(emulator, [event("1", eid=ULID_1)], auth=("site-b", "key-b")).status_code == 200
    assert batch(emulator, [event("1", eid=ULID_1)]).status_code == 200  # dedup is per workspace
    assert emulator.state("site-b")["people"]["1"]["events"][0]["id"] == ULID_1
    assert emulator.state()["people"]["1"]["events"][0]["id"] == ULID_1
    assert emulator.stats()["duplicates"] == 0


def test_default_workspace() -> None:
    with Emulator() as em:
        assert requests.post(f"{em.url}/api/v2/batch", json={"batch": [event("1")]}, auth=("site-1", "key-1"),
                             timeout=10).status_code == 200
        assert em.state()["site_id"] == "site-1"


def test_duplicate_event_ids_are_ignored(emulator: Emulator) -> None:
    assert batch(emulator, [event("1", eid=ULID_1), event("1", eid=ULID_1)]).status_code == 200
    assert batch(emulator, [event("2", eid=ULID_1)]).status_code == 200
    assert len(emulator.state()["people"]["1"]["events"]) == 1
    assert "2" not in emulator.state()["people"]  # a duplicate creates nobody
    assert emulator.stats()["duplicates"] == 2
    assert emulator.stats()["events"] == 1


def test_unknown_path_is_404(emulator: Emulator) -> None:
    assert post(emulator, "/api/v3/batch", b"{}").status_code == 404


def test_control_endpoints(emulator: Emulator) -> None:
    batch(emulator, [event("1")])
    stats = requests.get(f"{emulator.url}/_emulator/stats", timeout=10).json()
    assert stats["events"] == 1 and stats["requests"] == 1
    state = requests.get(f"{emulator.url}/_emulator/state", timeout=10).json()
    assert list(state["people"]) == ["1"]
    other = requests.get(f"{emulator.url}/_emulator/state", params={"site_id": "site-b"}, timeout=10).json()
    assert other["site_id"] == "site-b" and other["people"] == {}
    assert requests.get(f"{emulator.url}/_emulator/state", params={"site_id": "x"}, timeout=10).status_code == 404
    logged = requests.get(f"{emulator.url}/_emulator/requests", timeout=10).json()
    assert logged[0]["path"] == "/api/v2/batch" and logged[0]["site_id"] == SITE
    assert "authorization" not in {k.lower() for k in logged[0]["headers"]}
    faults = requests.post(f"{emulator.url}/_emulator/faults", json={"error_rate": 1.0}, timeout=10)
    assert faults.status_code == 200 and faults.json()["error_rate"] == 1.0
    assert batch(emulator, [event("2")]).status_code in (500, 502, 503)
    assert requests.post(f"{emulator.url}/_emulator/faults", json={}, timeout=10).json()["error_rate"] == 0.0
    bad = requests.post(f"{emulator.url}/_emulator/faults", json={"eror_rate": 1}, timeout=10)
    assert bad.status_code == 400 and "eror_rate" in bad.json()["error"]
    assert requests.post(f"{emulator.url}/_emulator/faults", json={"error_rate": 2}, timeout=10).status_code == 400
    assert requests.post(f"{emulator.url}/_emulator/reset", timeout=10).status_code == 200
    assert emulator.state()["people"] == {} and emulator.stats()["requests"] == 0
    assert requests.get(f"{emulator.url}/_emulator/nothing", timeout=10).status_code == 404


def test_requests_log_keeps_the_exact_request(emulator: Emulator) -> None:
    body = orjson.dumps({"batch": [event("1")]})
    post(emulator, "/api/v2/batch", body)
    (logged,) = emulator.requests()
    assert logged["method"] == "POST" and logged["status"] == 200 and logged["body"] == body
    assert logged["headers"]["Content-Type"] == "application/json"


def test_wait_helpers(emulator: Emulator) -> None:
    assert not emulator.wait_events(1, timeout=0.05)
    batch(emulator, [event("1"), event("2")])
    assert emulator.wait_events(2, timeout=5)
    assert emulator.wait_for(lambda: "2" in emulator.state()["people"], timeout=5)


def test_keep_alive_connection_serves_many_requests(emulator: Emulator) -> None:
    with requests.Session() as session:
        for i in range(20):
            response = session.post(f"{emulator.url}/api/v2/batch", json={"batch": [event(str(i))]},
                                    auth=(SITE, KEY), timeout=10)
            assert response.status_code == 200
    assert len(emulator.state()["people"]) == 20


def test_chunked_body_is_read(emulator: Emulator) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"batch":['
        yield orjson.dumps(event("c1"))
        yield b"]}"

    response = requests.post(f"{emulator.url}/api/v2/batch", data=chunks(), auth=(SITE, KEY), timeout=10)
    assert response.status_code == 200
    assert list(emulator.state()["people"]) == ["c1"]


def test_binds_to_loopback_by_default(emulator: Emulator) -> None:
    assert emulator.url.startswith("http://127.0.0.1:")


def test_constructor_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        Emulator(rate_limit=0)
    with pytest.raises(ValueError):
        Emulator(region="mars")
    with pytest.raises(ValueError):
        Emulator(workspaces={})
    with pytest.raises(ValueError):
        Emulator(faults={"reset_rate": -1})
