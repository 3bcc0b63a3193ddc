"""Verify (and, for tests and senders, make) Customer.io's reporting-webhook signatures.

The signed string is ``v0:<X-CIO-Timestamp>:<raw body>``; the MAC is HMAC-SHA256 keyed with the
webhook signing key, sent as a hex digest in ``X-CIO-Signature`` (customerio-api.md §8). Customer.io
documents no replay window: the timestamp is inside the signed string, so we enforce our own.

Pure stdlib (OpenSSL's HMAC through ``hmac``): no native core, no optional dependency.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from ciotrack.errors import CiotrackError
from ciotrack.webhooks.events import Event, event_from_dict

SIGNATURE_HEADER: Final = "X-CIO-Signature"
TIMESTAMP_HEADER: Final = "X-CIO-Timestamp"
DEFAULT_TOLERANCE: Final = 300

Secret = str | bytes
Secrets = Secret | Sequence[Secret]
Clock = float | int | Callable[[], float]


class WebhookVerificationError(CiotrackError, ValueError):
    """A webhook failed verification. ``reason`` is one of the ``REASONS`` (a stable code for
    metrics and responses); the message says what failed and never holds a secret or the expected
    signature."""

    REASONS: Final = (
        "missing_signature", "missing_timestamp", "duplicate_header", "malformed_signature",
        "malformed_timestamp", "timestamp_too_old", "timestamp_in_future", "bad_signature",
        "malformed_payload",
    )

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_SIG_KEYS: Final = ("X-CIO-Signature", "x-cio-signature", "X-Cio-Signature")
_TS_KEYS: Final = ("X-CIO-Timestamp", "x-cio-timestamp", "X-Cio-Timestamp")


def _as_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("latin-1")
    return str(value)


def _single(values: list[Any], name: str, missing: str) -> str:
    if len(values) == 1 and values[0].__class__ is str and "," not in values[0]:
        text: str = values[0].strip()
        if text:
            return text
    if not values:
        raise WebhookVerificationError(missing, f"the {name} header is missing")
    if len(values) > 1:
        raise WebhookVerificationError("duplicate_header", f"the {name} header is given {len(values)} times")
    value = values[0]
    if isinstance(value, list | tuple):
        return _single(list(value), name, missing)
    text = _as_text(value).strip()
    if "," in text:
        # Two headers of the same name folded into one by the server ("a, b"): never pick one.
        raise WebhookVerificationError("duplicate_header", f"the {name} header is given more than once")
    if not text:
        raise WebhookVerificationError(missing, f"the {name} header is empty")
    return text


def _scan(pairs: Iterable[tuple[Any, Any]], lower: str, environ_key: str) -> list[Any]:
    found = []
    size = len(lower)
    for key, value in pairs:
        key = _as_text(key)
        if (len(key) == size and key.lower() == lower) or key == environ_key:
            found.append(value)
    return found


def header_values(headers: Any, name: str) -> list[Any]:
    """Every value of header ``name`` in ``headers``: a dict or other mapping (any case), a WSGI
    environ or Django ``request.META`` (``HTTP_X_...``), an ASGI header list of byte pairs, or a
    framework's headers object (``getlist``/``get_all``, case-insensitive)."""
    lower = name.lower()
    environ_key = "HTTP_" + name.upper().replace("-", "_")
    if isinstance(headers, dict):
        value = headers.get(environ_key)
        if value is not None:  # a WSGI environ: its keys are unique by construction
            return [value]
        return _scan(headers.items(), lower, environ_key)
    getlist = getattr(headers, "getlist", None)  # werkzeug / Starlette headers, case-insensitive
    if getlist is not None:
        return list(getlist(name))
    get_all = getattr(headers, "get_all", None)  # email.message / http.client headers
    if get_all is not None:
        return list(get_all(name) or [])
    if isinstance(headers, Mapping):  # e.g. Django's request.headers
        return _scan(headers.items(), lower, environ_key)
    return _scan(headers, lower, environ_key)  # an ASGI scope["headers"] list


