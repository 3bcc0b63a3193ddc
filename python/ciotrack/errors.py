"""Exceptions of ciotrack.

Every class sits on a stdlib base as well, so callers that catch ``ValueError``
or ``TypeError`` around ``track()`` keep working. The native core raises
``SerializationError``, ``InvalidValueError`` and ``LimitError``; their message
starts with the path of the offending field (``data['items'][2]: ...``).
"""

from __future__ import annotations

from typing import Any


class CiotrackError(Exception):
    """Base class of every ciotrack exception."""


class ConfigError(CiotrackError, ValueError):
    """An option or environment variable has an unusable value."""


class CheckError(ConfigError):
    """``Tracker.check()`` found the tracker cannot deliver; the message says why and what to fix (never
    the API key). The subclasses name the cause."""


class CredentialsError(CheckError):
    """The Track API refused the site id and API key (401/403)."""


class RegionMismatchError(CheckError):
    """The workspace lives in another region than the tracker sends to."""

    account_region: str

    def __init__(self, message: str, *, account_region: str = "") -> None:
        super().__init__(message)
        self.account_region = account_region


class EndpointRedirectError(CheckError):
    """The endpoint answered a redirect (ciotrack never follows one: a redirected POST loses its body)."""


class EndpointUnreachableError(CheckError):
    """No usable answer from the endpoint (refused, timed out, TLS failure, DNS, a 5xx)."""


class SerializationError(CiotrackError, TypeError):
    """A value cannot be encoded: unsupported type, non-str dict key, or nesting too deep (a cycle)."""


class InvalidValueError(CiotrackError, ValueError):
    """A value has a supported type but is not valid: NaN/inf, int outside 64 bits, empty id, bad ULID,
    a string with a lone surrogate."""


class LimitError(InvalidValueError):
    """A Customer.io size limit is exceeded; the message names the limit and the field."""


class DeliveryError(CiotrackError):
    """Operations that could not be delivered. Handed to ``on_error``; never raised at the caller.

    ``ops`` are the encoded operations (JSON bytes) that failed, ``status`` the last HTTP status
    (None for a connection error or timeout), ``reason`` a short cause, ``attempts`` how many
    requests were made, ``region`` where they were sent.
    """

    ops: list[bytes]
    status: int | None
    reason: str
    attempts: int
    region: str

    def __init__(
        self,
        message: str,
        *,
        ops: list[bytes],
        status: int | None = None,
        reason: str = "",
        attempts: int = 0,
        region: str = "",
    ) -> None:
        super().__init__(message)
        self.ops = ops
        self.status = status
        self.reason = reason or message
        self.attempts = attempts
        self.region = region

    def __reduce__(self) -> tuple[Any, ...]:
        # The keyword-only attributes would be lost by BaseException's default (cls(*args)).
        return (_rebuild_delivery_error, (str(self), self.ops, self.status, self.reason, self.attempts, self.region))

    def __repr__(self) -> str:
        # The ops may hold personal data; the repr gives their count only.
        return (
            f"DeliveryError({str(self)!r}, ops=<{len(self.ops)} ops>, status={self.status!r}, "
            f"attempts={self.attempts}, region={self.region!r})"
        )


def _rebuild_delivery_error(
    message: str, ops: list[bytes], status: int | None, reason: str, attempts: int, region: str
) -> DeliveryError:
    return DeliveryError(message, ops=ops, status=status, reason=reason, attempts=attempts, region=region)


__all__ = [
    "CheckError",
    "CiotrackError",
    "ConfigError",
    "CredentialsError",
    "EndpointRedirectError",
    "EndpointUnreachableError",
    "RegionMismatchError",
    "DeliveryError",
    "InvalidValueError",
    "LimitError",
    "SerializationError",
]
