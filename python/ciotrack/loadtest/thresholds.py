"""k6-style thresholds: ``--threshold 'METRIC:EXPR[:abort[@DELAY]]'``.

``EXPR`` is k6's ``<aggregation> <operator> <value>``: ``p(95)<500``, ``rate<0.01``, ``count==0``,
``max<2000``, ``avg<=100``, ``med<50``, ``min>0``, ``value<1000``. Durations are in milliseconds.
Which aggregations a metric has depends on its kind (as in k6):

- trends (``enqueue_duration``, ``delivery_duration``, ``request_duration``, ``schedule_lateness``):
  ``avg``, ``min``, ``med``, ``max``, ``p(N)`` with 0 <= N <= 100;
- rates (``errors``, ``http_req_failed``): ``rate`` (a fraction, 0..1);
- counters (``http_429``, ``retries``, ``dropped_iterations``, ``lost``, ``calls``, ``delivered``):
  ``count``, and ``rate`` (per second of run time);
- gauges (``backlog``, ``achieved_rate``, ``cpu``): ``value`` (last), ``max``, ``min``.

``:abort`` is k6's ``abortOnFail``: the run stops as soon as the expression is false (evaluated once
per second on the totals so far); ``:abort@10s`` adds ``delayAbortEval`` (no abort in the first 10 s).
A run whose threshold failed exits 99; an expression that does not parse is a
:class:`~ciotrack.errors.ConfigError` naming it (the CLI exits 104, as k6 does for invalid config).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ciotrack.errors import ConfigError
from ciotrack.loadtest.stages import parse_duration

__all__ = ["METRIC_KINDS", "Threshold", "evaluate", "parse_threshold"]

METRIC_KINDS: Mapping[str, str] = {
    "enqueue_duration": "trend",
    "delivery_duration": "trend",
    "request_duration": "trend",
    "schedule_lateness": "trend",
    "errors": "rate",
    "http_req_failed": "rate",
    "http_429": "counter",
    "retries": "counter",
    "dropped_iterations": "counter",
    "lost": "counter",
    "calls": "counter",
    "delivered": "counter",
    "backlog": "gauge",
    "achieved_rate": "gauge",
    "cpu": "gauge",
}

_AGGREGATIONS: Mapping[str, tuple[str, ...]] = {
    "trend": ("avg", "min", "med", "max", "p"),
    "rate": ("rate",),
    "counter": ("count", "rate"),
    "gauge": ("value", "max", "min"),
}

_OPERATORS: Mapping[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
    "===": operator.eq, "!==": operator.ne, "<": operator.lt, ">": operator.gt,
}

_EXPR = re.compile(
    r"^\s*(?P<agg>p\(\s*(?P<pct>[0-9]+(?:\.[0-9]+)?)\s*\)|[a-z]+)\s*"
    r"(?P<op>===|!==|<=|>=|==|!=|<|>)\s*(?P<value>[-+]?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)\s*$"
)


@dataclass(frozen=True)
class Threshold:
    metric: str
    expr: str
    aggregation: str
    """``avg``, ``min``, ``med``, ``max``, ``rate``, ``count``, ``value`` or ``p(N)``."""
    percentile: float | None
    op: str
    limit: float
    abort_on_fail: bool = False
    delay_abort_eval: float = 0.0

    @property
    def source(self) -> str:
        """The text as given on the command line (minus spacing)."""
        tail = ""
        if self.abort_on_fail:
            tail = ":abort" + (f"@{self.delay_abort_eval:g}s" if self.delay_abort_eval else "")
        return f"{self.metric}:{self.expr}{tail}"

    def check(self, value: float | None) -> bool:
        """True when ``value`` satisfies the expression; no value (no samples) fails, as a
        threshold on a metric that never got a sample proves nothing."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return _OPERATORS[self.op](value, self.limit)


def parse_threshold(text: str) -> Threshold:
    """Parse ``METRIC:EXPR`` or ``METRIC:EXPR:abort`` / ``METRIC:EXPR:abort@10s``."""
    metric, sep, rest = text.partition(":")
    metric = metric.strip()
    if not sep or not rest.strip():
        raise ConfigError(f"threshold {text!r}: expected METRIC:EXPR, e.g. 'delivery_duration:p(95)<500'")
    if metric not in METRIC_KINDS:
        raise ConfigError(f"threshold {text!r}: unknown metric {metric!r} (known: {', '.join(sorted(METRIC_KINDS))})")
    expr, _, option = rest.partition(":")
    abort = False
    delay = 0.0
    option = option.strip()
    if option:
        name, _, delay_text = option.partition("@")
        if name != "abort":
            raise ConfigError(f"threshold {text!r}: unknown option {option!r} (only 'abort' or 'abort@DELAY')")
        abort = True
        if delay_text:
            delay = parse_duration(delay_text)
    match = _EXPR.match(expr)
    if match is None:
        raise ConfigError(f"threshold {text!r}: cannot parse expression {expr.strip()!r} "
                          "(want AGGREGATION OPERATOR NUMBER, e.g. p(95)<500, rate<0.01, count==0)")
    kind = METRIC_KINDS[metric]
    agg = match.group("agg").replace(" ", "")
    percentile: float | None = None
    if match.group("pct") is not None:
        percentile = float(match.group("pct"))
        if not 0.0 <= percentile <= 100.0:
            raise ConfigError(f"threshold {text!r}: percentile {percentile:g} is outside 0..100")
        base = "p"
    else:
        base = agg
        if base == "p":
            raise ConfigError(f"threshold {text!r}: write a percentile as p(N), e.g. p(95)")
    if base not in _AGGREGATIONS[kind]:
        allowed = ", ".join("p(N)" if a == "p" else a for a in _AGGREGATIONS[kind])
        raise ConfigError(f"threshold {text!r}: {metric} is a {kind}; its aggregations are {allowed}, not {agg!r}")
    return Threshold(metric=metric, expr=expr.strip().replace(" ", ""), aggregation=agg,
                     percentile=percentile, op=match.group("op"), limit=float(match.group("value")),
                     abort_on_fail=abort, delay_abort_eval=delay)


Lookup = Callable[[str, str, float | None], float | None]
"""``lookup(metric, aggregation, percentile)`` -> the observed value, or None without samples."""


def evaluate(thresholds: list[Threshold], lookup: Lookup) -> list[tuple[Threshold, bool, float | None]]:
    """Each threshold with whether it holds and the value it was checked against."""
    results = []
    for threshold in thresholds:
        value = lookup(threshold.metric, threshold.aggregation, threshold.percentile)
        results.append((threshold, threshold.check(value), value))
    return results
