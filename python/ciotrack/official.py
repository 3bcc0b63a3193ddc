"""Names the official ``customerio`` package exports and both drop-ins share (the track client in
:mod:`ciotrack.compat`, the App API client in :mod:`ciotrack.app_api`), so neither imports the other."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["CustomerIOException", "Region", "Regions"]


class CustomerIOException(Exception):
    """A call was refused before anything was queued (the official client's exception, same name)."""


class Region(NamedTuple):
    name: str
    track_host: str
    api_host: str


class Regions:
    US = Region("us", "track.customer.io", "api.customer.io")
    EU = Region("eu", "track-eu.customer.io", "api-eu.customer.io")
