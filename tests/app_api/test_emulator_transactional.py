"""The emulator's App API: ``POST /v1/send/{kind}`` with Bearer auth, validation, its own rate limit, faults."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from ciotrack.emulator import Emulator

APP_KEY = "app-emu-SECRET"
TEMPLATE_EMAIL = {"transactional_message_id": 12, "to": "a@example.com", "identifiers": {"id": "1"}}


@pytest.fixture
def em() -> Iterator[Emulator]:
    with Emulator(workspaces={"site-e": "key-e"}, app_api_keys={"site-e": APP_KEY}) as emulator:
        yield emulator


def post(em: Emulator, kind: str, body: Any, key: str | None = APP_KEY, method: str = "POST") -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with requests.Session() as session:
        session.trust_env = False
        return session.request(method, f"{em.url}/v1/send/{kind}", json=body, headers=headers, timeout=10)


@pytest.mark.parametrize("body, fragment", [
    ({"transactional_message_id": 1, "to": "a@example.com"}, "identifiers"),
    ({**TEMPLATE_EMAIL, "identifiers": {"id": "1", "email": "a@example.com"}}, "exactly one"),
    ({**TEMPLATE_EMAIL, "identifiers": {"id": ""}}, "must not be empty"),
    ({"transactional_message_id": 1, "identifiers": {"id": "1"}}, "to is required"),
    ({"to": "a@example.com", "identifiers": {"id": "1"}, "subject": "s"}, "missing: from, body"),
    ({**TEMPLATE_EMAIL, "to": ",".join(f"u{i}@example.com" for i in range(10)),
      "bcc": ",".join(f"b{i}@example.com" for i in range(6))}, "16 recipients"),
    ({**TEMPLATE_EMAIL, "send_at": "tomorrow"}, "send_at"),
    ({**TEMPLATE_EMAIL, "message_data": [1]}, "message_data must be an object"),
    ({**TEMPLATE_EMAIL, "attachments": {"a.pdf": "not base64!"}}, "base64"),
    ([TEMPLATE_EMAIL], "JSON object"),
])
def test_invalid_email_requests_get_400_with_meta_error(em: Emulator, body: Any, fragment: str) -> None:
    response = post(em, "email", body)
    assert response.status_code == 400
    assert fragment in response.json()["meta"]["error"]
    assert em.transactional_sends() == []


def test_each_kind_needs_a_template_except_full_emails(em: Emulator) -> None:
    for kind in ("push", "sms", "whatsapp", "inbox_message", "in_app"):
        response = post(em, kind, {"identifiers": {"id": "1"}})
        assert response.status_code == 400, kind
        assert "transactional_message_id is required" in response.json()["meta"]["error"]
        assert post(em, kind, {"identifiers": {"id": "1"}, "transactional_message_id": "t"}).status_code == 200
    assert [s["kind"] for s in em.transactional_sends()] == ["push", "sms", "whatsapp", "inbox_message", "in_app"]


def test_full_email_with_attachment_is_accepted(em: Emulator) -> None:
    body = {"to": "a@example.com", "from": "b@example.com", "subject": "s", "body": "<p>hi</p>",
            "identifiers": {"email": "a@example.com"}, "attachments": {"a.txt": base64.b64encode(b"x").decode()}}
    response = post(em, "email", body)
    assert response.status_code == 200
    answer = response.json()
    assert set(answer) == {"delivery_id", "queued_at"}
    [sent] = em.transactional_sends("site-e")
    assert sent["request"] == body and sent["delivery_id"] == answer["delivery_id"]
    em.reset()
    assert em.transactional_sends() == []


def test_auth_kind_and_method(em: Emulator) -> None:
    assert post(em, "email", TEMPLATE_EMAIL, key=None).status_code == 401
    assert post(em, "email", TEMPLATE_EMAIL, key="key-e").status_code == 401  # the Track key is not an App key
    basic = base64.b64encode(b"site-e:key-e").decode()
    with requests.Session() as session:
        session.trust_env = False
        response = session.post(f"{em.url}/v1/send/email", json=TEMPLATE_EMAIL,
                                headers={"Authorization": f"Basic {basic}"}, timeout=10)
    assert response.status_code == 401
    assert "App API key" in response.json()["meta"]["error"]
    assert em.transactional_sends() == []


def test_unknown_kind_and_get(em: Emulator) -> None:
    assert post(em, "fax", TEMPLATE_EMAIL).status_code == 404
    assert post(em, "email", None, method="GET").status_code == 405


def test_app_api_rate_limit_is_separate_from_the_track_api() -> None:
    with Emulator(workspaces={"site-e": "key-e"}, app_api_keys={"site-e": APP_KEY}, rate_limit=2, burst=2) as em:
        check_separate_limits(em)


def check_separate_limits(em: Emulator) -> None:
    # burst 2: two App API sends pass, the third is limited ...
    statuses = [post(em, "sms", {"transactional_message_id": 1, "identifiers": {"id": "1"}}).status_code
                for _ in range(3)]
    assert statuses[:2] == [200, 200] and statuses[2] == 429
    # ... while the Track API's own bucket is still full.
    with requests.Session() as session:
        session.trust_env = False
        response = session.post(f"{em.url}/api/v2/batch", auth=("site-e", "key-e"), timeout=10,
                                json={"batch": [{"type": "person", "identifiers": {"id": "1"}, "action": "identify",
                                                 "attributes": {"a": 1}}]})
    assert response.status_code == 200


def test_faults_apply_to_the_app_api(em: Emulator) -> None:
    em.set_faults(error_rate=1.0, error_statuses=[502])
    assert post(em, "email", TEMPLATE_EMAIL).status_code == 502
    em.clear_faults()
    em.storm_429(5, retry_after=3)
    response = post(em, "email", TEMPLATE_EMAIL)
    assert response.status_code == 429 and response.headers["Retry-After"] == "3"
    assert em.transactional_sends() == []
    assert em.stats()["faults"]["error"] == 1 and em.stats()["faults"]["storm_429"] == 1


def test_app_api_keys_must_name_known_workspaces() -> None:
    with pytest.raises(ValueError, match="unknown workspaces"):
        Emulator(workspaces={"a": "k"}, app_api_keys={"b": "x"})
    assert Emulator(workspaces={"a": "k"}).credentials() == [("a", "k", "app-k")]
