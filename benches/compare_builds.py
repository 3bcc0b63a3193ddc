"""This tree's build against another commit's, alternating in the same minutes: the call's median and the
client's CPU per delivered event, with the ratio of each pair.

    .venv/bin/python benches/compare_builds.py [--base a5b4a05] [--pairs 3]

On a shared VM whose speed swings from one minute to the next, an absolute figure says little about a change;
two builds measured back to back do. ``--base`` is checked out into a temporary worktree, built with
``maturin build --release`` (its own Cargo target directory, so this tree's build is untouched) and unpacked
next to it; this tree runs from ``python/`` as ``make`` built it. Each pair runs, for the base and then for
this tree, in fresh processes:

* ``bench_track.py``: pytest-benchmark's median per ``track()`` while the sender delivers (timer amortised);
* ``bench_e2e.py -k end_to_end_100k``: the process's CPU per delivered event (caller and sender).

The default base, ``a5b4a05``, is round 1's last commit: the build whose figures issue 11's goals were set from.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHES = os.path.join(ROOT, "benches")


def build(rev: str, workdir: str) -> str:
    """``rev``'s package, built and unpacked under ``workdir``: the directory to put on PYTHONPATH."""
    tree = os.path.join(workdir, "tree")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-f", tree, rev], check=True,
                   capture_output=True)
    try:
        wheels = os.path.join(workdir, "wheels")
        env = dict(os.environ, PYO3_PYTHON=sys.executable, CARGO_TARGET_DIR=os.path.join(workdir, "target"))
        maturin = os.path.join(os.path.dirname(sys.executable), "maturin")
        subprocess.run([maturin, "build", "--release", "-o", wheels, "-i", sys.executable], cwd=tree, env=env,
                       check=True, capture_output=True)
    finally:
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], check=False, capture_output=True)
    site = os.path.join(workdir, "site")
    (wheel,) = [name for name in os.listdir(wheels) if name.endswith(".whl")]
    with zipfile.ZipFile(os.path.join(wheels, wheel)) as archive:
        archive.extractall(site)
    return site


def run_bench(path: str, args: list[str], out: str) -> list[dict[str, object]]:
    """One pytest-benchmark run with ``path`` first on PYTHONPATH; its benchmarks from the JSON report."""
    env = dict(os.environ, PYTHONPATH=path)
    subprocess.run([sys.executable, "-m", "pytest", *args, "--benchmark-only", "-q", "-p", "no:cacheprovider",
                    f"--benchmark-json={out}"], cwd=ROOT, env=env, check=True, capture_output=True)
    with open(out) as f:
        benchmarks: list[dict[str, object]] = json.load(f)["benchmarks"]
    return benchmarks


def measure(path: str, workdir: str) -> dict[str, float]:
    report = os.path.join(workdir, "report.json")
    (track,) = run_bench(path, ["benches/bench_track.py"], report)
    (e2e,) = run_bench(path, ["benches/bench_e2e.py", "-k", "end_to_end_100k"], report)
    stats = track["stats"]
    extra = e2e["extra_info"]
    assert isinstance(stats, dict) and isinstance(extra, dict)
    return {"track_median_ns": float(stats["median"]) * 1e9, "cpu_us_per_event": float(extra["cpu_us_per_event"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="a5b4a05", help="the commit to compare with (default: round 1's last)")
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ciotrack-base-") as workdir:
        print(f"building {args.base} ...", flush=True)
        base = build(args.base, workdir)
        here = os.path.join(ROOT, "python")
        rows: list[tuple[dict[str, float], dict[str, float]]] = []
        for pair in range(args.pairs):
            started = time.strftime("%H:%M:%S")
            before, now = measure(base, workdir), measure(here, workdir)
            rows.append((before, now))
            print(f"pair {pair + 1} ({started}, load {os.getloadavg()[0]:.1f}): "
                  f"track() median {before['track_median_ns']:,.0f} -> {now['track_median_ns']:,.0f} ns, "
                  f"client CPU {before['cpu_us_per_event']:.2f} -> {now['cpu_us_per_event']:.2f} us/event",
                  flush=True)
    for key, label in (("track_median_ns", "track() median"), ("cpu_us_per_event", "client CPU per event")):
        ratios = [now[key] / before[key] for before, now in rows]
        print(f"{label}: this tree / {args.base} = " + " / ".join(f"{r:.2f}" for r in ratios)
              + f" (median {statistics.median(ratios):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
