"""ciotrack next to its peers: the same workload, the same receiver, interleaved runs, medians and ratios.

    .venv/bin/python benches/compare_peers.py            # ~4-5 minutes on the 2-core bench machine
    .venv/bin/python benches/compare_peers.py --quick    # ~1 minute, smaller counts, one repetition

Each client runs in its own fresh subprocess (``benches/peers/driver.py``) with the interpreter of the
venv that has it: ciotrack and the official ``customerio`` from this venv, segment-analytics-python and
posthog from ``.venv-peers``, customerio-cdp-analytics from ``.venv-cdp`` (it installs a module named
``customerio`` too, which would shadow the official client). A client whose venv or import is missing
is skipped with a note. Order per repetition: ciotrack, segment, posthog, cdp, customerio, each first
in a fresh process for the stalled-memory figure and then in another for everything else; the table
holds the median over repetitions of each figure, with ``(xN)``: how many times better ciotrack is.

Receivers: the queueing clients (and ciotrack) deliver to one lean sink (``peers/sink.py``) that
speaks each one's batch endpoint; the official client needs https, so it talks to the ciotrack
emulator with TLS. Every figure is defined in ``benches/README.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

BENCHES = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCHES)
sys.path.insert(0, BENCHES)

from peers.clients import KINDS, LABELS  # noqa: E402
from peers.measure import pin_receiver  # noqa: E402
from peers.sink import SinkProcess  # noqa: E402

DRIVER = os.path.join(BENCHES, "peers", "driver.py")
SITE_ID, API_KEY = "bench-site", "bench-key"
# The module each kind needs, to check its venv before spending time on it.
IMPORTS = {"ciotrack": "ciotrack", "segment": "segment.analytics", "posthog": "posthog",
           "cdp": "customerio.analytics", "customerio": "customerio"}

FULL = {"reps": 3, "events": 100_000, "idle-bursts": 20, "burst-size": 500, "delivering-calls": 20_000,
        "delivering-backlog": 20_000, "loop-iterations": 4_000_000, "rss-events": 100_000,
        "sync-calls": 300, "sync-events": 1000}
QUICK = {"reps": 1, "events": 20_000, "idle-bursts": 6, "burst-size": 500, "delivering-calls": 10_000,
         "delivering-backlog": 10_000, "loop-iterations": 2_000_000, "rss-events": 20_000,
         "sync-calls": 100, "sync-events": 300}

# (label, path into a run's figures, display scale, higher_is_better, format)
Row = tuple[str, tuple[str, ...], float, bool, str]
ROWS: list[Row] = [
    ("track() idle, median (us)", ("track_idle", "median_ns"), 1e-3, False, "{:.2f}"),
    ("track() idle, p99 (us)", ("track_idle", "p99_ns"), 1e-3, False, "{:.2f}"),
    ("track() delivering, median (us)", ("track_delivering", "median_ns"), 1e-3, False, "{:.2f}"),
    ("track() delivering, p99 (us)", ("track_delivering", "p99_ns"), 1e-3, False, "{:.2f}"),
    ("identify() idle, median (us)", ("identify_idle", "median_ns"), 1e-3, False, "{:.2f}"),
    ("end-to-end (events/s)", ("e2e", "events_per_s"), 1.0, True, "{:,.0f}"),
    ("client CPU per event (us)", ("e2e", "cpu_us_per_event"), 1.0, False, "{:.2f}"),
    ("RSS per queued event (bytes)", ("rss", "bytes_per_event"), 1.0, False, "{:,.0f}"),
    ("app loop slowdown (x)", ("app_impact", "slowdown"), 1.0, False, "{:.3f}"),
    ("events/s during the app loop", ("app_impact", "events_per_s_during_loop"), 1.0, True, "{:,.0f}"),
    ("app loop time lost per delivered event (us)", ("app_impact", "loop_us_lost_per_event"), 1.0, False,
     "{:.2f}"),
]


def _python_for(kind: str, args: argparse.Namespace) -> str:
    if kind in ("ciotrack", "customerio"):
        return sys.executable
    venv = args.cdp_venv if kind == "cdp" else args.peers_venv
    return os.path.join(venv, "bin", "python")


def _importable(python: str, module: str) -> bool:
    if not os.path.exists(python):
        return False
    check = subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=120)
    return check.returncode == 0


def _run_driver(python: str, argv: list[str], timeout: float) -> dict[str, Any] | str:
    """One driver process; its figures, or the reason it produced none."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        path = out.name
    try:
        proc = subprocess.run([python, DRIVER, *argv, "--out", path], capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode != 0:
            return f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}"
        with open(path) as result:
            figures: dict[str, Any] = json.load(result)
            return figures
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    except (OSError, ValueError) as error:
        return f"no result: {error}"
    finally:
        os.unlink(path)


