"""The emulator's latency profile (issue 11): fixed, or lognormal with a tail, measured over a real
socket against a spawned emulator. Bands are loose on purpose: a behaviour test, not a speed test."""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import pytest
import requests

from ciotrack.emulator import Emulator, Faults
from ciotrack.emulator import cli as emulator_cli

SITE, KEY = "lat-site", "lat-key"


def _timed_posts(url: str, n: int, threads: int = 6) -> list[float]:
    body = {"batch": [{"type": "person", "action": "identify", "identifiers": {"id": "p1"},
                       "attributes": {"plan": "x"}}]}
    out: list[float] = []
    lock = threading.Lock()

    def worker(count: int) -> None:
        with requests.Session() as session:
            session.trust_env = False
            for _ in range(count):
                t0 = time.perf_counter()
                response = session.post(f"{url}/api/v2/batch", json=body, auth=(SITE, KEY), timeout=10)
                elapsed = time.perf_counter() - t0
                assert response.status_code == 200
                with lock:
                    out.append(elapsed * 1000.0)

    pool = [threading.Thread(target=worker, args=(n // threads,)) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return sorted(out)


def test_profile_settings() -> None:
    faults = Faults.from_settings({"latency_profile": "customerio"})
    assert (faults.latency, faults.latency_p99) == (0.08, 0.3)
    faults = Faults.from_settings({"latency_ms": 50, "latency_p99_ms": 200})
    assert (faults.latency, faults.latency_p99) == (0.05, 0.2)
    assert Faults.from_settings({"latency_ms": 40}).latency_p99 == 0.0
    with pytest.raises(ValueError, match="unknown latency_profile 'moon'"):
        Faults.from_settings({"latency_profile": "moon"})
    with pytest.raises(ValueError, match="latency_p99 must not be below latency"):
        Faults.from_settings({"latency_ms": 100, "latency_p99_ms": 50})


def test_emulator_cli_flags_reach_the_faults() -> None:
    parser = argparse.ArgumentParser()
    emulator_cli.configure_parser(parser)
    settings = emulator_cli._faults(parser.parse_args(["--latency-profile", "customerio"]))
    assert Faults.from_settings(settings).latency_p99 == 0.3
    settings = emulator_cli._faults(parser.parse_args(["--latency-ms", "80", "--latency-p99-ms", "300"]))
    faults = Faults.from_settings(settings)
    assert (faults.latency, faults.latency_p99) == (0.08, 0.3)


def test_lognormal_latency_over_a_real_socket_then_fixed_at_run_time() -> None:
    with Emulator.spawn(workspaces={SITE: KEY}, faults={"latency_ms": 40, "latency_p99_ms": 160, "seed": 7}) as em:
        lognormal = _timed_posts(em.url, 60)
        median = statistics.median(lognormal)
        assert 30 <= median <= 150, lognormal
        assert lognormal[-1] > 1.3 * median  # a tail, unlike a fixed delay
        assert lognormal[len(lognormal) // 10] < median  # and spread below the median too

        em.set_faults(latency_ms=60)  # changed while running: fixed now
        fixed = _timed_posts(em.url, 12, threads=3)
        assert min(fixed) >= 60.0
        assert em.stats()["faults"]["latency"] >= 72
        assert em.faults()["latency"] == 0.06 and em.faults()["latency_p99"] == 0.0


def test_in_process_emulator_takes_the_profile() -> None:
    with Emulator(workspaces={SITE: KEY}, faults={"latency_profile": "customerio"}) as em:
        assert em.faults()["latency"] == 0.08 and em.faults()["latency_p99"] == 0.3
        samples = [em.fault_state.latency() for _ in range(2000)]
        samples.sort()
        assert 0.06 <= samples[1000] <= 0.10  # median ~80 ms
        assert 0.2 <= samples[1980] <= 0.45  # p99 ~300 ms
