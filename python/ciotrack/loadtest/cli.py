"""``ciotrack loadtest``: k6-style ramping load through the real client, against the built-in emulator
(default), any receiver (``--endpoint``), or a real workspace (only with ``--real``); with ``--redis-url``
or ``--workers`` through a local fleet (:mod:`ciotrack.loadtest.fleet`) in front of the emulator or
``--endpoint``.

Exit codes are listed in :mod:`ciotrack.loadtest.report` (99: a threshold failed; 104: invalid
configuration, including a refused target).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import os
import sys
import traceback
from typing import Any
from urllib.parse import urlsplit

import hdrh.histogram  # noqa: F401  (the ``loadtest`` extra: a missing one gets the CLI's install hint)

from ciotrack.config import Config
from ciotrack.errors import ConfigError
from ciotrack.loadtest.presets import PRESETS, build_preset
from ciotrack.loadtest.report import EXIT
from ciotrack.loadtest.scenario import CallLoop, Scenario, load_scenarios
from ciotrack.loadtest.stages import Stage, parse_duration, parse_stage
from ciotrack.loadtest.thresholds import Threshold, parse_threshold
from ciotrack.redact import redacted_url

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


EPILOG = """exit codes: 0 passed; 99 a threshold failed (or an :abort threshold stopped the run); 100 the target
could not start; 101 events lost; 102 the generator fell behind (dropped_iterations > 0, see --allow-dropped);
104 invalid configuration or a refused target; 105 interrupted; 107 internal error.

