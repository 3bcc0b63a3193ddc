"""Exit codes, the JSON report (versioned; its JSON Schema is ``report.schema.json`` beside this
module), the end-of-run text summary and the Markdown summary for a CI step summary.

Exit codes (k6's where k6 has one):

====  ====================================================================================
0     every threshold held, nothing lost, the generator kept up
99    a threshold failed (also when an ``:abort`` threshold stopped the run), as k6
100   the target could not be started or reached (emulator, fleet module missing)
101   events lost: accepted or queue-dropped calls that were never delivered
102   the generator fell behind (``dropped_iterations`` > 0) and ``--allow-dropped`` was not given
104   invalid configuration: a bad stage, threshold, scenario file, or a refused target, as k6
105   interrupted (SIGINT or SIGTERM), as k6's external abort
107   an unexpected error inside the load test
====  ====================================================================================
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ciotrack._version import __version__
from ciotrack.loadtest.driver import RunResult

__all__ = ["EXIT", "SCHEMA_PATH", "SCHEMA_VERSION", "build_report", "markdown_summary", "text_summary"]

SCHEMA_VERSION = "1.1.0"  # 1.1: the fleet target (config.target, stream_* per interval, workers' exit codes)
LATE_NOTE_MS = 250.0
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "report.schema.json")

EXIT: Mapping[str, int] = {
    "passed": 0,
    "thresholds_failed": 99,
    "aborted": 99,
    "target_failed": 100,
    "lost": 101,
    "generator_behind": 102,
    "invalid_config": 104,
    "interrupted": 105,
    "internal_error": 107,
}


def outcome(result: RunResult, *, allow_dropped: bool) -> tuple[str, list[str]]:
    """The run's status (a key of ``EXIT``) and the messages that explain it, worst first."""
    messages: list[str] = []
    totals = result.totals
    failed = [t for t in result.thresholds if not t["ok"]]
    status = "passed"
    if result.interrupted:
        status = "interrupted"
        messages.append("interrupted before the end of the load")
    elif result.aborted_by:
        status = "aborted"
        messages.append(f"aborted: threshold {result.aborted_by} failed")
    elif failed:
        status = "thresholds_failed"
    for t in failed:
        messages.append(f"threshold {t['metric']}:{t['expr']} failed (value {_fmt(t['value'])})")
    lost = totals.get("lost")
    if lost:
        messages.append(f"{lost:,} call(s) accepted or queue-dropped and never delivered")
        if status == "passed":
            status = "lost"
    dropped = totals["dropped_iterations"]
    if dropped:
        behind = dropped / max(1.0, float(totals["target_calls"]))
        messages.append(f"the generator fell behind: {dropped:,} calls not started ({behind:.2%} of the target), "
                        f"max lateness {totals['lateness_max_ms']:.0f} ms")
        if status == "passed" and not allow_dropped:
            status = "generator_behind"
    elif totals["lateness_max_ms"] > LATE_NOTE_MS:
        # Not a failure (every call ran within --max-lateness, as k6 would count it), but said.
        messages.append(f"the generator ran up to {totals['lateness_max_ms']:.0f} ms behind schedule "
                        "(no call dropped); delivery_duration is timed from the due times, so it includes that")
    if totals.get("http_429"):
        messages.append(f"{totals['http_429']:,} request(s) answered 429")
    failed_requests = {k: v for k, v in totals.get("requests", {}).items() if not k.startswith("2") and k != "429"}
    if failed_requests:
        listed = ", ".join(f"{n:,} x {status}" for status, n in sorted(failed_requests.items()))
        messages.append(f"the receiver failed requests ({listed}); {totals['retries']:,} retries")
    return status, messages


def build_report(result: RunResult, config: Mapping[str, Any], status: str, messages: Sequence[str]) -> dict[str, Any]:
    return {
        "schema": "ciotrack.loadtest.report",
        "schema_version": SCHEMA_VERSION,
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "ciotrack_version": __version__,
        "result": {"exit_code": EXIT[status], "status": status, "aborted_by": result.aborted_by,
                   "messages": list(messages)},
        "config": dict(config),
        "thresholds": result.thresholds,
        "intervals": result.intervals,
        "totals": result.totals,
        "delivery_sampling": result.delivery_sampling,
        "histograms": result.histograms,
    }


def write_json(report: Mapping[str, Any], path: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1)
        handle.write("\n")


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}{unit}" if abs(value) < 1000 else f"{value:,.0f}{unit}"
    return f"{value:,}{unit}" if isinstance(value, int) else f"{value}{unit}"


def _trend_line(name: str, trend: Mapping[str, Any], unit: str = "ms", scale: float = 1.0) -> str:
    if not trend.get("count"):
        return f"{name:<20} (no samples)"
    parts = [f"{k}={trend[k] * scale:.4g}{unit}" for k in ("avg", "min", "p50", "p95", "p99", "max")
             if trend.get(k) is not None]
    return f"{name:<20} " + " ".join(parts) + f" (n={trend['count']:,})"