def _dig(run: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = run
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return float(value)


def _median_of(runs: list[dict[str, Any]], path: tuple[str, ...]) -> float | None:
    values = [v for v in (_dig(run, path) for run in runs) if v is not None]
    return statistics.median(values) if values else None


def _check_runs(kind: str, runs: list[dict[str, Any]], notes: list[str]) -> None:
    """Flag any run whose premise failed (lost events, a backlog that ran dry, a queue that did not hold)."""
    for i, run in enumerate(runs, 1):
        e2e = run.get("e2e") or {}
        if e2e and e2e.get("delivered") != e2e.get("events"):
            notes.append(f"{LABELS[kind]} run {i}: receiver counted {e2e.get('delivered'):.0f} of "
                         f"{e2e.get('events'):.0f} events")
        delivering = run.get("track_delivering") or {}
        if delivering and delivering.get("queued_after", 1) == 0:
            notes.append(f"{LABELS[kind]} run {i}: backlog ran dry before the last timed delivering call")
        impact = run.get("app_impact") or {}
        if impact and impact.get("queued_after_min", 1) == 0:
            notes.append(f"{LABELS[kind]} run {i}: backlog ran dry before the app loop ended")
        rss = run.get("rss") or {}
        if rss and rss.get("queued_after", 0) < 0.9 * rss.get("events", 0):
            notes.append(f"{LABELS[kind]} run {i}: only {rss.get('queued_after'):.0f} events stayed queued "
                         "during the stalled-memory run")


def _machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count()} cores {model}, Linux {platform.release()}, CPython {platform.python_version()}"