def _signature_and_timestamp(headers: Any) -> tuple[str, str]:
    if type(headers) is dict:
        if "HTTP_X_CIO_SIGNATURE" in headers or "HTTP_X_CIO_TIMESTAMP" in headers:
            # A WSGI environ / request.META: its keys are unique, so a direct lookup is complete.
            value = headers.get("HTTP_X_CIO_SIGNATURE")
            sig = [] if value is None else [value]
            value = headers.get("HTTP_X_CIO_TIMESTAMP")
            ts = [] if value is None else [value]
        else:
            # The spellings senders and frameworks use, by direct lookup (two of them present is a
            # duplicate); any other spelling is found by a case-insensitive scan.
            sig = [v for v in (headers.get(_SIG_KEYS[0]), headers.get(_SIG_KEYS[1]), headers.get(_SIG_KEYS[2]))
                   if v is not None]
            ts = [v for v in (headers.get(_TS_KEYS[0]), headers.get(_TS_KEYS[1]), headers.get(_TS_KEYS[2]))
                  if v is not None]
            if not sig:
                sig = _scan(headers.items(), "x-cio-signature", "HTTP_X_CIO_SIGNATURE")
            if not ts:
                ts = _scan(headers.items(), "x-cio-timestamp", "HTTP_X_CIO_TIMESTAMP")
    elif type(headers) is list:
        # An ASGI scope's header pairs (lower-case byte names by the spec; any case accepted): one pass.
        sig, ts = [], []
        for pair in headers:
            name = pair[0]
            if len(name) == 15:
                name = name.lower()
                if name == b"x-cio-signature" or name == "x-cio-signature":
                    sig.append(pair[1])
                elif name == b"x-cio-timestamp" or name == "x-cio-timestamp":
                    ts.append(pair[1])
    else:
        sig = header_values(headers, SIGNATURE_HEADER)
        ts = header_values(headers, TIMESTAMP_HEADER)
    return (_single(sig, SIGNATURE_HEADER, "missing_signature"),
            _single(ts, TIMESTAMP_HEADER, "missing_timestamp"))


# hmac.digest() lets go of the GIL around every HMAC it computes, and hashlib's update() around any
# buffer of 2048 bytes or more (CPython's HASHLIB_GIL_MINSIZE). The thread answering a webhook then
# has to take the GIL back, and if another thread took it meanwhile (the handler thread waking from
# its nap, a handler doing CPU work, a framework's threads) that waits for the other thread to let go,
# up to the 5 ms switch interval. Beside a busy thread (bench_webhooks.py -k busy_thread) the GIL
# changed hands inside 0-1 of 300 hmac.digest() calls on 2 KB, 4-5 on 64 KB, 15-16 on 256 KB;
# here 0, 2-3 and 10 (what is left are the switch interval's forced hand-overs). Fed in pieces
# under 2 KB the HMAC never lets go, and a keyed copy skips the key setup: cheaper too.
_GIL_KEEPING_CHUNK: Final = 2047
# Keyed HMAC objects (the key's inner and outer pads hashed once), copied per message. Bounded: the
# keys of a process are its signing secrets, a handful.
_KEYED: dict[bytes, Any] = {}
_KEYED_MAX: Final = 32


def _signature_of(key: bytes, timestamp: bytes, body: bytes) -> bytes:
    """HMAC-SHA256 of ``v0:<timestamp>:<body>`` under ``key``, computed without releasing the GIL."""
    keyed = _KEYED.get(key)
    if keyed is None:
        if len(_KEYED) >= _KEYED_MAX:
            _KEYED.clear()
        keyed = _KEYED[key] = hmac.new(key, digestmod="sha256")
    mac = keyed.copy()
    mac.update(b"v0:" + timestamp + b":")
    if len(body) <= _GIL_KEEPING_CHUNK:
        mac.update(body)
    else:
        view = memoryview(body)
        for start in range(0, len(view), _GIL_KEEPING_CHUNK):
            mac.update(view[start:start + _GIL_KEEPING_CHUNK])
    digest: bytes = mac.digest()
    return digest


def _keys(secret: Secrets) -> list[bytes]:
    if isinstance(secret, str):
        keys = [secret.encode()]
    elif isinstance(secret, bytes | bytearray):
        keys = [bytes(secret)]
    else:
        keys = [s.encode() if isinstance(s, str) else bytes(s) for s in secret]
    if not keys:
        raise ValueError("no webhook signing secret given")
    if not all(keys):
        # An HMAC keyed with nothing is one anyone can compute: e.g. an unset old key in a rotation list.
        raise ValueError("an empty webhook signing secret was given: anyone could sign with it")
    return keys


