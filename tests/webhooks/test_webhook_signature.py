"""verify(): known answers, tampering, wrong secrets, headers in every shape, the replay window, rotation."""

from __future__ import annotations

import json
import time
from email.message import Message

import pytest
from webhook_helpers import SECRET, hand_signature, signed

from ciotrack.webhooks import EmailEvent, WebhookVerificationError, sign, verify
from ciotrack.webhooks.samples import event_payload
from ciotrack.webhooks.signature import verify_signature

NOW = 1_700_000_000


def test_known_answer_signature_matches_the_hand_computed_hmac() -> None:
    body = b'{"event_id":"01HQZ","object_type":"email","metric":"sent","timestamp":1700000000,"data":{}}'
    expected = hand_signature(SECRET, str(NOW), body)
    assert sign(body, SECRET, NOW) == expected
    # Fixed vectors from `printf 'v0:<ts>:<body>' | openssl dgst -sha256 -hmac <key>`, so a change of
    # formula on both sides is caught too.
    assert hand_signature("key", "1", b"{}") == sign(b"{}", "key", 1) == (
        "236beeb373582a83005d170cf7966f7bc1bc3d8e39280320817c04d7ea3fab6e")
    vector = b'{"event_id":"01HQZ"}'
    headers = {"X-CIO-Timestamp": "1700000000",
               "X-CIO-Signature": "3535e2e65df1dd33574518c6ad9078497a9f22172d49638af987704a8718234e"}
    assert verify(vector, headers, SECRET, now=NOW).event_id == "01HQZ"


def test_a_signed_body_verifies_and_parses_to_its_typed_event() -> None:
    payload = event_payload("email", "opened", event_id="01HQZ5ABC", timestamp=NOW, customer_id="7")
    body, headers = signed(payload, timestamp=NOW)
    event = verify(body, headers, SECRET, now=NOW + 10)
    assert isinstance(event, EmailEvent)
    assert (event.event_id, event.metric, event.timestamp, event.customer_id) == ("01HQZ5ABC", "opened", NOW, "7")


@pytest.mark.parametrize("mutate", [
    lambda b: b.replace(b'"opened"', b'"clicked"'),
    lambda b: b + b" ",
    lambda b: b[:-1],
])
def test_a_tampered_body_is_rejected(mutate: object) -> None:
    body, headers = signed(event_payload("email", "opened", timestamp=NOW), timestamp=NOW)
    with pytest.raises(WebhookVerificationError) as err:
        verify(mutate(body), headers, SECRET, now=NOW)  # type: ignore[operator]
    assert err.value.reason == "bad_signature"


def test_a_wrong_secret_is_rejected_and_the_error_names_neither_secret_nor_expected_signature() -> None:
    body, headers = signed(event_payload(timestamp=NOW), secret="the-real-one", timestamp=NOW)
    with pytest.raises(WebhookVerificationError) as err:
        verify(body, headers, "not-the-real-one", now=NOW)
    assert err.value.reason == "bad_signature"
    assert isinstance(err.value, ValueError)
    text = str(err.value) + repr(err.value)
    assert "the-real-one" not in text and "not-the-real-one" not in text
    assert hand_signature("not-the-real-one", str(NOW), body) not in text
    assert headers["X-CIO-Signature"] not in text


def test_a_changed_timestamp_header_breaks_the_signature() -> None:
    body, headers = signed(event_payload(timestamp=NOW), timestamp=NOW)
    headers["X-CIO-Timestamp"] = str(NOW + 1)
    with pytest.raises(WebhookVerificationError, match="does not match") as err:
        verify(body, headers, SECRET, now=NOW)
    assert err.value.reason == "bad_signature"


@pytest.mark.parametrize("drop,reason", [("X-CIO-Signature", "missing_signature"),
                                         ("X-CIO-Timestamp", "missing_timestamp")])
def test_missing_headers_are_named(drop: str, reason: str) -> None:
    body, headers = signed(event_payload(timestamp=NOW), timestamp=NOW)
    del headers[drop]
    with pytest.raises(WebhookVerificationError, match=drop) as err:
        verify(body, headers, SECRET, now=NOW)
    assert err.value.reason == reason


def test_an_empty_signature_header_counts_as_missing() -> None:
    body, headers = signed(event_payload(timestamp=NOW), timestamp=NOW)
    headers["X-CIO-Signature"] = "  "
    with pytest.raises(WebhookVerificationError) as err:
        verify(body, headers, SECRET, now=NOW)
    assert err.value.reason == "missing_signature"


