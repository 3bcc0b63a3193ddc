"""Where the sender's CPU and GIL go, per batch, delivering to the emulator in a subprocess.

    .venv/bin/python benches/sender_cost.py [--events 300000] [--tls] [--perf] [--py-spy out.txt]

The app thread queues ``--events`` 5-property events (the workload of ``peers/workload.py``), then
waits in ``flush()``; the figures are the sender threads' own: CPU time (``/proc/self/task/<tid>/stat``,
utime + stime) per request and per delivered event. ``--perf`` also counts, per sender thread, the
GIL acquisitions (``take_gil`` in libpython, through a ``perf probe`` uprobe counted by ``perf stat
-p``; needs root and linux-perf) and the releases (``PyEval_SaveThread``: every blocking call that
lets other threads run). ``--py-spy FILE`` records the sender threads (``py-spy record --native -f raw``,
100 Hz... 1 kHz) and prints the share of samples under the top frames that matter. ``--floor`` then posts
the same workload's batch bodies with a bare ``requests.Session`` (one thread, no ciotrack in the way) and
prints its CPU per request next to the sender's: the cost of the transport alone, which the sender cannot go
below while it keeps ``requests``; their ratio holds still while this VM's speed swings.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peers.clients import CIOTRACK_OPTIONS  # noqa: E402
from peers.measure import enqueue  # noqa: E402

SITE_ID, API_KEY = "bench-site", "bench-key"
LIBPYTHON_PROBES = ("take_gil", "PyEval_SaveThread")
TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu(tid: int) -> float:
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def sender_tids() -> list[int]:
    return [t.native_id for t in threading.enumerate() if t.name.startswith("ciotrack-sender") and t.native_id]


def libpython() -> str:
    maps = open("/proc/self/maps").read()
    match = re.search(r"(/\S*libpython3\.\d+\.so[.\d]*)", maps)
    if not match:
        raise SystemExit("--perf needs a CPython linked to a shared libpython")
    return match.group(1)


def start_perf(lib: str) -> subprocess.Popen[str]:
    for probe in LIBPYTHON_PROBES:
        subprocess.run(["perf", "probe", "-q", "-x", lib, "-a", probe], check=False, capture_output=True)
    events = ",".join(f"probe_libpython3:{p}" for p in LIBPYTHON_PROBES)
    proc = subprocess.Popen(["perf", "stat", "--per-thread", "-x", ";", "-e", events, "-p", str(os.getpid())],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # perf attaches its uprobes
    return proc


def stop_perf(proc: subprocess.Popen[str]) -> dict[int, dict[str, int]]:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    for probe in LIBPYTHON_PROBES:
        subprocess.run(["perf", "probe", "-q", "-d", f"probe_libpython3:{probe}"], check=False, capture_output=True)
    counts: dict[int, dict[str, int]] = {}
    for line in err.splitlines():  # "comm-tid;count;;event;..."
        parts = line.split(";")
        if len(parts) < 4 or not parts[1].strip().isdigit():
            continue
        tid = int(parts[0].rsplit("-", 1)[1])
        counts.setdefault(tid, {})[parts[3].split(":")[-1]] = int(parts[1])
    return counts


class _Recorder:
    """A destination that keeps the batch bodies the core builds (to post them again with bare requests)."""

    name = "recorder"

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def send(self, body: bytes) -> Any:
        from ciotrack.destinations import Outcome

        self.bodies.append(bytes(body))
        return Outcome.delivered()

    def probe(self) -> bool:
        return True

    def close(self) -> None:
        pass


def bare_requests_floor(url: str, requests_wanted: int) -> tuple[float, int]:
    """Thread CPU per request, and events per request, of ``requests.Session.post`` sending the batch bodies
    ciotrack builds for the same workload to the emulator, with the headers ciotrack sends, one at a time."""
    import base64

    import requests

    import ciotrack

    recorder = _Recorder()
    tracker = ciotrack.Tracker(destination=lambda region: recorder, rate_limit=0)
    try:
        enqueue(tracker.track, 0, requests_wanted * 2_100)
        assert tracker.flush(timeout=120)
    finally:
        tracker.close(timeout=30)
    bodies = [b for b in recorder.bodies if len(b) > 400_000] or recorder.bodies
    events = sum(body.count(b'"action":"event"') for body in bodies) // len(bodies)
    headers = {"Authorization": "Basic " + base64.b64encode(f"{SITE_ID}:{API_KEY}".encode()).decode(),
               "Content-Type": "application/json", "User-Agent": "ciotrack-bench-floor"}
    with requests.Session() as session:
        for body in bodies[:3]:  # warm-up: the connection, the pool
            session.post(url, data=body, headers=headers, timeout=60).raise_for_status()
        started = time.thread_time()
        for body in bodies:
            session.post(url, data=body, headers=headers, timeout=60).raise_for_status()
        return (time.thread_time() - started) / len(bodies), events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--perf", action="store_true", help="count GIL acquisitions per thread (root, linux-perf)")
    parser.add_argument("--py-spy", metavar="FILE", help="record the sender with py-spy --native into FILE (raw)")
    parser.add_argument("--gil", action="store_true", help="with --py-spy: only samples holding the GIL")
    parser.add_argument("--tls", action="store_true", help="the emulator serves HTTPS (as Customer.io does)")
    parser.add_argument("--floor", action="store_true",
                        help="also post the same bodies with a bare requests.Session: the transport's own CPU")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=JSON",
                        help="a tracker option over the bench's (e.g. rate_limit=27, senders=2); repeatable")
    args = parser.parse_args()
    options = dict(CIOTRACK_OPTIONS)
    for option in args.option:
        name, _, value = option.partition("=")
        options[name] = json.loads(value)

    import ciotrack
    from ciotrack.emulator import Emulator

    handle = Emulator.spawn(workspaces={SITE_ID: API_KEY}, tls=args.tls)
    if args.tls:
        options["verify"] = handle.ca_bundle
    tracker = ciotrack.Tracker(SITE_ID, API_KEY, endpoint=handle.url, **options)
    try:
        enqueue(tracker.track, 0, 20_000)  # warm-up: sender thread, session, connection
        assert tracker.flush(timeout=60)
        before = tracker.stats()["counters"]
        tids = sender_tids()
        cpu_before = {tid: thread_cpu(tid) for tid in tids}
        perf = start_perf(libpython()) if args.perf else None
        spy = None
        if args.py_spy:
            spy = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "--native",
                                    "-r", "1000", "-f", "raw", "-o", args.py_spy, "-p", str(os.getpid())]
                                   + (["--gil"] if args.gil else []),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        started = time.perf_counter()
        enqueue(tracker.track, 0, args.events)
        assert tracker.flush(timeout=300)
        wall = time.perf_counter() - started
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
        counts = stop_perf(perf) if perf is not None else {}
        tids = sender_tids()
        cpu = sum(thread_cpu(tid) - cpu_before.get(tid, 0.0) for tid in tids)
        after = tracker.stats()["counters"]
        requests_made = sum(after.get(k, 0) - before.get(k, 0) for k in after if k.startswith("requests_"))
        delivered = after["delivered"] - before["delivered"]
        print(f"delivered {delivered:,} events in {requests_made:,} requests ({delivered / max(requests_made, 1):,.0f} "
              f"events/request), {wall:.2f} s wall, {len(tids)} sender thread(s)")
        print(f"sender CPU: {cpu * 1e3:,.0f} ms = {cpu / max(requests_made, 1) * 1e6:,.0f} us/request = "
              f"{cpu / max(delivered, 1) * 1e9:,.0f} ns/event")
        if counts:
            per: dict[str, int] = {}
            for tid in tids:
                for name, n in counts.get(tid, {}).items():
                    per[name] = per.get(name, 0) + n
            app = counts.get(threading.main_thread().native_id or 0, {})
            total = {name: sum(c.get(name, 0) for c in counts.values()) for name in LIBPYTHON_PROBES}
            print(f"whole process take_gil: {total['take_gil']:,} = {total['take_gil'] / max(requests_made, 1):,.1f}"
                  f"/request (every thread: app, senders, watchdog)")
            for name in LIBPYTHON_PROBES:
                print(f"sender {name}: {per.get(name, 0):,} = {per.get(name, 0) / max(requests_made, 1):,.1f}/request"
                      f" (app thread: {app.get(name, 0):,})")
        result: dict[str, Any] = {"delivered": delivered, "requests": requests_made, "sender_cpu_s": cpu}
        if args.floor:
            per_request, events = bare_requests_floor(handle.url.rstrip("/") + "/api/v2/batch",
                                                      min(requests_made, 60))
            sender = cpu / max(requests_made, 1)
            print(f"bare requests.Session.post of the same bodies: {per_request * 1e6:,.0f} us/request = "
                  f"{per_request / max(events, 1) * 1e9:,.0f} ns/event; the sender costs {sender / per_request:.2f}x "
                  "that")
            result["floor_cpu_per_request_s"] = per_request
        print(result)
    finally:
        tracker.close(timeout=30)
        handle.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