def render_table(kinds: list[str], medians: dict[str, dict[str, float | None]], versions: dict[str, str]) -> str:
    header = ["figure"] + [f"{LABELS[k]} {versions.get(k, '')}".strip() for k in kinds]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, _path, scale, higher_better, fmt in ROWS:
        base = medians["ciotrack"].get(label) if "ciotrack" in medians else None
        cells = [label]
        for kind in kinds:
            value = medians[kind].get(label)
            if value is None:
                cells.append("n/a")
                continue
            cell = fmt.format(value * scale)
            if kind != "ciotrack" and base:
                ratio = base / value if higher_better else value / base
                cell += f" (x{ratio:.1f})" if ratio >= 10 else f" (x{ratio:.2f})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one repetition, smaller counts (~1 minute)")
    parser.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    parser.add_argument("--clients", default=",".join(KINDS), help=f"comma-separated subset of {','.join(KINDS)}")
    parser.add_argument("--events", type=int, help="end-to-end events per queueing client (default 100000)")
    parser.add_argument("--peers-venv", default=os.path.join(ROOT, ".venv-peers"))
    parser.add_argument("--cdp-venv", default=os.path.join(ROOT, ".venv-cdp"))
    parser.add_argument("--ciotrack-receiver", choices=("sink", "emulator"), default="sink",
                        help="where ciotrack delivers: the peers' sink (default, same receiver) or the emulator")
    parser.add_argument("--json", help="write every run and the medians here "
                                       "(default .benchmarks/compare_peers-<time>.json)")
    args = parser.parse_args(argv)
    preset = dict(QUICK if args.quick else FULL)
    if args.reps:
        preset["reps"] = args.reps
    if args.events:
        preset["events"] = args.events
    reps = int(preset.pop("reps"))
    sizes = [f"--{key}={value}" for key, value in preset.items()]

    notes: list[str] = []
    kinds: list[str] = []
    for kind in [k.strip() for k in args.clients.split(",") if k.strip()]:
        if kind not in KINDS:
            parser.error(f"unknown client {kind!r}")
        if _importable(_python_for(kind, args), IMPORTS[kind]):
            kinds.append(kind)
        else:
            notes.append(f"{LABELS[kind]} skipped: cannot import {IMPORTS[kind]} with {_python_for(kind, args)}"
                         " (run `make bench-venvs`)")
    if not kinds:
        print("no client to benchmark", file=sys.stderr)
        return 2

    started = time.perf_counter()
    sink = SinkProcess()
    pinned = pin_receiver(sink.pid)  # receivers stand in for remote servers: off the app thread's core
    emulators: list[Any] = []
    receivers: dict[str, list[str]] = {}
    try:
        sink_args = ["--url", sink.url, "--count-url", sink.url + "/_sink/stats", "--count-key", "events"]
        for kind in kinds:
            receivers[kind] = sink_args
        needs_emulator = "customerio" in kinds or (args.ciotrack_receiver == "emulator" and "ciotrack" in kinds)
        if needs_emulator:
            from ciotrack.emulator import Emulator

            def spawn_emulator(tls: bool) -> list[str]:
                handle = Emulator.spawn(tls=tls, workspaces={SITE_ID: API_KEY})
                emulators.append(handle)
                pin_receiver(handle.pid)
                extra = ["--ca-bundle", handle.ca_bundle] if tls else []
                return ["--url", handle.url, "--count-url", handle.url + "/_emulator/stats",
                        "--count-key", "operations", "--site-id", SITE_ID, "--api-key", API_KEY, *extra]

            if "customerio" in kinds:
                receivers["customerio"] = spawn_emulator(tls=True)
            if args.ciotrack_receiver == "emulator" and "ciotrack" in kinds:
                receivers["ciotrack"] = spawn_emulator(tls=False)

        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        rss_runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
        for rep in range(1, reps + 1):
            for kind in kinds:
                python = _python_for(kind, args)
                for scenario, store in (("rss", rss_runs), ("main", runs)):
                    if scenario == "rss" and kind == "customerio":
                        continue  # synchronous: nothing is ever queued
                    t0 = time.perf_counter()
                    result = _run_driver(python, ["--client", kind, "--scenario", scenario, *receivers[kind],
                                                  *sizes], timeout=600)
                    took = time.perf_counter() - t0
                    print(f"[{time.perf_counter() - started:6.1f} s] rep {rep}/{reps} {LABELS[kind]:26} "
                          f"{scenario:4} {took:5.1f} s" + ("" if isinstance(result, dict) else f"  FAILED {result}"),
                          file=sys.stderr, flush=True)
                    if isinstance(result, dict):
                        store[kind].append(result)
                    else:
                        notes.append(f"{LABELS[kind]} rep {rep} {scenario}: {result}")
    finally:
        sink.stop()
        for handle in emulators:
            handle.stop()

    medians: dict[str, dict[str, float | None]] = {}
    versions: dict[str, str] = {}
    overheads: list[float] = []
    for kind in kinds:
        merged = [dict(main_run, rss=rss_run.get("rss")) for main_run, rss_run in
                  zip(runs[kind], rss_runs[kind] or [{}] * len(runs[kind]), strict=False)]
        _check_runs(kind, merged, notes)
        medians[kind] = {label: _median_of(merged, path) for label, path, *_ in ROWS}
        if runs[kind]:
            versions[kind] = str(runs[kind][0].get("version", ""))
            overheads += [float(r["timer_overhead_ns"]) for r in runs[kind]]

    when = dt.datetime.now(dt.UTC)
    table = render_table(kinds, medians, versions)
    command = "python benches/compare_peers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"\n## ciotrack vs peers — {when:%Y-%m-%d %H:%M} UTC, {reps} interleaved repetition(s), medians")
    print(f"machine: {_machine()}; command: `{command.strip()}`; total {time.perf_counter() - started:.0f} s; "
          + (f"receivers pinned to CPU {pinned}, clients free" if pinned is not None else "receivers not pinned"))
    print(f"workload: {preset['events']:,} end-to-end events per queueing client "
          f"({preset['sync-events']:,} for the synchronous client), 5-property events; "
          f"perf_counter_ns overhead ~{statistics.median(overheads) if overheads else float('nan'):.0f} ns "
          "included in every per-call figure\n")
    print(table)
    print("\n(xN): how many times better ciotrack is on that row (lower time/CPU/memory/slowdown, or higher rate).")
    if "customerio" in kinds:
        print("customerio (sync) sends one blocking HTTPS request per call to the TLS emulator: no queue, no sender.")
    for note in notes:
        print(f"note: {note}")

    out_path = args.json or os.path.join(ROOT, ".benchmarks", f"compare_peers-{when:%Y%m%dT%H%M%S}.json")
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as out:
        json.dump({"when": when.isoformat(), "machine": _machine(), "reps": reps, "sizes": preset,
                   "medians": medians, "versions": versions, "notes": notes, "runs": runs, "rss_runs": rss_runs},
                  out, indent=1)
    print(f"\nall runs: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