def test_duplicated_headers_are_an_error_in_every_shape() -> None:
    body, headers = signed(event_payload(timestamp=NOW), timestamp=NOW)
    sig, ts = headers["X-CIO-Signature"], headers["X-CIO-Timestamp"]
    other = hand_signature("other", ts, body)
    shapes: list[object] = [
        {"X-CIO-Signature": [sig, other], "X-CIO-Timestamp": ts},              # a multi-valued dict
        {"X-CIO-Signature": f"{other}, {sig}", "X-CIO-Timestamp": ts},         # folded by a server
        {"X-CIO-Signature": sig, "x-cio-signature": sig, "X-CIO-Timestamp": ts},  # two spellings
        {"HTTP_X_CIO_SIGNATURE": f"{sig},{sig}", "HTTP_X_CIO_TIMESTAMP": ts},  # a WSGI environ
        [(b"x-cio-signature", sig.encode()), (b"x-cio-signature", other.encode()),
         (b"x-cio-timestamp", ts.encode())],                                  # ASGI header pairs
        {"X-CIO-Signature": sig, "X-CIO-Timestamp": f"{ts}, {ts}"},            # the timestamp too
    ]
    message = Message()
    message["X-CIO-Signature"] = sig
    message["X-CIO-Signature"] = sig
    message["X-CIO-Timestamp"] = ts
    shapes.append(message)
    for shape in shapes:
        with pytest.raises(WebhookVerificationError) as err:
            verify(body, shape, SECRET, now=NOW)
        assert err.value.reason == "duplicate_header", shape


def test_header_names_are_case_insensitive_in_every_shape() -> None:
    body, headers = signed(event_payload(timestamp=NOW), timestamp=NOW)
    sig, ts = headers["X-CIO-Signature"], headers["X-CIO-Timestamp"]
    message = Message()
    message["x-cio-SIGNATURE"] = sig
    message["X-Cio-Timestamp"] = ts
    shapes: list[object] = [
        {"x-cio-signature": sig, "x-cio-timestamp": ts},
        {"X-Cio-Signature": sig, "X-Cio-Timestamp": ts, "Host": "example"},
        {"x-CIO-signature": sig, "X-cio-TIMESTAMP": ts},
        {"HTTP_X_CIO_SIGNATURE": sig, "HTTP_X_CIO_TIMESTAMP": ts, "REQUEST_METHOD": "POST"},
        [(b"host", b"x"), (b"x-cio-signature", sig.encode()), (b"x-cio-timestamp", ts.encode())],
        {"X-CIO-Signature": sig.encode(), "X-CIO-Timestamp": ts.encode()},
        message,
    ]
    for shape in shapes:
        assert verify(body, shape, SECRET, now=NOW).event_id, shape


def test_an_uppercase_hex_signature_is_accepted_and_garbage_is_malformed() -> None:
    body, headers = signed(event_payload(timestamp=NOW), timestamp=NOW)
    headers["X-CIO-Signature"] = headers["X-CIO-Signature"].upper()
    assert verify(body, headers, SECRET, now=NOW)
    for garbage in ("zz" * 32, "abcd", "é" * 64, headers["X-CIO-Signature"] + "00"):
        headers["X-CIO-Signature"] = garbage
        with pytest.raises(WebhookVerificationError) as err:
            verify(body, headers, SECRET, now=NOW)
        assert err.value.reason == "malformed_signature"


@pytest.mark.parametrize("timestamp", ["", "abc", "-5", "1.5", "１２３", "9" * 20])
def test_malformed_timestamps(timestamp: str) -> None:
    body = json.dumps(event_payload(timestamp=NOW)).encode()
    headers = {"X-CIO-Timestamp": timestamp, "X-CIO-Signature": hand_signature(SECRET, timestamp, body)}
    with pytest.raises(WebhookVerificationError) as err:
        verify(body, headers, SECRET, now=NOW)
    assert err.value.reason == ("missing_timestamp" if not timestamp else "malformed_timestamp")


def test_the_replay_window_both_ways_with_an_injected_clock() -> None:
    body, headers = signed(event_payload(timestamp=NOW), timestamp=NOW)
    assert verify(body, headers, SECRET, now=NOW + 300)
    assert verify(body, headers, SECRET, now=lambda: NOW - 300.0)
    with pytest.raises(WebhookVerificationError) as err:
        verify(body, headers, SECRET, now=NOW + 301)
    assert err.value.reason == "timestamp_too_old"
    with pytest.raises(WebhookVerificationError) as err:
        verify(body, headers, SECRET, now=NOW - 301)
    assert err.value.reason == "timestamp_in_future"
    with pytest.raises(WebhookVerificationError):
        verify(body, headers, SECRET, tolerance=10, now=NOW + 11)
    assert verify(body, headers, SECRET, tolerance=None, now=NOW + 10**6)  # window disabled