metrics for --threshold: enqueue_duration, delivery_duration, request_duration, schedule_lateness (ms:
avg, min, med, max, p(N)); errors, http_req_failed (rate); http_429, retries, dropped_iterations, lost,
calls, delivered (count, rate per second); backlog, achieved_rate, cpu (value, max, min)."""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    shape = parser.add_argument_group("load shape (an open model: calls start on schedule whatever the system does)")
    shape.add_argument("--stage", action="append", default=[], metavar="DURATION:TARGET",
                       help="ramp linearly to TARGET calls/s over DURATION (30s:5000; 0s:100 jumps); repeatable")
    shape.add_argument("--start-rate", type=float, default=0.0, help="calls/s at time 0 (k6 startRate; default 0)")
    shape.add_argument("--scenario", metavar="FILE.toml", help="TOML scenarios (several, concurrent; see docs)")
    shape.add_argument("--preset", choices=PRESETS,
                       help="guide: the guidance's k6 test; peak: 1.5x the ceiling and back")
    shape.add_argument("--duration-scale", type=float, default=1.0, help="multiply every stage's duration (e.g. 0.2)")
    shape.add_argument("--mix", default="track=1", help="call mix for --stage, e.g. track=7,identify=2,page=1")
    shape.add_argument("--payload-bytes", type=int, default=200, help="approximate JSON size of each call's data")
    shape.add_argument("--customers", type=int, default=10_000, help="distinct customer ids")
    shape.add_argument("--dedup-share", type=float, default=0.0, help="share of calls repeating an identify")
    shape.add_argument("--max-lateness", default="1s",
                       help="a call later than this is not run but counted in dropped_iterations (default 1s)")

    target = parser.add_argument_group("target (default: the built-in emulator, in a subprocess)")
    target.add_argument("--endpoint", help="any Track API receiver (base URL); credentials from --site-id/--api-key "
                                           "or CIOTRACK_SITE_ID/CIOTRACK_API_KEY")
    target.add_argument("--site-id", help="workspace site id (for --endpoint or --real)")
    target.add_argument("--api-key", help="workspace Track API key (for --endpoint or --real)")
    target.add_argument("--real", action="store_true", help="allow a real Customer.io workspace (needs credentials)")
    target.add_argument("--region", choices=("us", "eu"), default="us", help="region of a real workspace")
    target.add_argument("--redis-url", help="fleet target: calls go to a Redis stream here, and local workers "
                                            "deliver it (default: a throwaway local redis-server)")
    target.add_argument("--workers", type=int, help="fleet target: local `ciotrack worker` processes to start "
                                                    "(default 2 with --redis-url)")
    target.add_argument("--no-send", action="store_true",
                        help="no target: a disabled tracker (measures the generator and the call only)")

    emulator = parser.add_argument_group("emulator (resembles Customer.io by default)")
    emulator.add_argument("--latency-profile", default="customerio", choices=("customerio", "none"),
                          help="customerio: lognormal, median 80 ms, p99 300 ms (default)")
    emulator.add_argument("--latency-ms", type=float, help="median latency (fixed unless --latency-p99-ms)")
    emulator.add_argument("--latency-p99-ms", type=float, help="p99 latency: lognormal with --latency-ms as median")
    emulator.add_argument("--emulator-burst", type=float,
                          help="the emulator's token bucket (default: 0.2 s of requests, 20 at 100/s; Customer.io "
                               "documents none; 10 is the strict receiver of issue 11)")

    client = parser.add_argument_group("client")
    client.add_argument("--rate-limit", type=float, default=100.0,
                        help="the workspace limit the client holds, requests/s "
                             "(default 100; the emulator enforces it too)")
    client.add_argument("--senders", type=int,
                        help="pin the requests in flight per region to N, 1..64 (default: the tracker's adaptive "
                             "concurrency, up to its max_in_flight)")
    client.add_argument("--expected-latency-ms", type=float, default=100.0,
                        help="request latency assumed with --endpoint/--real for the report's Little's-law estimate "
                             "of the concurrency needed, ceil(rate x latency x 1.3) + 1; it sets no concurrency "
                             "(default 100)")
    client.add_argument("--max-queue-mb", type=int, default=1024,
                        help="the tracker's queue bound (default 1024 MB: at 1.5x the ceiling the backlog grows "
                             "by ~25 MB/s)")
    client.add_argument("--drain-timeout", default="60s",
                        help="longest wait for the backlog after the load ends (then up to 5 s more for the "
                             "tracker's close)")

    out = parser.add_argument_group("thresholds and outputs")
    out.add_argument("--threshold", action="append", default=[], metavar="METRIC:EXPR[:abort[@DELAY]]",
                     help="k6 expression, e.g. 'delivery_duration:p(95)<500', 'errors:rate<0.01:abort'; repeatable")
    out.add_argument("--no-preset-thresholds", action="store_true", help="drop the preset's own thresholds")
    out.add_argument("--allow-dropped", action="store_true",
                     help="do not fail (exit 102) when the generator fell behind")
    out.add_argument("--report", metavar="FILE.json",
                     help="write the JSON report (schema: loadtest/report.schema.json)")
    out.add_argument("--plot", metavar="FILE.png", help="write a PNG plot (needs the plot extra: matplotlib)")
    out.add_argument("--summary-md", metavar="FILE", help="append a Markdown summary (e.g. $GITHUB_STEP_SUMMARY)")
    out.add_argument("--plain", action="store_true", help="plain progress lines even on a terminal")
    out.add_argument("--print-every", type=int, default=1, help="plain progress: one line every N seconds")
    try:
        blast = importlib.import_module("ciotrack.webhooks.blast")  # webhook load, when that module is there
    except ImportError:
        pass
    else:
        blast.add_arguments(parser)


def recommended_senders(rate_limit: float, latency_s: float) -> int:
    """Senders that keep ``rate_limit`` requests/s in flight at ``latency_s`` per request (Little's
    law, 30 % headroom, + 1), capped at 64 (the tracker's maximum)."""
    if rate_limit <= 0:
        return 4
    return max(1, min(64, math.ceil(rate_limit * latency_s * 1.3) + 1))


def _error(message: str, code: str = "invalid_config") -> int:
    print(f"ciotrack loadtest: {message}", file=sys.stderr)
    return EXIT[code]


def run(args: argparse.Namespace) -> int:
    if getattr(args, "webhooks", None):
        blast = importlib.import_module("ciotrack.webhooks.blast")
        result: int = blast.run(args)
        return result
    try:
        plan = _Plan(args)
    except ConfigError as err:
        return _error(str(err))
    if plan.target["kind"] == "fleet":
        try:
            fleet = importlib.import_module("ciotrack.fleet")
            fleet.require_extra("redis", "prometheus_client")
        except ImportError:
            return _error("the fleet target (--redis-url/--workers) needs the fleet module and its extra: "
                          "pip install 'ciotrack[fleet]'", "target_failed")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return _error("--plot needs matplotlib: pip install 'ciotrack[plot]'")
    unwritable = _unwritable_output(args)
    if unwritable:
        return _error(unwritable)
    try:
        return plan.execute()
    except ConfigError as err:
        return _error(str(err))
    except KeyboardInterrupt:
        return _error("interrupted", "interrupted")
    except Exception:  # the exit code says "our bug", the traceback says where
        traceback.print_exc()
        return _error("internal error (traceback above)", "internal_error")


def _unwritable_output(args: argparse.Namespace) -> str | None:
    """Why an output file could not be written, found before the run rather than after it."""
    for option, path in (("--report", args.report), ("--plot", args.plot), ("--summary-md", args.summary_md)):
        if not path:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            return f"{option} {path}: no such directory {folder}"
        if os.path.isdir(path) or not os.access(path if os.path.exists(path) else folder, os.W_OK):
            return f"{option} {path}: not a writable file"
    return None


def _mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, weight = part.partition("=")
        try:
            mix[name.strip()] = float(weight) if sep else 1.0
        except ValueError:
            raise ConfigError(f"--mix {text!r}: weight {weight!r} is not a number") from None
    return mix


def _scaled(scenario: Scenario, scale: float) -> Scenario:
    if scale == 1.0:
        return scenario
    stages = tuple(Stage(s.duration * scale, s.target) for s in scenario.stages)
    return Scenario(name=scenario.name, stages=stages, start_rate=scenario.start_rate, mix=scenario.mix,
                    payload_bytes=scenario.payload_bytes, customers=scenario.customers,
                    dedup_share=scenario.dedup_share, event_name=scenario.event_name)


def operation_bytes(scenario: Scenario) -> float:
    """Mean encoded size of this scenario's operations, measured on the real encoder (a disabled
    tracker queues them without sending)."""
    import ciotrack

    tracker = ciotrack.Tracker(disabled=True, handle_sigterm=False)
    try:
        loop = CallLoop(scenario, tracker, scenario.schedule(), sample_every=1 << 30, accepted_count=lambda: 0)
        loop.issue(1, 512)
        gauges = tracker.stats().gauges
        ops = float(gauges.get("lane0_ops", 0))
        return float(gauges.get("lane0_bytes", 0)) / ops if ops else 300.0
    finally:
        tracker.close(timeout=0.1)


def is_customer_io(host: str) -> bool:
    """``host`` (as ``urlsplit`` gives it) is one of Customer.io's. Compared as DNS does: without case
    or the root's trailing dot, so ``Track.Customer.IO.`` cannot slip past the --real guard."""
    name = host.lower().rstrip(".")
    return name == "customer.io" or name.endswith(".customer.io")


class _Plan:
    """The parsed, validated configuration of one run (every ConfigError is raised here or early
    in ``execute``, before anything starts)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.max_lateness = parse_duration(args.max_lateness)
        self.drain_timeout = parse_duration(args.drain_timeout)
        if not (math.isfinite(args.duration_scale) and args.duration_scale > 0):
            raise ConfigError("--duration-scale must be a finite number > 0")
        if not (math.isfinite(args.rate_limit) and args.rate_limit >= 0):
            raise ConfigError("--rate-limit must be a finite number >= 0")
        if not (math.isfinite(args.expected_latency_ms) and args.expected_latency_ms >= 0):
            raise ConfigError("--expected-latency-ms must be a finite number >= 0")
        if args.senders is not None and not 1 <= args.senders <= 64:
            raise ConfigError("--senders must be 1..64")
        self.thresholds: list[Threshold] = [parse_threshold(t) for t in args.threshold]
        self.target = self._target()
        self.preset: str | None = args.preset
        sources = [bool(args.stage), bool(args.scenario), bool(args.preset)]
        if sum(sources) > 1:
            raise ConfigError("choose one of --stage, --scenario and --preset")
        self.ops_bytes: float | None = None
        if args.preset:
            preset = build_preset(args.preset, duration_scale=args.duration_scale, ceiling_for=self._ceiling_for)
            self.scenarios = preset.scenarios
            self.description = preset.description
            if not args.no_preset_thresholds:
                self.thresholds = [parse_threshold(t) for t in preset.thresholds] + self.thresholds
        elif args.scenario:
            self.scenarios = [_scaled(s, args.duration_scale) for s in load_scenarios(args.scenario)]
            self.description = f"scenarios from {args.scenario}"
        elif args.stage:
            stages = tuple(parse_stage(s) for s in args.stage)
            self.scenarios = [_scaled(Scenario(name="default", stages=stages, start_rate=args.start_rate,
                                               mix=_mix(args.mix), payload_bytes=args.payload_bytes,
                                               customers=args.customers, dedup_share=args.dedup_share),
                                      args.duration_scale)]
            self.description = "stages " + " ".join(args.stage)
        else:
            raise ConfigError("no load shape: give --stage DURATION:TARGET (repeatable), --scenario FILE or --preset")
        if all(s.schedule().total < 1.0 - 1e-9 for s in self.scenarios):
            raise ConfigError(f"no call is due in {self.description} (a 0s stage only jumps to its target; "
                              "hold a rate with a stage that lasts, e.g. --stage 0s:100 --stage 30s:100)")
        if self.ops_bytes is None:
            self.ops_bytes = operation_bytes(self.scenarios[0])
        self.ops_per_batch = math.floor(500_000 / (self.ops_bytes + 1))
        self.ceiling = args.rate_limit * self.ops_per_batch if args.rate_limit else None
        self.latency_s, latency_source = self._latency()
        if args.senders is not None:
            self.senders = args.senders
            self.senders_note = "--senders"
        else:
            self.senders = recommended_senders(args.rate_limit, self.latency_s)
            self.senders_note = (f"auto: ceil({args.rate_limit:g}/s x {self.latency_s * 1000:.0f} ms x 1.3) + 1, "
                                 f"the latency being {latency_source}")
        # Once the tracker sizes its own concurrency (issue 11: ``max_in_flight`` caps an adaptive
        # limit, ``senders`` becomes a fixed override), the load test must not pin it.
        self.adaptive = args.senders is None and "max_in_flight" in {f.name for f in dataclasses.fields(Config)}
        if self.adaptive:
            self.senders_note = f"the tracker's adaptive concurrency (Little's law would give {self.senders})"

    def _ceiling_for(self, scenario: Scenario) -> float:
        self.ops_bytes = operation_bytes(scenario)
        return float(self.args.rate_limit or 100.0) * math.floor(500_000 / (self.ops_bytes + 1))

    def _target(self) -> dict[str, Any]:
        args = self.args
        if args.no_send:
            if args.redis_url or args.workers is not None:
                raise ConfigError("--no-send cannot be combined with the fleet target (--redis-url/--workers)")
            return {"kind": "none", "description": "disabled tracker: nothing is sent"}
        if args.redis_url or args.workers is not None:
            return self._fleet_target()
        return self._receiver()

    def _fleet_target(self) -> dict[str, Any]:
        args = self.args
        if args.real:
            raise ConfigError("the fleet target with --real is not supported: load-test a real workspace's "
                              "fleet with your own workers and the tracker's redis_url")
        workers = 2 if args.workers is None else args.workers
        if not 1 <= workers <= 32:
            raise ConfigError("--workers must be 1..32")
        if args.redis_url and not args.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("--redis-url must be a redis://, rediss:// or unix:// URL")
        receiver = self._receiver()
        redis = redacted_url(args.redis_url) if args.redis_url else "a throwaway local redis-server"
        return {"kind": "fleet", "workers": workers, "receiver": receiver,
                "description": f"{workers} local worker(s) via {redis} -> {receiver['description']}"}

    def _receiver(self) -> dict[str, Any]:
        """Where requests go: a real workspace, ``--endpoint``, or the spawned emulator."""
        args = self.args
        site_id = args.site_id or os.environ.get("CIOTRACK_SITE_ID")
        api_key = args.api_key or os.environ.get("CIOTRACK_API_KEY")
        if args.real:
            if not (site_id and api_key):
                raise ConfigError("--real needs the workspace's credentials: --site-id and --api-key "
                                  "(or CIOTRACK_SITE_ID and CIOTRACK_API_KEY); refusing to start")
            return {"kind": "real", "endpoint": args.endpoint, "region": args.region, "site_id": site_id,
                    "api_key": api_key, "description": f"Customer.io workspace {site_id} ({args.region})"}
        if args.endpoint:
            host = (urlsplit(args.endpoint).hostname or "").lower()
            if is_customer_io(host):
                raise ConfigError(f"--endpoint {args.endpoint} is a real Customer.io host: refusing to load-test a "
                                  "real workspace without --real")
            if not (site_id and api_key):
                raise ConfigError("--endpoint needs credentials: --site-id and --api-key "
                                  "(or CIOTRACK_SITE_ID and CIOTRACK_API_KEY)")
            return {"kind": "endpoint", "endpoint": args.endpoint, "site_id": site_id, "api_key": api_key,
                    "description": args.endpoint if host in _LOOPBACK else f"receiver at {host}"}
        faults: dict[str, Any] = {}
        if args.latency_ms is not None:
            faults["latency_ms"] = args.latency_ms
            if args.latency_p99_ms is not None:
                faults["latency_p99_ms"] = args.latency_p99_ms
        elif args.latency_profile != "none":
            faults["latency_profile"] = args.latency_profile
        # Customer.io documents no burst and calls its limit "not strictly enforced". The emulator's
        # bucket holds 0.2 s of requests: it takes a token when a request arrives, and on a shared,
        # CPU-starved machine the emulator process itself can stall long enough to see a client's
        # well-paced requests arrive bunched; 0.2 s of slack keeps that from turning into 429s.
        burst = args.emulator_burst if args.emulator_burst is not None else max(10.0, args.rate_limit * 0.2)
        return {"kind": "emulator", "faults": faults, "burst": burst,
                "description": f"built-in emulator, {args.rate_limit:g} requests/s (burst {burst:g})"}

    def _latency(self) -> tuple[float, str]:
        """Mean request latency (seconds) for the senders default, and where it comes from."""
        faults = self.target.get("faults")
        if self.target["kind"] != "emulator" or faults is None:
            return self.args.expected_latency_ms / 1000.0, "--expected-latency-ms"
        from ciotrack.emulator.faults import Faults

        try:
            parsed = Faults.from_settings(dict(faults))
        except ValueError as err:  # --latency-ms/--latency-p99-ms the emulator refuses
            raise ConfigError(f"emulator latency: {err}") from None
        if parsed.latency_p99 > parsed.latency > 0:
            sigma = math.log(parsed.latency_p99 / parsed.latency) / 2.3263478740408408
            return parsed.latency * math.exp(sigma * sigma / 2.0), "the mean of the emulator's lognormal profile"
        return max(parsed.latency, 0.001), "the emulator's fixed latency"

    def concurrency_text(self) -> str:
        if self.adaptive:
            cap = next((f.default for f in dataclasses.fields(Config) if f.name == "max_in_flight"), None)
            return f"adaptive (max_in_flight {cap})"
        return f"{self.senders} senders"

    def config_block(self) -> dict[str, Any]:
        target = {k: v for k, v in self.target.items() if k not in ("api_key",)}
        if "receiver" in target:
            target["receiver"] = {k: v for k, v in target["receiver"].items() if k not in ("api_key",)}
        return {
            "target": target,
            "preset": self.preset,
            "description": self.description,
            "rate_limit": self.args.rate_limit,
            # None: the tracker's adaptive concurrency (capped by max_in_flight) chose it at run time.
            "senders": None if self.adaptive else self.senders,
            "senders_note": self.senders_note,
            "concurrency": self.concurrency_text(),
            "operation_bytes": round(self.ops_bytes or 0.0, 1),
            "ops_per_batch_estimate": self.ops_per_batch,
            "ceiling_events_per_s": self.ceiling,
            "duration_scale": self.args.duration_scale,
            "max_lateness_s": self.max_lateness,
            "drain_timeout_s": self.drain_timeout,
            "max_queue_bytes": self.args.max_queue_mb << 20,
            "thresholds": [t.source for t in self.thresholds],
            "scenarios": [{"name": s.name,
                           "stages": [{"duration_s": st.duration, "target": st.target} for st in s.stages],
                           "start_rate": s.start_rate, "mix": dict(s.mix), "payload_bytes": s.payload_bytes,
                           "customers": s.customers, "dedup_share": s.dedup_share} for s in self.scenarios],
        }

    def execute(self) -> int:
        from ciotrack.loadtest.runner import run_plan

        return run_plan(self)
