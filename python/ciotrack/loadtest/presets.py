"""Named load shapes: ``--preset guide`` and ``--preset peak``.

``guide`` reproduces the load-scale guidance's k6 test so its numbers can be compared with ours:
two scenarios, identify and track, each ramping 10 -> 50 -> 100 -> 100 -> 0 calls/s, with its
thresholds (``errors rate<0.01``, ``p(95)<500`` ms; the guidance's p95 is per request, so it is
checked on ``request_duration`` and, the number a caller of a batching client lives with, on
``delivery_duration``). The guidance gives the targets, not the stage lengths: ours are 30 s per
step (1 min at the 100/s hold).

``peak`` ramps the offered event rate to 1.5x the workspace ceiling (rate limit x operations per
~500 KB batch) and back, so the client holds the limit (zero 429s) while a backlog builds, then
drains it. Its calls carry ~2 KB of data: the ceiling in bytes is the same whatever the payload
(rate limit x 500 KB = 50 MB/s at 100 requests/s), and 2 KB operations keep the ceiling (~23k
events/s) within what one Python generator thread and the emulator reach on two cores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ciotrack.errors import ConfigError
from ciotrack.loadtest.scenario import Scenario
from ciotrack.loadtest.stages import Stage

__all__ = ["PRESETS", "Preset", "build_preset"]

PRESETS = ("guide", "peak")
PEAK_PAYLOAD_BYTES = 8000
# (seconds, fraction of the ceiling) at --duration-scale 1: about 40 s of load, then the drain. The
# time above the ceiling is short on purpose: the backlog grows by ~25 MB per second spent at 1.5x.
_PEAK_SHAPE = ((8.0, 0.5), (7.0, 1.0), (4.0, 1.5), (3.0, 1.5), (4.0, 1.0), (10.0, 0.5), (5.0, 0.0))
CeilingFn = Callable[[Scenario], float]
_GUIDE_SHAPE = ((30.0, 10.0), (30.0, 50.0), (30.0, 100.0), (60.0, 100.0), (30.0, 0.0))


@dataclass(frozen=True)
class Preset:
    name: str
    scenarios: list[Scenario]
    thresholds: list[str]
    description: str


def build_preset(name: str, *, duration_scale: float, ceiling_for: CeilingFn) -> Preset:
    """``ceiling_for(scenario)`` -> events/s the workspace limit allows for that call shape."""
    if duration_scale <= 0:
        raise ConfigError("--duration-scale must be > 0")
    if name == "guide":
        stages = tuple(Stage(d * duration_scale, rate) for d, rate in _GUIDE_SHAPE)
        scenarios = [Scenario(name="identify", stages=stages, mix={"identify": 1.0}),
                     Scenario(name="track", stages=stages, mix={"track": 1.0})]
        return Preset("guide", scenarios,
                      ["errors:rate<0.01", "request_duration:p(95)<500", "delivery_duration:p(95)<500"],
                      "the load-scale guidance's k6 test: identify + track, 10 -> 50 -> 100 -> 100 -> 0 calls/s each")
    if name == "peak":
        probe = Scenario(name="peak", stages=(Stage(1.0, 1.0),), mix={"track": 8.0, "identify": 1.0, "page": 1.0},
                         payload_bytes=PEAK_PAYLOAD_BYTES, customers=50_000)
        ceiling = ceiling_for(probe)
        stages = tuple(Stage(d * duration_scale, round(f * ceiling)) for d, f in _PEAK_SHAPE)
        scenario = Scenario(name="peak", stages=stages, mix=probe.mix, payload_bytes=probe.payload_bytes,
                            customers=probe.customers)
        return Preset("peak", [scenario], ["errors:rate<0.01", "http_429:count==0", "lost:count==0"],
                      f"ramp to 1.5x the workspace ceiling ({ceiling:,.0f} events/s) and back; the limit binds, "
                      "the backlog drains")
    raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")