def test_the_default_clock_is_the_wall_clock() -> None:
    body, headers = signed(event_payload(), timestamp=int(time.time()))
    assert verify(body, headers, SECRET)
    body, headers = signed(event_payload(), timestamp=int(time.time()) - 3600)
    with pytest.raises(WebhookVerificationError):
        verify(body, headers, SECRET)


def test_rotation_accepts_any_listed_secret_and_only_those() -> None:
    old, new = "whsec-old", b"whsec-new"
    for secret in (old, new.decode()):
        body, headers = signed(event_payload(timestamp=NOW), secret=secret, timestamp=NOW)
        assert verify(body, headers, [old, new], now=NOW)
        assert verify(body, headers, (new, old), now=NOW)
    body, headers = signed(event_payload(timestamp=NOW), secret="whsec-retired", timestamp=NOW)
    with pytest.raises(WebhookVerificationError):
        verify(body, headers, [old, new], now=NOW)
    with pytest.raises(ValueError):
        verify(body, headers, [], now=NOW)


def test_body_types_and_a_signed_but_unreadable_payload() -> None:
    body, headers = signed(event_payload(timestamp=NOW), timestamp=NOW)
    for form in (bytearray(body), memoryview(body), body.decode()):
        assert verify(form, headers, SECRET, now=NOW)
    for bad in (b"not json", b"[1,2]", b'{"metric":"sent"}', b'{"event_id":5}'):
        bad_body, bad_headers = signed(bad, timestamp=NOW)
        with pytest.raises(WebhookVerificationError) as err:
            verify(bad_body, bad_headers, SECRET, now=NOW)
        assert err.value.reason == "malformed_payload"


def test_framework_header_objects_directly() -> None:
    from django.http.request import HttpHeaders
    from requests.structures import CaseInsensitiveDict
    from starlette.datastructures import Headers as StarletteHeaders
    from werkzeug.datastructures import Headers as WerkzeugHeaders

    body, headers = signed(event_payload(timestamp=NOW), timestamp=NOW)
    sig, ts = headers["X-CIO-Signature"], headers["X-CIO-Timestamp"]
    good: list[object] = [
        WerkzeugHeaders([("X-Cio-Signature", sig), ("x-cio-timestamp", ts)]),
        StarletteHeaders(raw=[(b"x-cio-signature", sig.encode()), (b"x-cio-timestamp", ts.encode())]),
        HttpHeaders({"HTTP_X_CIO_SIGNATURE": sig, "HTTP_X_CIO_TIMESTAMP": ts}),
        CaseInsensitiveDict({"x-cio-signature": sig, "X-CIO-TIMESTAMP": ts}),
    ]
    for shape in good:
        assert verify(body, shape, SECRET, now=NOW).event_id, shape
    doubled: list[object] = [
        WerkzeugHeaders([("X-CIO-Signature", sig), ("X-CIO-Signature", sig), ("X-CIO-Timestamp", ts)]),
        StarletteHeaders(raw=[(b"x-cio-signature", sig.encode()), (b"x-cio-signature", sig.encode()),
                              (b"x-cio-timestamp", ts.encode())]),
    ]
    for shape in doubled:
        with pytest.raises(WebhookVerificationError) as err:
            verify(body, shape, SECRET, now=NOW)
        assert err.value.reason == "duplicate_header", shape


def test_verification_keeps_the_gil_so_no_other_thread_runs_in_between() -> None:
    """hmac.digest() lets go of the GIL around the HMAC: a thread running Python may take it then,
    and the thread answering the webhook waits for it back (up to the switch interval). verify must
    not: while it runs, a busy thread must not advance. (The switch interval is set long, so only a
    release inside verify could let the busy thread in during one call.)"""
    import sys
    import threading

    body = json.dumps(event_payload(timestamp=NOW) | {"padding": "x" * 256_000}).encode()
    ts = str(NOW)
    headers = {"X-CIO-Timestamp": ts, "X-CIO-Signature": hand_signature(SECRET, ts, body)}
    ticks = [0]
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            ticks[0] += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.2)
    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    moved = []
    try:
        for _ in range(5):
            time.sleep(0.001)  # let the busy thread run; we get the GIL back at its next switch
            before = ticks[0]
            verify_signature(body, headers, SECRET, now=NOW)
            moved.append(ticks[0] - before)
    finally:
        stop.set()
        thread.join(5)
        sys.setswitchinterval(interval)
    assert ticks[0] > 0 and moved == [0] * 5
