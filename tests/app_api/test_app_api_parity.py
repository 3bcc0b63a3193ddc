"""Request parity with the official ``customerio`` 3.2 ``APIClient``: the same Send*Request (or dict) sent by
both clients to one recording server gives the same method, path, Bearer header and JSON body; both get the
same answer shape from the emulator."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import customerio  # type: ignore[import-untyped]
import pytest

import ciotrack
from ciotrack.app_api import APIClient
from ciotrack.emulator import Emulator

from conftest import RecordingServer

APP_KEY = "app-key-SECRET-77"

# kind -> (official request class name, method name, constructor kwargs)
CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "email": ("SendEmailRequest", "send_email", dict(
        transactional_message_id="welcome", to="Ann <ann@example.com>", identifiers={"id": "42"},
        _from="shop@example.com", headers={"X-Tag": "t"}, reply_to="help@example.com", cc="c@example.com",
        bcc="b@example.com", subject="Hi", preheader="pre", body="<p>x</p>", body_plain="x", body_amp=None,
        fake_bcc=False, disable_message_retention=True, send_to_unsubscribed=False, tracked=True,
        queue_draft=False, message_data={"order": {"total": 12.5, "when": datetime(2024, 1, 2, 3, 4, 5)},
                                         "nan": float("nan")},
        disable_css_preprocessing=True, send_at=1_900_000_000, language="fr")),
    "push": ("SendPushRequest", "send_push", dict(
        transactional_message_id=7, to="all", identifiers={"email": "p@example.com"}, title="T", message="M",
        image_url="https://example.com/i.png", link="app://x", custom_data={"k": "v"},
        custom_payload={"ios": {"aps": {"badge": 1}}}, device={"token": "tok", "platform": "ios"}, sound="default",
        send_at=datetime(2030, 1, 1, tzinfo=UTC))),
    "sms": ("SendSMSRequest", "send_sms", dict(transactional_message_id="sms-1", to="+15550100",
                                               identifiers={"cio_id": "abc"}, message_data={"code": "1234"})),
    "whatsapp": ("SendWhatsAppRequest", "send_whatsapp", dict(transactional_message_id=3, to="+15550101",
                                                              identifiers={"id": 9}, tracked=False)),
    "inbox_message": ("SendInboxMessageRequest", "send_inbox_message", dict(
        transactional_message_id=4, identifiers={"id": "5"}, message_data={"a": [1, 2]}, language="de")),
    "in_app": ("SendInAppRequest", "send_in_app", dict(transactional_message_id="ia", identifiers={"id": "6"},
                                                       queue_draft=True)),
}


def _sent(recorder: RecordingServer, index: int) -> tuple[str, str, str, Any]:
    rec = recorder.requests[index]
    return rec.method, rec.target, rec.headers["Authorization"], json.loads(rec.body)


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("as_dict", [False, True], ids=["request-object", "dict"])
def test_request_shape_matches_the_official_client(recorder: RecordingServer, kind: str, as_dict: bool) -> None:
    class_name, method, kwargs = CASES[kind]
    recorder.responder = lambda rec: (200, {}, b'{"delivery_id":"d-1","queued_at":1}')
    official_request = getattr(customerio, class_name)(**kwargs)
    ours_request = getattr(ciotrack, class_name)(**kwargs)
    assert ours_request._to_dict() == official_request._to_dict()
    official = customerio.APIClient(APP_KEY, url=recorder.url)
    ours = APIClient(APP_KEY, url=recorder.url)
    try:
        a = getattr(official, method)(official_request._to_dict() if as_dict else official_request)
        b = getattr(ours, method)(ours_request._to_dict() if as_dict else ours_request)
    finally:
        official.close()
        ours.close()
    assert a == b == {"delivery_id": "d-1", "queued_at": 1}
    assert recorder.wait_requests(2)
    official_sent, ours_sent = _sent(recorder, 0), _sent(recorder, 1)
    assert ours_sent == official_sent
    assert ours_sent[1] == f"/v1/send/{kind}" and ours_sent[2] == f"Bearer {APP_KEY}"
    assert recorder.requests[1].headers["Content-Type"] == "application/json"


def test_positional_arguments_and_attach_match() -> None:
    args = ("tpl", "to@example.com", {"id": "1"}, "from@example.com", {"H": "v"}, "r@example.com")
    official = customerio.SendEmailRequest(*args)
    ours = ciotrack.SendEmailRequest(*args)
    for request in (official, ours):
        request.attach("a.txt", "héllo")
        request.attach("b.bin", b"\x00\x01")
        request.attach("c.txt", "YWxyZWFkeQ==", encode=False)
    assert ours._to_dict() == official._to_dict()
    with pytest.raises(ciotrack.CustomerIOException, match="already exists"):
        ours.attach("a.txt", "again")
    push = ("p", "to", {"id": "1"}, "title", "message")
    assert ciotrack.SendPushRequest(*push)._to_dict() == customerio.SendPushRequest(*push)._to_dict()


def test_both_clients_get_a_delivery_id_from_the_emulator() -> None:
    with Emulator(workspaces={"site-p": "key-p"}, app_api_keys={"site-p": APP_KEY}) as em:
        body = {"transactional_message_id": "welcome", "to": "x@example.com", "identifiers": {"id": "1"}}
        official = customerio.APIClient(APP_KEY, url=em.url)
        with APIClient(APP_KEY, url=em.url) as ours:
            a, b = official.send_email(body), ours.send_email(body)
        official.close()
        assert a.keys() == b.keys() == {"delivery_id", "queued_at"}
        assert a["delivery_id"] != b["delivery_id"]
        sends = em.transactional_sends()
        assert [s["delivery_id"] for s in sends] == [a["delivery_id"], b["delivery_id"]]
        assert sends[0]["request"] == sends[1]["request"] == body


def test_drop_in_import_paths() -> None:
    from ciotrack import APIClient as from_package
    from ciotrack.compat import APIClient as from_compat
    from ciotrack.compat import SendInboxMessageRequest

    assert from_package is from_compat is APIClient
    assert SendInboxMessageRequest is ciotrack.SendInboxMessageRequest
    for name in customerio.__all__:
        assert hasattr(ciotrack, name), name
        assert name in ciotrack.compat.__all__, name
