"""The App API's transactional sends: ``POST /v1/send/{email|push|sms|whatsapp|inbox_message|in_app}``.

Bearer auth with the workspace's App API key (not its Track API key). The server applies the same
faults first (reset, 429 storm, error statuses, latency) and the same per-workspace rate limit (a
bucket of its own, as the App API's limit is separate from the Track API's). What is checked, after
Customer.io's docs (see shared/docs/customerio-api.md §9):

* the body is a JSON object of at most 1 MB, attachments excluded (3 MB in all);
* ``identifiers`` holds exactly one of ``id``, ``email``, ``cio_id``, non-empty;
* ``transactional_message_id`` (a template id or trigger name), or, for email only, a full message:
  ``to``, ``from``, ``subject`` and ``body``; email always needs ``to``, and at most 15 recipients
  across ``to``/``cc``/``bcc``;
* ``message_data`` and ``attachments`` are objects (attachments: name -> base64 text), ``send_at`` is
  unix seconds, at most 90 days ahead (a past one means "now").

An accepted send answers ``{"delivery_id": "...", "queued_at": <unix>}`` and is recorded (see
``Emulator.transactional_sends()``); nothing is delivered anywhere. Errors answer
``{"meta":{"error":"..."}}`` with 400 (401 for a bad key, 404 for an unknown kind).
"""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
from typing import Any

import orjson

from ciotrack.emulator.validate import OpError, person_identifiers

PATH_PREFIX = "/v1/send/"
KINDS = frozenset({"email", "push", "sms", "whatsapp", "inbox_message", "in_app"})
MAX_PAYLOAD_BYTES = 1_000_000
MAX_ATTACHMENT_BYTES = 2_000_000
MAX_BODY_BYTES = MAX_PAYLOAD_BYTES + MAX_ATTACHMENT_BYTES + 64 * 1024
MAX_RECIPIENTS = 15
MAX_SEND_AT_AHEAD = 90 * 86_400
# customerio-api.md line 249: {id}, {email} or {cio_id} ([PY] COMMON_MESSAGE_FIELD_MAP); no phone.
IDENTIFIER_KINDS = frozenset({"id", "email", "cio_id"})
UNAUTHORIZED = b'{"meta":{"error":"unauthorized: use the workspace\'s App API key as a Bearer token"}}'
_FULL_EMAIL_FIELDS = ("to", "from", "subject", "body")


def error_body(message: str) -> bytes:
    return orjson.dumps({"meta": {"error": message}})


def _recipients(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len([part for part in value.split(",") if part.strip()])
    if isinstance(value, list):
        return len(value)
    raise OpError("to", "invalid", "recipients must be a string")


def validate(kind: str, request: dict[str, Any], now: int) -> None:
    """Raise ``OpError`` for the first problem found (nothing is recorded then)."""
    ident_kind, _ = person_identifiers(request.get("identifiers"))
    if ident_kind not in IDENTIFIER_KINDS:
        raise OpError(f"identifiers.{ident_kind}", "invalid", "identifiers must be one of id, email, cio_id")
    template = request.get("transactional_message_id")
    if template is not None and not (isinstance(template, (str, int)) and not isinstance(template, bool)
                                     and str(template).strip()):
        raise OpError("transactional_message_id", "invalid", "transactional_message_id must be an id or a name")
    if kind == "email":
        if template is None:
            missing = [name for name in _FULL_EMAIL_FIELDS if not request.get(name)]
            if missing:
                raise OpError(missing[0], "required", "without transactional_message_id an email needs "
                              f"to, from, subject and body (missing: {', '.join(missing)})")
        elif not request.get("to"):
            raise OpError("to", "required", "to is required")
        count = sum(_recipients(request.get(name)) for name in ("to", "cc", "bcc"))
        if count > MAX_RECIPIENTS:
            raise OpError("to", "too_many", f"{count} recipients across to, cc and bcc; at most {MAX_RECIPIENTS}")
    elif template is None:
        raise OpError("transactional_message_id", "required", "transactional_message_id is required")
    for name in ("message_data", "attachments", "headers", "custom_data"):
        value = request.get(name)
        if value is not None and not isinstance(value, dict):
            raise OpError(name, "invalid", f"{name} must be an object")
    send_at = request.get("send_at")
    if send_at is not None and (not isinstance(send_at, int) or isinstance(send_at, bool)):
        raise OpError("send_at", "invalid", "send_at must be unix seconds (an integer)")
    if send_at is not None and send_at > now + MAX_SEND_AT_AHEAD:
        raise OpError("send_at", "invalid", "send_at can be at most 90 days in the future")
    attachment_bytes = 0
    for name, content in (request.get("attachments") or {}).items():
        if not isinstance(content, str):
            raise OpError(f"attachments.{name}", "invalid", "an attachment must be base64 text")
        try:
            attachment_bytes += len(base64.b64decode(content, validate=True))
        except (binascii.Error, ValueError):
            raise OpError(f"attachments.{name}", "invalid", "an attachment must be base64 text") from None
    if attachment_bytes > MAX_ATTACHMENT_BYTES:
        raise OpError("attachments", "too_large", f"attachments are over {MAX_ATTACHMENT_BYTES} bytes")
    rest = {k: v for k, v in request.items() if k != "attachments"}
    if len(orjson.dumps(rest)) > MAX_PAYLOAD_BYTES:
        raise OpError("", "too_large", f"the payload (attachments excluded) is over {MAX_PAYLOAD_BYTES} bytes")


class TransactionalLog:
    """The accepted sends, per workspace, in order (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sends: list[dict[str, Any]] = []

    def handle(self, site_id: str, kind: str, body: bytes, now: int) -> tuple[int, bytes]:
        """Validate and record one send; returns (status, JSON answer)."""
        if kind not in KINDS:
            return 404, error_body(f"no such transactional message kind {kind!r}")
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, error_body("the body is not valid JSON")
        if not isinstance(request, dict):
            return 400, error_body("the body must be a JSON object")
        try:
            validate(kind, request, now)
        except OpError as err:
            return 400, error_body(f"{err.field}: {err.message}" if err.field else err.message)
        delivery_id = base64.urlsafe_b64encode(secrets.token_bytes(18)).decode()
        with self._lock:
            self._sends.append({"site_id": site_id, "kind": kind, "delivery_id": delivery_id, "queued_at": now,
                                "request": request})
        return 200, orjson.dumps({"delivery_id": delivery_id, "queued_at": now})

    def sends(self, site_id: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(s) for s in self._sends if site_id is None or s["site_id"] == site_id]

    def clear(self) -> None:
        with self._lock:
            self._sends.clear()
