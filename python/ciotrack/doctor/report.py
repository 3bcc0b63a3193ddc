"""The doctor's report: checks with a status, what was found and what to do, plus recommended settings.

The JSON form is versioned (``schema`` = :data:`SCHEMA_ID`); :data:`SCHEMA` is its JSON Schema, so a
CI step can validate a report before it reads it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ciotrack._version import __version__

__all__ = ["SCHEMA", "SCHEMA_ID", "Check", "Report", "Status"]

Status = Literal["ok", "warn", "fail"]
SCHEMA_ID = "ciotrack.doctor/1"
_MARKS = {"ok": "✓", "warn": "⚠", "fail": "✗"}


@dataclass(frozen=True, slots=True)
class Check:
    """One finding. ``advice`` is empty when there is nothing to do."""

    name: str
    status: Status
    detail: str
    advice: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "advice": self.advice}


@dataclass(slots=True)
class Report:
    target: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    recommended: dict[str, Any] = field(default_factory=dict)
    """Settings (Tracker option -> value) with a reason each, in ``reasons``."""
    reasons: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, status: Status, detail: str, advice: str = "") -> Check:
        check = Check(name, status, detail, advice)
        self.checks.append(check)
        return check

    def recommend(self, option: str, value: Any, why: str) -> None:
        self.recommended[option] = value
        self.reasons[option] = why

    def failed(self, *, strict: bool = False) -> bool:
        return any(c.status == "fail" or (strict and c.status == "warn") for c in self.checks)

    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "warn": 0, "fail": 0}
        for check in self.checks:
            out[check.status] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_ID,
            "ciotrack": __version__,
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "target": self.target,
            "checks": [c.as_dict() for c in self.checks],
            "recommended": {k: {"value": v, "why": self.reasons.get(k, "")} for k, v in self.recommended.items()},
            "summary": self.counts(),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, default=str) + "\n"

    def render(self) -> str:
        """The text report: one line per check, the advice indented below it, then the settings."""
        width = max((len(c.name) for c in self.checks), default=10)
        lines = [f"ciotrack doctor {__version__}: {_describe(self.target)}", ""]
        for check in self.checks:
            lines.append(f"{_MARKS[check.status]} {check.name:<{width}}  {check.detail}")
            if check.advice:
                lines.append(f"  {'':<{width}}  -> {check.advice}")
        counts = self.counts()
        lines += ["", f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failed", ""]
        lines.append("Recommended configuration")
        if not self.recommended:
            lines.append("  (nothing to change)")
        for option, value in self.recommended.items():
            lines.append(f"  {option} = {value!r}".ljust(40) + f"# {self.reasons.get(option, '')}")
        return "\n".join(lines) + "\n"


def _describe(target: Mapping[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in target.items() if v not in (None, "")]
    return ", ".join(parts)


_CHECK_SCHEMA = {
    "type": "object",
    "required": ["name", "status", "detail", "advice"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "status": {"enum": ["ok", "warn", "fail"]},
        "detail": {"type": "string"},
        "advice": {"type": "string"},
    },
    "additionalProperties": False,
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "ciotrack doctor report",
    "type": "object",
    "required": ["schema", "ciotrack", "generated_at", "target", "checks", "recommended", "summary"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "ciotrack": {"type": "string"},
        "generated_at": {"type": "string"},
        "target": {"type": "object"},
        "checks": {"type": "array", "items": _CHECK_SCHEMA, "minItems": 1},
        "recommended": {
            "type": "object",
            "additionalProperties": {
                "type": "object", "required": ["value", "why"],
                "properties": {"why": {"type": "string"}},
            },
        },
        "summary": {
            "type": "object",
            "required": ["ok", "warn", "fail"],
            "properties": {k: {"type": "integer", "minimum": 0} for k in ("ok", "warn", "fail")},
        },
    },
    "additionalProperties": False,
}
