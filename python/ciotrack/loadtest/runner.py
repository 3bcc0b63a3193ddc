"""Start the target (emulator, fleet), build the tracker, run the driver, write the outputs, pick the exit code."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ciotrack.loadtest.driver import Driver
from ciotrack.loadtest.live import choose_display
from ciotrack.loadtest.report import EXIT, build_report, markdown_summary, outcome, text_summary, write_json

if TYPE_CHECKING:
    from ciotrack.loadtest.cli import _Plan
    from ciotrack.loadtest.fleet import FleetTarget

EMULATOR_SITE_ID = "loadtest-site"
EMULATOR_API_KEY = "loadtest-key"  # the emulator's own throwaway workspace, not a secret


def _say(message: str) -> None:
    print(f"ciotrack loadtest: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a cancelled CI job, ``timeout``, ``kill``) ends the run as Ctrl-C does: a report, the
    emulator and a fleet's workers and redis-server stopped, exit 105. Python's default would kill
    the process on the spot and leave those subprocesses running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def run_plan(plan: _Plan) -> int:
    with _sigterm_interrupts():
        return _run_plan(plan)


def _run_plan(plan: _Plan) -> int:
    import ciotrack

    args = plan.args
    target = plan.target
    receiver = target.get("receiver", target)  # the fleet's workers send where the tracker would
    emulator: Any = None
    fleet: FleetTarget | None = None
    options: dict[str, Any] = {
        "senders": plan.senders,
        "rate_limit": args.rate_limit,
        "max_queue_bytes": args.max_queue_mb << 20,
        # The byte bound is the one that matters for a backlog; the op bound must not bind first.
        "max_queue_ops": max(1_000_000, (args.max_queue_mb << 20) // 200),
        "handle_sigterm": False,
    }
    if plan.adaptive:
        del options["senders"]
    if receiver["kind"] == "emulator":
        try:
            from ciotrack.emulator import Emulator

            emulator = Emulator.spawn(workspaces={EMULATOR_SITE_ID: EMULATOR_API_KEY},
                                      rate_limit=args.rate_limit or None,
                                      burst=receiver["burst"] if args.rate_limit else None, faults=receiver["faults"])
        except Exception as err:
            _say(f"could not start the emulator: {err}")
            return EXIT["target_failed"]
        receiver["url"] = emulator.url
    if target["kind"] == "fleet":
        fleet = _start_fleet(plan, emulator)
        if fleet is None:
            if emulator is not None:
                emulator.stop()
            return EXIT["target_failed"]
        from ciotrack.fleet.producer import RedisStreams

        target.update(fleet.describe())
        # The run's own key prefix: the destination is built here (Tracker(redis_url=...) alone would
        # use the default one); rate_limit 0 because the workers pace the requests, as redis_url implies.
        streams = RedisStreams(fleet.redis_url, fleet.site_id, prefix=fleet.prefix)
        try:
            tracker = ciotrack.Tracker(fleet.site_id, "", redis_url=fleet.redis_url, destination=streams,
                                       **{**options, "rate_limit": 0})
        except BaseException:
            fleet.stop()
            if emulator is not None:
                emulator.stop()
            raise
    elif target["kind"] == "emulator":
        tracker = ciotrack.Tracker(EMULATOR_SITE_ID, EMULATOR_API_KEY, endpoint=emulator.url, **options)
    elif target["kind"] == "none":
        # A disabled tracker keeps a small queue; dropping the oldest stays on the native fast path
        # (dropping the newest would take the Python slow path on every call once it is full).
        tracker = ciotrack.Tracker(disabled=True, **{**options, "on_full": "drop_oldest"})
    elif target["kind"] == "real":
        tracker = ciotrack.Tracker(target["site_id"], target["api_key"], region=target["region"],
                                   endpoint=target.get("endpoint"), **options)
    else:
        tracker = ciotrack.Tracker(target["site_id"], target["api_key"], endpoint=target["endpoint"], **options)
    config = plan.config_block()
    try:
        return _run(plan, tracker, emulator, config, fleet)
    finally:
        tracker.close(timeout=1.0)
        if fleet is not None:
            fleet.stop()
        if emulator is not None:
            emulator.stop()


def _start_fleet(plan: _Plan, emulator: Any) -> FleetTarget | None:
    """Redis, the group and the workers, in front of the emulator or ``--endpoint``; None (and a message
    on stderr) when that fails."""
    from ciotrack.fleet.settings import DEFAULT_BURST, DEFAULT_RATE_LIMIT
    from ciotrack.loadtest.fleet import FleetStartError, FleetTarget

    args = plan.args
    receiver = plan.target["receiver"]
    if emulator is not None:
        site_id, api_key, endpoint = EMULATOR_SITE_ID, EMULATOR_API_KEY, emulator.url
    else:
        site_id, api_key, endpoint = receiver["site_id"], receiver["api_key"], receiver["endpoint"]
    # The workers pace as `ciotrack worker` does by default (a few % under the workspace limit, a small
    # burst: see fleet/settings.py), scaled to the limit the run holds.
    rate_limit = args.rate_limit * DEFAULT_RATE_LIMIT / 100.0
    fleet = FleetTarget(redis_url=args.redis_url, workers=plan.target["workers"], site_id=site_id, api_key=api_key,
                        endpoint=endpoint, rate_limit=rate_limit, burst=DEFAULT_BURST,
                        receiver_stats=emulator.stats if emulator is not None else None)
    try:
        fleet.start()
    except FleetStartError as err:
        _say(str(err))
        fleet.stop()
        return None
    except BaseException:  # Ctrl-C while starting, or a bug: no worker may outlive the run
        fleet.stop()
        raise
    return fleet


def _run(plan: _Plan, tracker: Any, emulator: Any, config: Mapping[str, Any], fleet: FleetTarget | None) -> int:
    args = plan.args
    target_stats: Callable[[], Mapping[str, Any]] | None = emulator.stats if emulator is not None else None
    duration = max(s.schedule().duration for s in plan.scenarios)
    peak = sum(s.schedule().peak_rate for s in plan.scenarios)
    ceiling = f", ceiling {plan.ceiling:,.0f} events/s" if plan.ceiling else ""
    print(f"ciotrack loadtest: {plan.description}\n  target: {config['target']['description']}; "
          f"{plan.concurrency_text()} ({plan.senders_note}){ceiling}\n"
          f"  {duration:.0f} s of load, peak {peak:,.0f} calls/s; thresholds: "
          + (", ".join(t.source for t in plan.thresholds) or "none"), flush=True)
    display = choose_display("loadtest", duration, plain=args.plain, every=args.print_every)
    driver = Driver(tracker, plan.scenarios, plan.thresholds, display, target_stats=target_stats,
                    max_lateness=plan.max_lateness, drain_timeout=plan.drain_timeout,
                    measure_delivery=plan.target["kind"] != "none", fleet=fleet)
    try:
        result = driver.run()
    finally:
        display.close()
    if fleet is not None:
        # The stream is drained (or the drain deadline passed): SIGTERM, the workers finish and exit 0.
        result.totals["workers_exit_codes"] = fleet.stop()
        if args.redis_url:
            result.totals["redis_keys_left"] = fleet.keys_left
    status, messages = outcome(result, allow_dropped=args.allow_dropped)
    if fleet is not None and fleet.failed_logs:
        messages.append(f"worker(s) {sorted(fleet.failed_logs)} did not exit 0 after SIGTERM "
                        f"(exit codes {fleet.exit_codes})")
        for n, log in fleet.failed_logs.items():
            _say(f"worker {n}'s log (end):\n{log}")
    report = build_report(result, config, status, messages)
    print()
    print(text_summary(report), flush=True)
    if args.report:
        write_json(report, args.report)
    if args.summary_md:
        with open(args.summary_md, "a", encoding="utf-8") as handle:
            handle.write(markdown_summary(report) + "\n")
    if args.plot:
        from ciotrack.loadtest.plot import write_plot

        write_plot(report, args.plot)
    return EXIT[status]
