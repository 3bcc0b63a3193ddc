"""URLs as reprs, reports and logs may show them: without the credentials of their userinfo.

A proxy URL (``http://user:pass@proxy:3128``), a Redis URL (``redis://:pass@host/0``) or an endpoint
may carry a password; the API key is never shown anywhere, and neither are these.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["redacted_url"]


def redacted_url(url: str) -> str:
    """``url`` with its password as ``***`` (``redis://user:***@host:6379/0``); a user name given
    alone, which may be a token, becomes ``***`` too. Anything unparsable is shown as ``***``."""
    try:
        parts = urlsplit(url)
        if parts.username is None and parts.password is None:
            return url
    except ValueError:  # a bad port or IPv6 literal: nothing of it can be trusted to be harmless
        return "***"
    host = parts.netloc.rpartition("@")[2]  # as written: brackets of an IPv6 host and the port kept
    userinfo = "***" if parts.password is None else f"{parts.username or ''}:***"
    return urlunsplit((parts.scheme, f"{userinfo}@{host}", parts.path, parts.query, parts.fragment))