def text_summary(report: Mapping[str, Any]) -> str:
    """The k6-style end-of-test block: thresholds with ✓/✗, then the totals."""
    totals = report["totals"]
    lines = []
    if report["thresholds"]:
        lines.append("█ THRESHOLDS")
        for t in report["thresholds"]:
            mark = "✓" if t["ok"] else "✗"
            lines.append(f"  {mark} {t['metric']}: '{t['expr']}' value={_fmt(t['value'])}")
        lines.append("")
    lines.append("█ TOTAL RESULTS")
    lines.append(f"  calls              {totals['calls']:,} of {totals['target_calls']:,.0f} due "
                 f"({totals['achieved_rate']:,.0f}/s over {totals['generator_seconds']:.1f} s), "
                 f"dropped_iterations={totals['dropped_iterations']:,}, "
                 f"max lateness {totals['lateness_max_ms']:.1f} ms")
    overrun = totals["generator_seconds"] - totals["schedule_seconds"]
    if overrun > 0.25:  # a burst takes a few ms: only a real lag is worth a line
        lines.append(f"  generator          made its last call {overrun:.2f} s after the schedule's end (it lagged)")
    lines.append(f"  delivered          {totals['delivered']:,} of {totals['accepted']:,} accepted, "
                 f"lost={_fmt(totals['lost'])}, "
                 f"failed={totals['failed']:,}, deduplicated={totals['deduplicated']:,}")
    lines.append(f"  requests           {_fmt(totals['requests'])}  http_429={totals['http_429']:,} "
                 f"retries={totals['retries']:,}")
    drain = totals.get("drain_s")
    fleet = report["config"]["target"].get("kind") == "fleet"
    if fleet:
        target = report["config"]["target"]
        lines.append(f"  fleet              {target['workers']} worker(s), stream {target.get('stream')} on "
                     f"{target.get('redis_url')}; {totals.get('written_to_redis', 0):,} operations written to Redis; "
                     f"worker exit codes {totals.get('workers_exit_codes')}")
    unit = "stream entries" if fleet else "operations"
    lines.append(f"  backlog            peak {totals['backlog_peak']:,} {unit}"
                 + (f", drained {drain:.0f} s after the load ended" if drain is not None else ""))
    lines.append("  " + _trend_line("enqueue_duration", totals["enqueue_duration"], "µs", 1000.0))
    lines.append("  " + _trend_line("delivery_duration", totals["delivery_duration"]))
    lines.append("  " + _trend_line("request_duration", totals["request_duration"]))
    lines.append(f"  client cpu         {totals['cpu_seconds']:.1f} s")
    receiver = totals.get("receiver")
    if receiver:
        lines.append(f"  receiver           {receiver['operations']:,} operations stored, "
                     f"{receiver['rate_limited']:,} rate-limited, {receiver['duplicates']:,} duplicates")
    result = report["result"]
    lines.append("")
    lines.append(f"result: {result['status']} (exit {result['exit_code']})")
    lines.extend(f"  - {m}" for m in result["messages"])
    return "\n".join(lines)


def markdown_summary(report: Mapping[str, Any]) -> str:
    """Markdown for ``$GITHUB_STEP_SUMMARY``: verdict, thresholds table, key totals."""
    totals = report["totals"]
    config = report["config"]
    result = report["result"]
    icon = "✅" if result["exit_code"] == 0 else "❌"
    out = [f"### {icon} ciotrack loadtest: {result['status']} (exit {result['exit_code']})", ""]
    target = config["target"]
    out.append(f"Target: {target['kind']}" + (f" ({target['description']})" if target.get("description") else "")
               + f"; rate limit {config['rate_limit']:g} requests/s; "
               + (config.get("concurrency") or f"{config['senders']} senders")
               + (f" ({config['senders_note']})" if config.get("senders_note") else "") + ".")
    out.append("")
    for message in result["messages"]:
        out.append(f"- {message}")
    if result["messages"]:
        out.append("")
    if report["thresholds"]:
        out += ["| | threshold | value |", "|---|---|---|"]
        for t in report["thresholds"]:
            out.append(f"| {'✓' if t['ok'] else '✗'} | `{t['metric']}: {t['expr']}` | {_fmt(t['value'])} |")
        out.append("")
    delivery = totals["delivery_duration"]
    request = totals["request_duration"]
    out += ["| metric | value |", "|---|---|",
            f"| calls (achieved / due) | {totals['calls']:,} / {totals['target_calls']:,.0f} |",
            f"| dropped_iterations | {totals['dropped_iterations']:,} |",
            f"| delivered / accepted | {totals['delivered']:,} / {totals['accepted']:,} |",
            f"| lost | {_fmt(totals['lost'])} |",
            f"| http_429 | {totals['http_429']:,} |",
            f"| retries | {totals['retries']:,} |",
            f"| backlog peak | {totals['backlog_peak']:,}"
            + (" stream entries |" if target["kind"] == "fleet" else " operations |"),
            f"| delivery_duration p50 / p95 / p99 | {_fmt(delivery['p50'])} / {_fmt(delivery['p95'])} / "
            f"{_fmt(delivery['p99'])} ms |",
            f"| request_duration p50 / p95 | {_fmt(request['p50'])} / {_fmt(request['p95'])} ms |",
            f"| enqueue_duration p50 / p99 | {_fmt(_scale(totals['enqueue_duration']['p50']))} / "
            f"{_fmt(_scale(totals['enqueue_duration']['p99']))} µs |",
            ""]
    return "\n".join(out)


def _scale(ms: float | None) -> float | None:
    return None if ms is None else ms * 1000.0