def _body_bytes(body: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        # A decoded body is only right if the framework decoded UTF-8 losslessly; prefer raw bytes.
        return body.encode()
    return bytes(body)


def _now(now: Clock | None) -> float:
    if now is None:
        return time.time()
    if callable(now):
        return float(now())
    return float(now)


def sign(body: bytes, secret: Secret, timestamp: int | str) -> str:
    """The hex signature Customer.io sends for ``body`` at ``timestamp`` (for senders and tests)."""
    key = secret.encode() if isinstance(secret, str) else secret
    return _signature_of(key, str(timestamp).encode(), body).hex()


def signed_headers(body: bytes, secret: Secret, timestamp: int | None = None) -> dict[str, str]:
    """``X-CIO-Timestamp`` and ``X-CIO-Signature`` for ``body`` (now, unless ``timestamp`` is given)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: sign(body, secret, ts),
            "Content-Type": "application/json"}


def _fast_pair(headers: dict[Any, Any]) -> tuple[str, str] | None:
    """The two headers of a plain dict or WSGI environ when they are unambiguous and well formed,
    by a few direct lookups; None sends the caller down the general path (which names any fault)."""
    sig = headers.get("HTTP_X_CIO_SIGNATURE")
    if sig is not None:
        ts = headers.get("HTTP_X_CIO_TIMESTAMP")
    else:
        sig = headers.get("X-CIO-Signature")
        ts = headers.get("X-CIO-Timestamp")
        if sig is None:
            sig = headers.get("x-cio-signature")
            ts = headers.get("x-cio-timestamp")
            if "X-Cio-Signature" in headers or "X-Cio-Timestamp" in headers:
                return None
        elif "x-cio-signature" in headers or "x-cio-timestamp" in headers or "X-Cio-Signature" in headers:
            return None
    # 64 characters hold one hex digest and never two; digits hold no separator.
    if sig.__class__ is str and ts.__class__ is str and len(sig) == 64 and len(ts) <= 12 and ts.isdigit() \
            and ts.isascii():
        return sig, ts
    return None


def verify_signature(
    body: bytes | bytearray | memoryview | str,
    headers: Any,
    secret: Secrets,
    *,
    tolerance: float | None = DEFAULT_TOLERANCE,
    now: Clock | None = None,
) -> bytes:
    """Check the signature and the replay window; returns the raw body (bytes), unparsed.

    ``tolerance`` is the largest allowed distance in seconds between the timestamp and ``now``
    (either way; None disables the window). Raises ``WebhookVerificationError``."""
    raw = body if body.__class__ is bytes else _body_bytes(body)
    pair = _fast_pair(headers) if type(headers) is dict else None
    if pair is not None:
        signature, timestamp = pair
    else:
        signature, timestamp = _signature_and_timestamp(headers)
        if not (timestamp.isdigit() and timestamp.isascii() and len(timestamp) <= 12):
            raise WebhookVerificationError("malformed_timestamp",
                                           f"the {TIMESTAMP_HEADER} header is not unix seconds")
    try:
        given = bytes.fromhex(signature)
    except ValueError:
        given = b""
    if len(given) != 32:
        raise WebhookVerificationError("malformed_signature",
                                       f"the {SIGNATURE_HEADER} header is not a hex SHA-256 digest")
    if tolerance is not None:
        skew = (time.time() if now is None else _now(now)) - int(timestamp)
        if skew > tolerance:
            raise WebhookVerificationError("timestamp_too_old",
                                           f"the timestamp is {skew:.0f} s old (tolerance {tolerance:g} s)")
        if skew < -tolerance:
            raise WebhookVerificationError("timestamp_in_future",
                                           f"the timestamp is {-skew:.0f} s in the future (tolerance {tolerance:g} s)")
    stamp = timestamp.encode()
    if secret.__class__ is str and secret:  # the common case; an empty key is refused by _keys
        matched = hmac.compare_digest(_signature_of(secret.encode(), stamp, raw), given)
    else:
        matched = False
        for key in _keys(secret):
            # Every key is tried (no early exit) so the time taken does not say which one matched.
            matched |= hmac.compare_digest(_signature_of(key, stamp, raw), given)
    if not matched:
        raise WebhookVerificationError("bad_signature", "the signature does not match the body and timestamp")
    return raw


def parse_body(raw: bytes) -> Event:
    """The typed event of a verified body; ``WebhookVerificationError('malformed_payload')`` if it
    is not a JSON object with an ``event_id``."""
    try:
        obj = json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("malformed_payload", "the body is not JSON") from None
    if not isinstance(obj, dict):
        raise WebhookVerificationError("malformed_payload", "the body is not a JSON object")
    try:
        return event_from_dict(obj)
    except ValueError as err:
        raise WebhookVerificationError("malformed_payload", str(err)) from None


def verify(
    body: bytes | bytearray | memoryview | str,
    headers: Any,
    secret: Secrets,
    *,
    tolerance: float | None = DEFAULT_TOLERANCE,
    now: Clock | None = None,
) -> Event:
    """Verify a reporting webhook and return its typed event.

    ``body``: the raw request body; ``headers``: a dict (any case), a WSGI environ, an ASGI header
    list or a framework's headers; ``secret``: the signing key, or several (key rotation: any of
    them may match); ``tolerance``: the replay window in seconds (None: no window); ``now``: unix
    seconds or a clock callable (for tests). Raises ``WebhookVerificationError`` (a ``ValueError``)."""
    return parse_body(verify_signature(body, headers, secret, tolerance=tolerance, now=now))
