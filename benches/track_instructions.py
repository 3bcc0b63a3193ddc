"""Instructions per ``track()`` (or ``identify()``) call, counted by valgrind's callgrind: a figure that
does not move with the load of a shared VM (wall-clock figures here swing 2x from one minute to the next).

    PYTHONPATH=python .venv/bin/python benches/track_instructions.py [--calls 10000] [--call identify]

Runs itself under ``valgrind --tool=callgrind`` (``apt-get install valgrind``), counting only inside the
native entry point of the call (``_core::entry::entry``, the function ``tracker.track`` is bound to, or in
builds before it pyo3's ``FastCalls::__pymethod_track__``: argument reading, validation, encoding, ULID,
dedup, queue push; not the interpreter's own dispatch to it, which is the same for every build).
``identify(i, {"plan": "pro", "n": 7})`` goes to a new customer each call, so its dedup never skips one.
The tracker delivers to the emulator (a subprocess, not under valgrind) meanwhile, as in an application.
Compare two builds by running it with each on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

# The native entry point of the call: the raw METH_FASTCALL function `tracker.track` is bound to
# (rust/py/src/entry.rs; one symbol for all its calls), or in builds before it, pyo3's wrapper of the
# FastCalls method. Only one of the two is on the common call's stack, so toggling on both counts the
# call in either build.
ENTRIES = ("_core::entry::entry", "_core::fastcall::FastCalls::__pymethod_{}__")


def child(calls: int, call: str) -> None:
    import ciotrack
    from ciotrack.emulator import Emulator

    handle = Emulator.spawn(workspaces={"s": "k"})
    tracker = ciotrack.Tracker("s", "k", endpoint=handle.url, rate_limit=0)
    data = {"total": 12.5, "currency": "EUR", "items": 3, "first": True, "cart": {"sku": "sku-1", "qty": 2}}
    try:
        if call == "identify":
            tracker.track("warm-up", "checkout", data)  # starts the senders: identify() runs natively too
            identify = tracker.identify
            for i in range(calls):
                identify(i, {"plan": "pro", "n": 7})
        else:
            track = tracker.track
            for _ in range(calls):
                track("user-42", "checkout", data)
        tracker.flush(120)
    finally:
        tracker.close(timeout=60)
        handle.stop()


def count(calls: int, call: str) -> int:
    """Instructions inside the entry point over a whole child run of ``calls`` calls."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        toggles = [f"--toggle-collect={entry.format(call)}" for entry in ENTRIES]
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *toggles, sys.executable,
                        os.path.abspath(__file__), "--child", "--calls", str(calls), "--call", call],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        summary = subprocess.run(["callgrind_annotate", out], check=True, capture_output=True, text=True).stdout
    match = re.search(r"^([\d,]+)\s+(?:\(100\.0%\)\s+)?PROGRAM TOTALS", summary, re.MULTILINE)
    if match is None:
        raise SystemExit(f"no PROGRAM TOTALS in callgrind_annotate's output:\n{summary[:2000]}")
    return int(match.group(1).replace(",", ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--call", choices=("track", "identify"), default="track")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.calls, args.call)
        return 0
    # The first call takes the Python method (it starts the senders): two runs, and the difference
    # over the extra calls leaves that one-off out.
    few, many = count(1_000, args.call), count(1_000 + args.calls, args.call)
    where = " or ".join(entry.format(args.call) for entry in ENTRIES)
    if few == 0:
        raise SystemExit(f"callgrind counted nothing in {where}: is the symbol in this build?")
    print(f"{args.call}(): {(many - few) / args.calls:,.0f} instructions per call "
          f"({args.calls:,} calls; callgrind, inside {where})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
